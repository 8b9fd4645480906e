"""A pure-Python re-implementation of the CheXpert labeler (no parser, no Java).

``label_reports(texts)`` labels reports with a module-level cached :class:`CheXpertLabeler`
and returns an (N, 14) float32 array in ``medvill.labels.CHEXPERT_OBSERVATIONS`` order:
1 positive, 0 negative, -1 uncertain, nan blank (not mentioned). The conventions (what is a
mention, a negation, an uncertainty, and how mentions are aggregated) are documented in
:mod:`medvill.labeler.core`. The rule files (phrases and NegBio patterns) are those of the
original Stanford labeler (MIT), shipped in ``medvill/labeler/rules``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .core import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    CheXpertLabeler,
    Mention,
    clean_report,
    load_phrases,
    split_sentences,
)

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "UNCERTAIN",
    "CheXpertLabeler",
    "Mention",
    "clean_report",
    "get_labeler",
    "label_report",
    "label_reports",
    "load_phrases",
    "split_sentences",
]


@lru_cache(maxsize=1)
def get_labeler() -> CheXpertLabeler:
    """The shared labeler (rule files read once per process)."""
    return CheXpertLabeler()


def label_reports(texts: Sequence[str]) -> np.ndarray:
    """Label N reports: an (N, 14) float32 array (1 / 0 / -1, nan = blank)."""
    if isinstance(texts, str):
        raise TypeError("label_reports expects a sequence of reports, not a single string; use label_report")
    return get_labeler().label_many(list(texts))


def label_report(text: str) -> np.ndarray:
    """Label one report: a float32 vector of 14 values (1 / 0 / -1, nan = blank)."""
    return get_labeler().label(text)
