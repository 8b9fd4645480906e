"""Data classes: report sentences, drawn findings, anatomy, whole cases and the summary of a folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...labels import CHEXPERT_OBSERVATIONS


@dataclass(frozen=True)
class Sentence:
    """One report sentence and the CheXpert mentions in it.

    ``observation`` / ``value`` is the first mention (``None`` for filler sentences); ``also``
    holds any further ``(observation, value)`` mentions of the same sentence (e.g. "No
    pleural effusion or pneumothorax." mentions two).  ``mentions`` gives them all.
    ``section`` is ``"findings"`` or ``"impression"``.
    """

    text: str
    observation: str | None = None
    value: int | None = None
    also: tuple[tuple[str, int], ...] = ()
    section: str = "findings"

    @property
    def mentions(self) -> tuple[tuple[str, int], ...]:
        if self.observation is None:
            return self.also
        return ((self.observation, int(self.value)),) + self.also  # type: ignore[arg-type]


@dataclass
class Finding:
    """A drawn finding: what it is, where, how large, and how the report states it.

    ``side`` is the patient's side (``"left"`` = image right), ``"bilateral"`` or ``None``;
    ``severity`` e.g. ``"small"|"moderate"|"large"`` (effusion, pneumothorax),
    ``"mild"|"moderate"|"severe"`` (cardiomegaly, edema), ``"small"|"large"`` (nodule / mass);
    ``location`` a zone (``"upper"|"middle"|"lower"``, ``"apical"|"lateral"``, ``"rib"|"clavicle"``);
    ``value`` how the report states it (1 positive, -1 uncertain); ``faint`` whether it is
    drawn faintly; ``params`` the exact drawing parameters (geometry, texture seeds, devices).
    """

    observation: str
    value: int = 1
    side: str | None = None
    severity: str | None = None
    location: str | None = None
    faint: bool = False
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomy and exposure (normalised image coordinates, y downwards)."""

    cx: float            # body midline
    angle: float         # rotation in radians
    scale: float
    lung_dx: float       # lung centre distance from the midline
    lung_a: float        # lung half-width
    lung_b: float        # lung half-height
    lung_cy: float       # lung centre height
    dome_h: float        # diaphragm dome height
    right_dome_up: float  # right hemidiaphragm is usually higher
    heart_hw: float      # heart half-width (normal)
    heart_hh: float
    heart_dx: float      # heart centre offset towards the patient's left
    med_hw: float        # mediastinum half-width
    rib_top: float
    rib_gap: float
    rib_amp: float
    contrast: float
    brightness: float
    gamma: float
    bubble: float        # gastric bubble size (0 = none)
    texture_seed: int


@dataclass(eq=False)
class SyntheticCase:
    """One synthetic patient: image, report, labels, ground truth and VQA questions."""

    id: str
    index: int
    seed: int
    image: np.ndarray                   # uint8, (image_size, image_size), grayscale
    findings: str                       # FINDINGS section text
    impression: str                     # IMPRESSION section text
    report: str                         # "FINDINGS: ...\nIMPRESSION: ..."
    labels: dict[str, int | None]       # all 14 observations: 1 / 0 / -1 / None
    sentences: list[Sentence]
    drawn: list[Finding]                # what the image shows (incl. Support Devices)
    anatomy: Anatomy
    questions: list[dict[str, Any]]     # MEVF-style question dicts (qid, image_name, ...)
    split: str

    @property
    def image_name(self) -> str:
        return f"{self.id}.png"

    @property
    def positive_set(self) -> frozenset[str]:
        return frozenset(k for k, v in self.labels.items() if v == 1)

    def to_record(self) -> dict[str, Any]:
        """The JSONL record written for this case."""
        return {
            "id": self.id,
            "image": f"images/{self.image_name}",
            "findings": self.findings,
            "impression": self.impression,
            "report": self.report,
            "labels": {name: self.labels[name] for name in CHEXPERT_OBSERVATIONS},
            "split": self.split,
        }


@dataclass
class SyntheticSummary:
    """What :func:`generate_synthetic` wrote: ``counts`` records per split, ``label_counts``
    per observation the number of records labelled ``"1"``, ``"0"``, ``"-1"`` and ``"blank"``."""

    root: Path
    n: int
    image_size: int
    seed: int
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
