"""Diagnosis classification: micro AUROC and micro F1 over the 14 observations.

Targets are binary (1 = positive; uncertain and negative and blank count as 0 unless the
caller maps them otherwise).  AUROC is scikit-learn's ``roc_auc_score``; the micro average
pools every (report, observation) cell.  F1 thresholds the probabilities at ``threshold``
(0.5).  Per-label AUROC is reported for labels with both classes present, nan otherwise.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from ..labels import CHEXPERT_OBSERVATIONS


def classification_metrics(
    targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5, names: tuple[str, ...] = CHEXPERT_OBSERVATIONS
) -> dict[str, float]:
    """``targets`` (N, L) in {0, 1}; ``probs`` (N, L) in [0, 1]."""
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and probs {p.shape} must be equal (N, L) arrays")
    out: dict[str, float] = {}
    flat_y, flat_p = y.ravel(), p.ravel()
    out["auroc_micro"] = float(roc_auc_score(flat_y, flat_p)) if 0 < flat_y.sum() < flat_y.size else float("nan")
    per = []
    for j, name in enumerate(names):
        col = y[:, j]
        auc = float(roc_auc_score(col, p[:, j])) if 0 < col.sum() < len(col) else float("nan")
        out[f"auroc/{name}"] = auc
        per.append(auc)
    out["auroc_macro"] = float(np.nanmean(per)) if not np.all(np.isnan(per)) else float("nan")
    out["f1_micro"] = float(f1_score(flat_y, (flat_p >= threshold).astype(int), zero_division=0))
    out["f1_macro"] = float(f1_score(y, (p >= threshold).astype(int), average="macro", zero_division=0))
    return out
