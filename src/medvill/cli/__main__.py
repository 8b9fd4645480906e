"""``python -m medvill.cli ...`` (as ``python -m medvill ...``)."""

from . import main

main()
