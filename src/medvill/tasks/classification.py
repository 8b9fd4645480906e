"""Diagnosis classification (paper IV-A): 14 CheXpert observations, multi-label BCE on CLS.

Targets are the positive labels (1); uncertain (-1), negative and blank count as 0, the
paper's convention.  Metrics: micro AUROC and micro F1 (plus per-label AUROC); the model is
selected on the validation split's ``auroc_micro``.  Per-label thresholds (for macro F1,
:func:`medvill.metrics.classification.select_thresholds`) and one shared threshold (for micro
F1, :func:`~medvill.metrics.classification.select_micro_threshold`) are chosen on the
validation split and saved with the checkpoint (``thresholds.json``), for the image-report pair
and for the image alone.

The paper classifies an image with its report.  A clinician's question is the image alone
(``Pipeline.classify(image)``: an empty report), so validation and evaluation also score
every image with an empty report (``image_only_*`` metrics), and ``image_only_prob`` trains
that share of examples with an empty report so that one model serves both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint_files import THRESHOLDS_FILE
from ..config import ConfigError, RunConfig
from ..data.pairs import blank_reports
from ..data.splits import load_split
from ..metrics import classification_metrics
from ..metrics.classification import select_micro_threshold, select_thresholds
from ..modeling.baselines import TieNet
from ..modeling.heads import MedViLLForClassification
from .base import StepOutput, run_over
from .common import binary_targets as binary_targets
from .common import loader, record_dataset
from .registry import (
    EvalContext,
    FitContext,
    FitPlan,
    ModelVariant,
    TaskSpec,
    on_cnn_transformer,
    register_task,
    scored,
    tienet_head,
)


class ClassificationTask:
    name = "classification"
    select_metric = "auroc_micro"

    def __init__(self, image_only_prob: float = 0.0, seed: int = 0, sep_id: int = 102, pad_id: int = 0):
        self.image_only_prob = image_only_prob
        self.seed = seed
        self.sep_id, self.pad_id = sep_id, pad_id

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        text_ids, text_valid = batch["text_ids"], batch["text_valid"]
        if self.image_only_prob > 0:  # the same rows on every process and after a resume: seeded by step
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            rows = torch.rand(len(text_ids), generator=gen) < self.image_only_prob
            text_ids, text_valid = blank_reports(text_ids, text_valid, rows.to(text_ids.device), self.sep_id,
                                                 self.pad_id)
        logits = model(text_ids, text_valid, images=batch["images"]).logits
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["targets"].float())
        return StepOutput(loss=loss, metrics={"bce": loss.item()})

    def predict(self, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and targets over a whole loader, in data set order."""
        probs, targets = run_over(model, loader, torch.sigmoid, "targets")
        return probs.numpy(), targets.numpy()

    def metrics(self, probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None = None,
                micro_threshold: float | None = None) -> dict[str, float]:
        return classification_metrics(targets, probs, thresholds=thresholds, micro_threshold=micro_threshold)


# ============================================================================================
# the task's contract (tasks/registry.py)
# ============================================================================================

def _validate(task: ClassificationTask, model: nn.Module, loader_: DataLoader,
              image_only_loader: DataLoader) -> tuple[dict[str, float], dict[str, Any]]:
    """Validation metrics with the reports and with empty reports (``image_only_*``), and the
    thresholds each chooses on this (validation) split."""
    probs, targets = task.predict(model, loader_)
    io_probs, _ = task.predict(model, image_only_loader)
    metrics = task.metrics(probs, targets)
    metrics.update({f"image_only_{k}": v for k, v in task.metrics(io_probs, targets).items() if "/" not in k})
    thresholds = {"image_report": select_thresholds(targets, probs).tolist(),
                  "image_only": select_thresholds(targets, io_probs).tolist(),
                  "image_report_micro": select_micro_threshold(targets, probs),
                  "image_only_micro": select_micro_threshold(targets, io_probs)}
    return metrics, thresholds


def fit_classification(task: ClassificationTask, ctx: FitContext) -> FitPlan:
    """Reports and image-only validation; the thresholds of the model being validated travel
    with it when it is saved (``thresholds.json``)."""
    task.sep_id, task.pad_id = ctx.tokenizer.sep_id, ctx.tokenizer.pad_id
    mcfg, tok = ctx.model_config, ctx.tokenizer
    train_loader = loader(record_dataset(ctx.train, tok, mcfg), ctx.cfg, tok, train=True)
    val_loader = loader(record_dataset(ctx.validation, tok, mcfg), ctx.cfg, tok, train=False)
    val_image_only = loader(record_dataset(ctx.validation, tok, mcfg, image_only=True), ctx.cfg, tok, train=False)
    selected: dict[str, Any] = {}

    def evaluate(m: nn.Module) -> dict[str, float]:
        metrics, thresholds = _validate(task, m, val_loader, val_image_only)
        selected.update(thresholds)
        return metrics

    def files() -> dict[str, str]:
        return {THRESHOLDS_FILE: json.dumps(selected, indent=1) + "\n"} if selected else {}

    return FitPlan(train_loader, evaluate, files)


def read_thresholds(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """The thresholds a classification checkpoint chose on validation: per label
    (``{"image_report": (14,), "image_only": (14,)}``) and, in checkpoints written since they
    exist, the shared micro-F1 ones (``image_report_micro``, ``image_only_micro``: 0-d arrays);
    empty for checkpoints without any."""
    path = Path(checkpoint) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid thresholds file ({exc})") from None


def evaluate_classification(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    """The paper's image + report metrics, the same from the image alone (empty reports,
    ``image_only_*``), and F1 at the thresholds chosen on validation (the checkpoint's
    ``thresholds.json``: per label for macro F1, one shared for micro F1; ``*_val_thr``) beside
    F1 at 0.5."""
    task, records, tok, mcfg = ctx.task, ctx.examples, ctx.tokenizer, ctx.cfg.model
    thresholds = read_thresholds(ctx.checkpoint)
    micro = {k: float(thresholds.pop(f"{k}_micro")) for k in ("image_report", "image_only")
             if f"{k}_micro" in thresholds}
    probs, targets = task.predict(ctx.model, loader(record_dataset(records, tok, mcfg), ctx.cfg, tok, train=False))
    io_probs, _ = task.predict(ctx.model, loader(record_dataset(records, tok, mcfg, image_only=True), ctx.cfg, tok,
                                                 train=False))

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        m = task.metrics(probs[idx], targets[idx], thresholds.get("image_report"), micro.get("image_report"))
        io = task.metrics(io_probs[idx], targets[idx], thresholds.get("image_only"), micro.get("image_only"))
        m.update({f"image_only_{k}": v for k, v in io.items()})
        return {k: v for k, v in m.items() if "/" not in k}

    return scored(len(records), metric_fn, ctx.n_bootstrap, ctx.seed)


def _make_task(cfg: RunConfig | None, checkpoint: Path | None) -> ClassificationTask:
    ft = cfg.finetune if cfg is not None else None
    return ClassificationTask(image_only_prob=ft.image_only_prob if ft else 0.0, seed=cfg.train.seed if cfg else 0)


def _tienet_task(cfg: RunConfig | None, checkpoint: Path | None) -> ClassificationTask:
    from .tienet import TieNetClassificationTask

    return TieNetClassificationTask()


MEDVILL = ModelVariant(MedViLLForClassification, _make_task, fit_classification)
SPEC = register_task(TaskSpec(
    name="classification",
    medvill=MEDVILL,
    examples=load_split,
    evaluate=evaluate_classification,
    baselines={
        "cnn-transformer": on_cnn_transformer(MEDVILL),
        "tienet": ModelVariant(TieNet, _tienet_task, fit_classification, head=tienet_head),
    },
))
