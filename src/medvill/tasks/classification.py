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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.collate import blank_reports
from ..data.records import Record
from ..metrics import classification_metrics
from .base import StepOutput, run_over


def binary_targets(records: list[Record]) -> np.ndarray:
    return np.stack([(r.labels == 1).astype(np.float32) for r in records])


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
