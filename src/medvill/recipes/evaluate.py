"""Evaluation (``medvill evaluate``): a fine-tuned checkpoint scored on a split with the
paper's protocol (bootstrap resamples of the predictions; mean and std per metric), by the
task's own evaluation (:mod:`medvill.tasks.registry`).  Baseline checkpoints (CNN & Transformer,
TieNet) are recognised from their ``config.json`` and scored the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from ..checkpoint_files import CheckpointInfo, read_checkpoint_config
from ..config import RunConfig
from ..data.image_warnings import collected_image_warnings
from ..modeling.baselines import TieNet
from ..tasks.registry import EvalContext, task_spec
from ..tokenization import MedTokenizer

#: the data settings that decide which examples a task reads: an evaluation that reads others
#: than the checkpoint was fine-tuned on is said so (it may be meant: a transfer test)
EXAMPLE_SETTINGS = ("dataset", "vqa_organ", "section")


def run_evaluation(task_name: str, checkpoint: str | Path, cfg: RunConfig, split: str = "test",
                   n_bootstrap: int = 30, seed: int = 0, console: Console | None = None) -> dict[str, dict[str, Any]]:
    """``{metric: {"mean", "std", "n", "values", "full"}}`` over ``n_bootstrap`` resamples of
    ``split`` (``full``: on the whole split)."""
    for note in data_differences(checkpoint, cfg):
        (console or Console(stderr=True)).print(f"[yellow]note:[/yellow] {note}")
    with collected_image_warnings():
        return _evaluate(task_name, checkpoint, cfg, split, n_bootstrap, seed)


def _evaluate(task_name: str, checkpoint: str | Path, cfg: RunConfig, split: str, n_bootstrap: int,
              seed: int) -> dict[str, dict[str, Any]]:
    spec = task_spec(task_name)
    variant = spec.variant(baseline_of(checkpoint))
    task = variant.make_task(None, Path(checkpoint))
    model = variant.model_class.from_pretrained(checkpoint)
    tokenizer = MedTokenizer.from_pretrained(checkpoint)
    cfg = dataclasses.replace(cfg, model=model.config)
    examples = spec.examples(cfg, split)
    return spec.evaluate(EvalContext(task, model, tokenizer, examples, cfg, Path(checkpoint), n_bootstrap, seed))


def data_differences(checkpoint: str | Path, cfg: RunConfig) -> list[str]:
    """The :data:`EXAMPLE_SETTINGS` where ``cfg`` differs from the checkpoint's fine-tuning run."""
    trained = (CheckpointInfo.read(checkpoint).run_config or {}).get("data") or {}
    notes = []
    for key in EXAMPLE_SETTINGS:
        if key in trained and trained[key] != getattr(cfg.data, key):
            notes.append(f"{checkpoint} was fine-tuned with data.{key}={trained[key]}; this evaluation reads "
                         f"data.{key}={getattr(cfg.data, key)} (--set data.{key}={trained[key]} to score it on "
                         "what it learnt)")
    return notes


def baseline_of(checkpoint: str | Path) -> str | None:
    """``cnn-transformer``, ``tienet`` or None (MedViLL), from a checkpoint's ``config.json``."""
    meta = read_checkpoint_config(checkpoint)
    if meta["architecture"] == TieNet.__name__:
        return "tienet"
    if meta.get("head", {}).get("trunk") == "cnn_transformer":
        return "cnn-transformer"
    return None
