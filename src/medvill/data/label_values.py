"""CheXpert label values as the data files write them -> label vectors, defined once.

Values follow :mod:`medvill.labels`: 1 positive, 0 negative, -1 uncertain, blank (``nan``)
not mentioned.  Three forms are read:

* one cell (:func:`parse_label_value`): ``"1.0"`` / ``"0"`` / ``-1`` / ``""`` / ``None`` ...;
* a row of cells keyed by observation name (:func:`label_vector`): the MIMIC-CXR chexpert CSV,
  the label columns or ``labels`` object of your own files;
* MedViLL's string of positive observations (:func:`parse_positive_labels`).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
#: The label values besides blank (nan).
LABEL_VALUES = (POSITIVE, NEGATIVE, UNCERTAIN)

#: Observation name -> its position in a label vector.
OBSERVATION_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}

_LABEL_STRINGS = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE, "-0.0": NEGATIVE,
                  "-1": UNCERTAIN, "-1.0": UNCERTAIN}
_BLANK_STRINGS = {"", "nan", "none", "null", "na", "n/a"}


def blank_labels() -> np.ndarray:
    """A label vector with every observation blank (nan)."""
    return np.full(NUM_OBSERVATIONS, np.nan, dtype=np.float32)


def blank_label_rows(n: int) -> np.ndarray:
    """``(n, 14)`` labels, all blank (nan)."""
    return np.full((n, NUM_OBSERVATIONS), np.nan, dtype=np.float32)


def parse_label_value(value: Any) -> float:
    """One CheXpert label cell -> 1.0 / 0.0 / -1.0, or nan for blank.

    Accepts numbers and strings (``"1.0"``, ``"-1"``, ``""``, ``"nan"``, ``None``);
    anything else (``2``, ``"yes"``, ``True``) raises ``ValueError``.
    """
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        raise ValueError(f"label value {value!r} is not 1, 0, -1 or blank")
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if math.isnan(v):
            return v
        if v in LABEL_VALUES:
            return v
        raise ValueError(f"label value {value!r} is not 1, 0, -1 or blank")
    s = str(value).strip().lower()
    if s in _BLANK_STRINGS:
        return float("nan")
    if s in _LABEL_STRINGS:
        return _LABEL_STRINGS[s]
    raise ValueError(f"label value {value!r} is not 1, 0, -1 or blank")


def label_vector(values: Mapping[str, Any], *, field: str = "label", expected: str = "1, 0, -1") -> np.ndarray:
    """``{observation: cell}`` -> a label vector (observations not given are blank).

    Cells are read by :func:`parse_label_value`.  Raises ``ValueError`` at the first problem,
    in the mapping's order: ``"unknown CheXpert observation 'X'"``, or ``"<field> 'X' has value
    <v>; expected <expected> or blank"`` (``field`` and ``expected`` word it for the caller's
    file, e.g. ``column`` and ``1.0, 0.0, -1.0`` for a CSV of floats).
    """
    vec = blank_labels()
    for name, value in values.items():
        if name not in OBSERVATION_INDEX:
            raise ValueError(f"unknown CheXpert observation {name!r}")
        try:
            vec[OBSERVATION_INDEX[name]] = parse_label_value(value)
        except ValueError:
            raise ValueError(f"{field} {name!r} has value {value!r}; expected {expected} or blank") from None
    return vec


def _positive_names(value: Any) -> list[str]:
    """The observation names of MedViLL's ``label`` field (a list, or a quoted string)."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    s = str(value if value is not None else "").strip()
    if not s:
        return []
    try:
        parsed = ast.literal_eval(f"[{s}]")
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot parse label string {s!r}; "
                         f"expected e.g. \"'Edema', 'Cardiomegaly'\"") from None
    if not all(isinstance(p, str) for p in parsed):
        raise ValueError(f"cannot parse label string {s!r}; expected quoted observation names")
    return [p.strip() for p in parsed]


def parse_positive_labels(value: Any) -> np.ndarray:
    """MedViLL's ``label`` field -> a label vector.

    The field is a quoted, comma-separated string of the observations the CheXpert labeler
    found positive, e.g. ``"'Lung Opacity', 'Support Devices'"``, or ``"''"`` for none (a
    JSON list of names is accepted too).  The listed observations are 1 and **every other
    observation is 0**: the files keep only the positive set the labeler found, so an
    unlisted observation is "not positive" (negative, uncertain or not mentioned - the files
    do not say which; 0 is how MedViLL itself trains on them).  An unknown name raises
    ``ValueError``.
    """
    vec = np.full(NUM_OBSERVATIONS, NEGATIVE, dtype=np.float32)
    for name in _positive_names(value):
        if not name:
            continue
        if name not in OBSERVATION_INDEX:
            raise ValueError(f"unknown CheXpert observation {name!r} in label field")
        vec[OBSERVATION_INDEX[name]] = POSITIVE
    return vec
