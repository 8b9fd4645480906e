"""``python -m medvill ...`` (also ``accelerate launch -m medvill ...`` and ``torchrun -m medvill ...``)."""

from .cli import main

main()
