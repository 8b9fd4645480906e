"""Diagnosis classification: micro AUROC and micro F1 over the 14 observations.

Targets are binary (1 = positive; uncertain and negative and blank count as 0 unless the
caller maps them otherwise).  AUROC is scikit-learn's ``roc_auc_score``; the micro average
pools every (report, observation) cell.  F1 thresholds the probabilities at ``threshold``
(0.5).  Per-label AUROC is reported for labels with both classes present, nan otherwise.

Thresholds chosen on validation (:func:`select_thresholds`): an under-confident model scores
F1 0 at a fixed 0.5 although it ranks well, so, as peers report it, each observation also gets
the threshold that maximises its F1 on the **validation** split; the test split is then scored
with those thresholds (``f1_micro_val_thr``, ``f1_macro_val_thr``) beside the fixed-0.5 figures.
The test split never chooses anything.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from ..labels import CHEXPERT_OBSERVATIONS


def select_thresholds(targets: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label thresholds ``(L,)`` that maximise each label's F1 on ``(targets, probs)``
    (call it on the validation split; a probability >= its threshold is positive).  The
    candidates are scikit-learn's ``precision_recall_curve`` thresholds; the first maximum
    (the lowest such threshold) wins.  A label without positives or without negatives keeps
    ``default``."""
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and probs {p.shape} must be equal (N, L) arrays")
    return np.array([_best_f1_threshold(y[:, j], p[:, j], default) for j in range(y.shape[1])], dtype=np.float64)


def _best_f1_threshold(y: np.ndarray, p: np.ndarray, default: float) -> float:
    """The threshold of 1-D ``(y, p)`` with the highest F1 (the lowest such); ``default`` when
    ``y`` has no positive or no negative."""
    if not 0 < y.sum() < len(y):
        return default
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def select_micro_threshold(targets: np.ndarray, probs: np.ndarray, default: float = 0.5) -> float:
    """The one threshold, shared by every label, that maximises micro F1 on ``(targets, probs)``
    (call it on the validation split).  Per-label thresholds maximise each label's F1, hence
    macro F1, not micro F1: a weak label's best F1 often lies at a low threshold whose false
    positives cost the pooled count more than its true positives bring.  Measured on the demo's
    classification model: validation micro F1 0.731 with per-label thresholds, 0.755 at 0.5,
    0.785 with this one; on test 0.718, 0.760 and 0.773.  Without positives or negatives,
    ``default``."""
    y = np.asarray(targets, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets {np.shape(targets)} and probs {np.shape(probs)} must be equal arrays")
    return _best_f1_threshold(y, p, default)


def classification_metrics(
    targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5, names: tuple[str, ...] = CHEXPERT_OBSERVATIONS,
    thresholds: np.ndarray | None = None, micro_threshold: float | None = None,
) -> dict[str, float]:
    """``targets`` (N, L) in {0, 1}; ``probs`` (N, L) in [0, 1].  ``thresholds`` (L,):
    per-label thresholds chosen on validation (:func:`select_thresholds`); adds
    ``f1_micro_val_thr`` / ``f1_macro_val_thr``.  ``micro_threshold``: the shared threshold
    chosen on validation for micro F1 (:func:`select_micro_threshold`); when given,
    ``f1_micro_val_thr`` uses it (each F1 at the thresholds chosen for it), else the per-label
    ones (checkpoints written before it existed)."""
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
    if thresholds is not None:
        t = np.asarray(thresholds, dtype=np.float64)
        if t.shape != (y.shape[1],):
            raise ValueError(f"thresholds must have shape ({y.shape[1]},), got {t.shape}")
        pred = (p >= t[None, :]).astype(int)
        micro = pred if micro_threshold is None else (p >= float(micro_threshold)).astype(int)
        out["f1_micro_val_thr"] = float(f1_score(y.ravel(), micro.ravel(), zero_division=0))
        out["f1_macro_val_thr"] = float(f1_score(y, pred, average="macro", zero_division=0))
    return out
