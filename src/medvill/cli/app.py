"""The one :data:`app` every command registers on, and the console they print to.

The command modules import ``app`` from here (never from the package), so importing
``medvill.cli`` registers each command exactly once and no module imports the package it is in.
"""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="MedViLL: vision-language pre-training for chest X-rays and reports.")
console = Console()
