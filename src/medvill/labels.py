"""The 14 CheXpert observations and helpers for label vectors.

Label values follow the CheXpert convention: ``1`` positive, ``0`` negative,
``-1`` uncertain and ``None`` (blank) not mentioned.  As tensors, blank is
stored as ``nan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_OBSERVATIONS = len(CHEXPERT_OBSERVATIONS)


def labels_to_vector(labels: Mapping[str, int | float | None]) -> np.ndarray:
    """Map ``{observation: 1|0|-1|None}`` to a float vector of length 14 (blank = nan).

    Unknown observation names and invalid values raise ``ValueError`` naming them.
    """
    vec = np.full(NUM_OBSERVATIONS, np.nan, dtype=np.float32)
    index = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}
    for name, value in labels.items():
        if name not in index:
            raise ValueError(f"unknown CheXpert observation {name!r}; expected one of {CHEXPERT_OBSERVATIONS}")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if value not in (1, 0, -1):
            raise ValueError(f"label {name!r} has value {value!r}; expected 1, 0, -1 or blank")
        vec[index[name]] = float(value)
    return vec


def positive_set(labels: np.ndarray | Sequence[float]) -> frozenset[int]:
    """Indices of the positive (== 1) observations: the 'positive label set' used for
    IRM negatives and retrieval positives."""
    arr = np.asarray(labels, dtype=np.float32)
    return frozenset(int(i) for i in np.flatnonzero(arr == 1.0))
