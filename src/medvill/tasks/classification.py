"""Diagnosis classification (paper IV-A): 14 CheXpert observations, multi-label BCE on CLS.

Targets are the positive labels (1); uncertain (-1), negative and blank count as 0, the
paper's convention.  Metrics: micro AUROC and micro F1 (plus per-label AUROC); the model is
selected on the validation split's ``auroc_micro``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.records import Record
from ..metrics import classification_metrics
from .base import StepOutput, run_over


def binary_targets(records: list[Record]) -> np.ndarray:
    return np.stack([(r.labels == 1).astype(np.float32) for r in records])


class ClassificationTask:
    name = "classification"
    select_metric = "auroc_micro"

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["targets"].float())
        return StepOutput(loss=loss, metrics={"bce": loss.item()})

    def predict(self, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and targets over a whole loader, in data set order."""
        probs, targets = run_over(model, loader, torch.sigmoid, "targets")
        return probs.numpy(), targets.numpy()

    def metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return classification_metrics(targets, probs)
