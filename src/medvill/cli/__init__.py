"""The ``medvill`` command line (typer + rich).

:data:`app` (in :mod:`.app`) is the one typer application; each command module registers its
commands on it when imported here: :mod:`.data_commands` (synth, prepare, label),
:mod:`.training_commands` (pretrain, finetune, evaluate, compare, demo),
:mod:`.inference_commands` (generate, serve), :mod:`.import_commands` (import-official) and
:mod:`.figure_commands` (the ``figures`` group).  The options and helpers they share are in
:mod:`.options`.  ``main`` is the console script's entry point (``medvill = "medvill.cli:main"``,
``python -m medvill``).
"""

from __future__ import annotations

# the command modules, imported for the commands they register on app
from . import data_commands, figure_commands, import_commands, inference_commands, training_commands  # noqa: F401
from .app import app, console

__all__ = ["app", "console", "main"]

#: the order of the commands in ``medvill --help`` (that of the single-module CLI); the
#: ``figures`` group comes after them, and a command not named here after these
HELP_ORDER = ("synth", "pretrain", "finetune", "evaluate", "compare", "prepare", "label", "demo", "generate", "serve",
              "import-official")


def _help_rank(name: str | None) -> int:
    return HELP_ORDER.index(name) if name in HELP_ORDER else len(HELP_ORDER)


app.registered_commands.sort(key=lambda c: _help_rank(c.name or getattr(c.callback, "__name__", None)))


def main() -> None:  # console-script entry point
    app()
