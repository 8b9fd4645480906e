"""Kept for code written against medvill 0.1: fine-tuning now lives in
:mod:`medvill.recipes.finetune`, evaluation in :mod:`medvill.recipes.evaluate`."""

from __future__ import annotations

from .recipes.evaluate import baseline_of, run_evaluation
from .recipes.finetune import TASKS, FinetuneRun, run_finetuning

__all__ = ["TASKS", "FinetuneRun", "baseline_of", "run_evaluation", "run_finetuning"]
