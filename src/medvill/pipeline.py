"""Kept for code written against medvill 0.1: pre-training now lives in
:mod:`medvill.recipes.pretrain`, the split loaders in :mod:`medvill.data.splits`, the tokenizer
and model configuration of a new model in :mod:`medvill.recipes.common`."""

from __future__ import annotations

from .data.splits import data_loader, load_split, load_vqa_split, readable
from .recipes.common import build_tokenizer, model_config_for
from .recipes.pretrain import PretrainRun, run_pretraining

__all__ = ["PretrainRun", "build_tokenizer", "data_loader", "load_split", "load_vqa_split", "model_config_for",
           "readable", "run_pretraining"]
