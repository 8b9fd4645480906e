"""One output folder, one run: ``medvill pretrain|finetune|evaluate --output DIR`` never writes
over another run's files by accident.

:func:`claim_output` runs before any data is loaded or any step trained.  It refuses an
``--output`` that is a file, and a folder that already holds a model, a fine-tuned model or an
evaluation, naming what is there, unless the caller asked to ``overwrite`` it (the old run's
files are then removed, so the folder describes one run) or to ``resume`` it (a stopped run
continues in its own folder).  Files the project did not write are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..checkpoint_files import (
    CHECKPOINTS_DIR,
    CONFIG_NAME,
    EVAL_METRICS,
    FINETUNE_INFO,
    METRICS_LOG,
    RUN_FILES,
    WEIGHTS_NAME,
)


class OutputExistsError(FileExistsError):
    """``--output`` names a file, or a folder holding another run."""


def describe_run(folder: Path) -> str | None:
    """What the folder holds ("a fine-tuned model", "a pre-trained model", "an evaluation",
    "a stopped run"), or None when it holds no run of this project."""
    if not folder.is_dir():
        return None
    if (folder / FINETUNE_INFO).is_file():
        return "a fine-tuned model"
    if any((folder / name).exists() for name in (WEIGHTS_NAME, CONFIG_NAME)):
        return "a model"
    if (folder / EVAL_METRICS).is_file():
        return "an evaluation"
    if (folder / CHECKPOINTS_DIR).is_dir() or (folder / METRICS_LOG).is_file():
        return "a stopped run"
    return None


def claim_output(output: str | Path, *, overwrite: bool = False, resume: bool = False,
                 evaluation: bool = False) -> Path:
    """Check (and with ``overwrite``, clear) ``output`` before a run writes into it.

    ``evaluation``: the run writes only ``metrics.json`` (``medvill evaluate``), so only an
    earlier evaluation is in its way (it may write beside the model it scores)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"--output {output} is a file, not a folder: choose another path")
    if evaluation:
        held = "an evaluation" if (output / EVAL_METRICS).is_file() else None
        names: tuple[str, ...] = (EVAL_METRICS,)
    else:
        held, names = describe_run(output), RUN_FILES
    if held is None or resume:
        return output
    present = sorted(name for name in names if (output / name).exists())
    if not overwrite:
        raise OutputExistsError(
            f"--output {output} already holds {held} ({', '.join(present)}); pass --overwrite to replace it"
            + ("" if evaluation else ", --resume auto to continue a stopped run in it") + ", or choose another folder")
    for name in present:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return output
