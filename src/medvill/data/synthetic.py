"""Built-in synthetic chest X-rays with radiology reports, CheXpert labels and VQA questions.

This is the project's default data set: the demo, the tests and the benchmarks train on it.
Everything is deterministic and derived from ``(seed, index)`` only, so a case is the same
whether it is made alone (:func:`synthesize_case`) or inside :func:`generate_synthetic`, and
the same seed always gives byte-identical files.

Images
------
8-bit grayscale, square, posterior-anterior (PA) view.  **The patient's left is the image's
right.**  Every patient has slightly different anatomy (position, size, rotation, heart size,
rib spacing, contrast, brightness, gamma, noise), so a model has to learn the findings rather
than fixed pixels.  Normal anatomy: dark air outside the body, gray soft tissue, two dark
lungs (rounded vertical ellipses, narrower at the apex), a bright mediastinum and spine in
the middle with a dark tracheal air column, a bright heart in the lower middle reaching
further to the image's right, bright diaphragm domes under the lungs with sharp
costophrenic angles, posterior and (fainter) anterior ribs, clavicles, branching
vascular lung markings that fade towards the periphery, and a gastric air bubble.

Findings, as drawn (``side`` is always the *patient's* side):

* **Cardiomegaly** - the heart is 1.3-1.6x wider (cardiothoracic ratio about 0.5-0.65 against
  about 0.4 normally; the exact ratio is kept in ``Finding.params["ctr"]``).
* **Enlarged Cardiomediastinum** - the upper mediastinum is widened 1.7-2.2x and covers the
  medial upper lungs.
* **Pleural Effusion** (left / right / bilateral; small / moderate / large) - fluid as dense
  as soft tissue fills the lung base, with a meniscus rising towards the lateral chest wall,
  a blunted costophrenic angle and a lost diaphragm outline.
* **Pneumothorax** (left / right; small / moderate / large) - an apical-lateral rim of the lung
  with no lung markings, darker than the lung, bounded by a thin bright visceral pleural edge.
* **Lung Opacity** - a patchy, moderately dense region in a lobe (or both bases).
* **Consolidation** - a dense, more uniform region in a lobe with darker air bronchograms.
* **Pneumonia** - drawn like a patchy consolidation in a lobe.  Pneumonia is also often
  *reported* (mostly as uncertain: "cannot exclude pneumonia", "concerning for pneumonia")
  alongside a drawn opacity or consolidation.
* **Lung Lesion** - a round nodule (small, ``severity="small"``) or a larger lobulated mass
  (``severity="large"``), with side and lobe.
* **Edema** - bilateral perihilar ("bat-wing") haze plus coarser interstitial markings.
* **Atelectasis** (left / right / bilateral) - a thin bright plate-like band at a lung base and
  a slightly raised hemidiaphragm (volume loss).
* **Pleural Other** - pleural thickening: a soft-tissue rim along the lateral lung edge or an
  apical cap.
* **Fracture** - a rib (or clavicle) with a gap and a step between the fragments.
* **Support Devices** - very bright thin lines and objects: endotracheal tube down the
  midline, nasogastric tube into the stomach, right internal jugular central line, left
  PICC, left chest-wall pacemaker with leads, chest tube, ECG lead circles with wires.

A finding reported as *uncertain* (label -1) is drawn faintly (``Finding.faint``); one
reported as positive (1) is drawn clearly.  ``SyntheticCase.drawn`` keeps what is drawn,
``SyntheticCase.labels`` what the report says.

Reports and labels
------------------
Reports have a FINDINGS section and a shorter IMPRESSION section, written from varied
templates (synonyms, abbreviations such as PTX / ETT / NG tube / PICC / R IJ / RLL, side and
severity words, "bibasilar").  Each :class:`Sentence` records every CheXpert observation it
mentions with the value a CheXpert-style labeler would give that mention:

* ``1`` - stated as present ("Small left pleural effusion.");
* ``0`` - explicitly negated ("No pleural effusion or pneumothorax.", "There is no focal
  consolidation.", "... without evidence of pneumothorax", "Heart size is normal.");
* ``-1`` - stated with uncertainty ("cannot exclude pneumonia", "possible small left
  effusion", "may represent atelectasis", "questionable nodule", "... cannot be excluded").

Conventions (decided once, here):

* Mentions are keyword based, like the CheXpert labeler: a sentence only labels the
  observations it names.  "The lungs are clear.", "The osseous structures are intact." and
  "No acute cardiopulmonary process." name none, so they are filler (no label).
* "The cardiomediastinal silhouette is within normal limits." (and "Normal
  cardiomediastinal silhouette.") is a negative mention of *both* Cardiomegaly and Enlarged
  Cardiomediastinum.  "Heart size is normal." negates only Cardiomegaly; "Mediastinal
  contours are normal." only Enlarged Cardiomediastinum.
* "Opacities ... consistent with pulmonary edema" labels Lung Opacity and Edema positive.
* Words the real CheXpert labeler treats as unlabeled findings ("blunting" aside, which only
  appears next to a mentioned effusion), "CHF" / "heart failure" and "nodular opacity" are
  never used.
* Aggregation over the whole report, per observation: positive beats uncertain beats
  negative; not mentioned is blank (``None``).  ``No Finding`` is ``1`` when no observation
  other than Support Devices is 1 or -1, and blank otherwise (never 0).  Support Devices is
  never negated.
* The IMPRESSION only repeats (observation, value) pairs already stated in FINDINGS, so the
  FINDINGS section alone gives the same labels as the whole report.

VQA
---
``questions_per_image`` questions per image in the VQA-RAD / MEVF layout, about half CLOSED
(yes/no, balanced by drawing the wanted answer first) and half OPEN with short lower-case
answers ("left", "bilateral", "small", "heart", "endotracheal tube", "x-ray", ...).  Answers
come from the drawn ground truth; findings reported as uncertain are never asked about.

Files
-----
See :func:`generate_synthetic` for the folder layout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..labels import CHEXPERT_OBSERVATIONS

GENERATOR = "medvill-synthetic"
VERSION = 1
SPLITS = ("train", "validate", "test")

NF, ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA, SD = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
assert set(CHEXPERT_OBSERVATIONS) == {NF, ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA, SD}

#: Observations that are drawn as findings (everything but No Finding and Support Devices).
ABNORMALITIES = (ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA)

# Random streams: each part of a case has its own generator seeded by (seed, index, stream),
# so that e.g. removing a finding never changes the anatomy or the noise.
_ANATOMY, _FINDINGS, _TEXT, _TEXTURE, _QUESTIONS, _GRAIN = range(6)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


# ---------------------------------------------------------------------------------------
# data classes
# ---------------------------------------------------------------------------------------


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
    root: Path
    n: int
    image_size: int
    seed: int
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]


# ---------------------------------------------------------------------------------------
# anatomy
# ---------------------------------------------------------------------------------------


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy and exposure."""
    s = float(rng.uniform(0.93, 1.04))
    return Anatomy(
        cx=float(0.5 + rng.normal(0, 0.012)),
        angle=float(rng.normal(0, 0.022)),
        scale=s,
        lung_dx=0.205 * s * float(rng.uniform(0.97, 1.03)),
        lung_a=0.172 * s * float(rng.uniform(0.95, 1.05)),
        lung_b=0.325 * s * float(rng.uniform(0.95, 1.04)),
        lung_cy=float(0.445 + rng.normal(0, 0.012)),
        dome_h=float(rng.uniform(0.07, 0.1)) * s,
        right_dome_up=float(rng.uniform(0.0, 0.025)),
        heart_hw=0.148 * s * float(rng.uniform(0.94, 1.05)),
        heart_hh=0.14 * s * float(rng.uniform(0.95, 1.05)),
        heart_dx=0.045 * s,
        med_hw=0.058 * s * float(rng.uniform(0.9, 1.1)),
        rib_top=float(0.125 + rng.normal(0, 0.006)),
        rib_gap=0.064 * s * float(rng.uniform(0.96, 1.04)),
        rib_amp=float(rng.uniform(0.08, 0.12)),
        contrast=float(rng.uniform(0.88, 1.12)),
        brightness=float(rng.uniform(-0.03, 0.04)),
        gamma=float(rng.uniform(0.9, 1.25)),
        bubble=float(rng.uniform(0.025, 0.04)) if rng.random() < 0.7 else 0.0,
        texture_seed=int(rng.integers(0, 2**62)),
    )


def _sgn(side: str) -> int:
    """Image x direction of a patient side: the patient's left is the image's right."""
    return 1 if side == "left" else -1


def _sides(side: str | None) -> tuple[str, ...]:
    return ("left", "right") if side == "bilateral" else ((side,) if side else ())


# ---------------------------------------------------------------------------------------
# rendering helpers
# ---------------------------------------------------------------------------------------


def _soft(d: np.ndarray | float, w: float) -> np.ndarray:
    """Smooth step: ~0 for d << -w, 0.5 at d = 0, ~1 for d >> w."""
    return 0.5 + 0.5 * np.tanh(np.asarray(d, dtype=np.float32) / np.float32(w))


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Rows: smooth (Gaussian RBF) interpolation weights from ``cells + 1`` grid knots to
    ``size`` pixel centres; the knot spacing is fixed in image units, so a field looks the
    same at every image size."""
    x = (np.arange(size, dtype=np.float64) + 0.5) / size
    knots = np.linspace(-0.5 / cells, 1 + 0.5 / cells, cells + 2)
    w = np.exp(-(((x[:, None] - knots[None, :]) * cells / 0.7) ** 2))
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def _field(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation."""
    g = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    w = _interp_matrix(size, cells)
    f = w @ g @ w.T
    f -= f.mean()
    f /= f.std() + 1e-6
    return f


@lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    px, py = np.meshgrid(c, c)
    return px, py


class _Lung:
    """Geometry of one lung (normalised coordinates) on the rotated grid.

    ``ulat`` runs from the lung centre towards the lateral chest wall (1 at the edge), ``v``
    from the centre downwards (-1 at the apex), ``r`` is the normalised radius (1 on the
    outline; the lower half is squarer so the lung is widest at its base).
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, A: Anatomy, side: str, dome_raise: float, ew: float):
        s = _sgn(side)
        self.side, self.sgn = side, s
        self.lx = A.cx + s * A.lung_dx
        self.ly = A.lung_cy
        self.a = A.lung_a * (0.96 if side == "left" else 1.0)
        self.b = A.lung_b
        self.top = self.ly - self.b
        t = np.clip((Y - self.top) / (1.9 * self.b), 0.0, 1.0)
        self.a_eff = self.a * (0.6 + 0.45 * np.sqrt(t))
        self.ulat = (X - self.lx) * s / self.a_eff
        self.v = (Y - self.ly) / self.b
        vv = np.abs(self.v)
        self.r = np.sqrt(self.ulat ** 2 + np.where(self.v < 0, vv ** 2, vv ** 4))
        up = dome_raise + (A.right_dome_up if side == "right" else 0.0)
        self.base = self.ly + 0.93 * self.b - up           # costophrenic angle height
        peak_x = self.lx - s * 0.2 * self.a
        self.dome = self.base - A.dome_h * np.clip(1 - ((X - peak_x) / (1.1 * self.a)) ** 2, 0, 1) ** 0.7
        self.ell = _soft((1.0 - self.r) * self.a, ew)      # inside the thoracic outline
        self.below = _soft(self.dome - Y, ew)              # above the diaphragm
        self.mask = self.ell * self.below                  # aerated lung (reduced below)
        self.depth = 0.44 * (0.78 + 0.22 * np.sqrt(np.clip(1 - self.r ** 2, 0, 1)))

    def point(self, ulat: float, v: float) -> tuple[float, float]:
        """Image coordinates of a point given in lung coordinates."""
        y = self.ly + v * self.b
        t = min(max((y - self.top) / (1.9 * self.b), 0.0), 1.0)
        return self.lx + self.sgn * ulat * self.a * (0.6 + 0.45 * math.sqrt(t)), y


def _to_pixels(points: Sequence[tuple[float, float]], A: Anatomy, size: float) -> list[tuple[float, float]]:
    """Anatomical normalised coordinates -> pixel coordinates (inverse of the grid rotation)."""
    c, s = math.cos(A.angle), math.sin(A.angle)
    out = []
    for qx, qy in points:
        px = 0.5 + c * (qx - 0.5) + s * (qy - 0.5)
        py = 0.5 - s * (qx - 0.5) + c * (qy - 0.5)
        out.append((px * size, py * size))
    return out


def _bezier(p0, p1, p2, n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)
    x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t ** 2 * p2[0]
    y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t ** 2 * p2[1]
    return list(zip(x.tolist(), y.tolist()))


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------


def render_image(anatomy: Anatomy, findings: Sequence[Finding], image_size: int) -> np.ndarray:
    """Draw a PA chest radiograph of ``anatomy`` with ``findings`` (uint8, image_size^2).

    Pure: the same arguments always give the same pixels, and the anatomy, texture and noise
    do not depend on ``findings`` - so rendering a patient with and without a finding
    isolates what that finding changes (the tests use this).

    The image is built as a projected "density" (0 = air, about 0.6 = thick soft tissue,
    bone and fluid brighter) that is then exposed with the patient's contrast, brightness
    and gamma; support devices are composited last, nearly white.
    """
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {S}")
    A = anatomy
    ew = 0.005
    px, py = _pixel_grid(S)
    ca, sa = np.float32(math.cos(A.angle)), np.float32(math.sin(A.angle))
    X = 0.5 + ca * (px - 0.5) - sa * (py - 0.5)
    Y = 0.5 + sa * (px - 0.5) + ca * (py - 0.5)
    tex = np.random.default_rng(A.texture_seed)
    n_mark1 = _field(tex, 13, S)
    n_mark2 = _field(tex, 23, S)
    n_low = _field(tex, 3, S)
    n_tissue = _field(tex, 7, S)

    by_obs: dict[str, list[Finding]] = {}
    for f in findings:
        by_obs.setdefault(f.observation, []).append(f)

    # --- geometry changed by findings -------------------------------------------------
    heart_scale, med_scale = 1.0, 1.0
    for f in by_obs.get(CARD, []):
        heart_scale = max(heart_scale, float(f.params.get("heart_scale", 1.45)))
    for f in by_obs.get(ECM, []):
        med_scale = max(med_scale, float(f.params.get("med_scale", 1.9)))
    dome_raise = {"left": 0.0, "right": 0.0}
    for f in by_obs.get(ATE, []):
        for side in _sides(f.side):
            dome_raise[side] = max(dome_raise[side], float(f.params.get("dome_raise", 0.015)))

    # --- body and soft tissue ------------------------------------------------------------
    dxm = np.abs(X - A.cx)
    ys = np.clip((Y + 0.04) / 0.2, 0.0, 1.0)
    shoulder = np.sqrt(ys * (2.0 - ys))
    W = (0.08 + 0.40 * shoulder) * A.scale
    body = _soft(W - dxm, 0.01)
    thick = np.sqrt(np.clip(1.0 - (dxm / (W + 1e-3)) ** 2, 0.0, 1.0))
    D = body * (0.30 + 0.26 * thick + 0.015 * n_tissue)

    lungs = {side: _Lung(X, Y, A, side, dome_raise[side], ew) for side in ("right", "left")}
    base_y = max(lg.base for lg in lungs.values())
    # abdomen below the diaphragm is denser than the chest wall
    diaphragm = np.minimum(lungs["right"].dome, lungs["left"].dome)
    cage = _soft(A.lung_dx + 1.05 * A.lung_a - dxm, 0.03)
    D += 0.1 * _soft(Y - diaphragm, 0.008) * body * cage

    # mediastinum: a column between the lungs, widened superiorly for ECM
    carina = A.lung_cy - 0.5 * A.lung_b
    up = _soft(Y - 0.03, 0.02)
    widen = 1.0 + (med_scale - 1.0) * np.exp(-(((Y - (carina + 0.0)) / 0.12) ** 2))
    knob = 0.02 * np.exp(-(((Y - (carina - 0.05)) / 0.03) ** 2))
    right_edge = A.cx + (A.med_hw * widen + knob)          # image right = patient left (aortic knob)
    left_edge = A.cx - (A.med_hw * 0.92 * widen)
    med = _soft(np.minimum(right_edge - X, X - left_edge), ew) * up

    # heart: sits on the diaphragm, reaching further to the patient's left
    hs = heart_scale
    hcx = A.cx + A.heart_dx * (1.0 + 0.8 * (hs - 1.0))
    hcy = A.lung_cy + 0.55 * A.lung_b
    hw, hh = A.heart_hw * hs, A.heart_hh * (1.0 + 0.3 * (hs - 1.0))
    rh = np.sqrt(((X - hcx) / hw) ** 2 + ((Y - hcy) / hh) ** 2)
    heart = _soft((1.0 - rh) * hw, ew)
    above = _soft(diaphragm + 0.01 - Y, 0.01)

    # lungs: air removes density; the mediastinum and the heart cover the medial lung
    lung_any = np.zeros_like(X)
    for lg in lungs.values():
        lg.mask = lg.mask * (1.0 - med) * (1.0 - 0.96 * heart)
        D -= lg.depth * lg.mask
        lung_any = np.maximum(lung_any, lg.mask)
    D += (0.06 * med + 0.1 * heart * (1.0 - med)) * above * cage

    # spine and trachea
    D += 0.06 * _soft(0.028 * A.scale - dxm, ew) * (0.8 + 0.2 * np.cos(2 * np.pi * (Y - A.rib_top) / A.rib_gap)) * up
    trachea = _soft(0.012 * A.scale - np.abs(X - A.cx - 0.003), ew) * _soft(carina - Y, 0.01) * _soft(Y - 0.0, 0.02)
    D -= 0.12 * trachea

    # gastric bubble under the left hemidiaphragm
    if A.bubble > 0:
        lg = lungs["left"]
        bx, by = lg.lx - 0.15 * lg.a, float(lg.base) + 0.02
        rb = np.sqrt(((X - bx) / (1.4 * A.bubble)) ** 2 + ((Y - by) / A.bubble) ** 2)
        D -= 0.14 * _soft(1.0 - rb, 0.15) * _soft(Y - (lg.dome + 0.012), 0.004)

    # --- pneumothorax: an apical-lateral rim without lung markings ------------------------
    no_marks = np.zeros_like(X)
    for f in by_obs.get(PTX, []):
        for side in _sides(f.side):
            lg = lungs[side]
            r0 = float(f.params.get("r0", 0.7))
            sector = _soft(lg.ulat * 0.9 - lg.v - 0.1, 0.25)            # apical and lateral
            rim = _soft((lg.r - r0) * lg.a, 0.004) * sector * lg.mask
            no_marks = np.maximum(no_marks, rim)
            D -= float(f.params.get("extra_air", 0.08)) * rim
            edge = np.exp(-(((lg.r - r0) * lg.a / 0.0045) ** 2)) * sector * lg.mask
            D += float(f.params.get("edge", 0.16)) * edge

    # --- lung markings and hila ----------------------------------------------------------
    ridge = 0.6 * np.exp(-((n_mark1 / 0.2) ** 2)) + 0.4 * np.exp(-((n_mark2 / 0.22) ** 2))
    marks_gain = 1.0
    for f in by_obs.get(EDE, []):
        marks_gain = max(marks_gain, float(f.params.get("marks_gain", 1.8)))
    for lg in lungs.values():
        hx, hy = lg.lx - lg.sgn * 0.55 * lg.a, lg.ly - 0.02 * lg.b
        dist = np.sqrt((X - hx) ** 2 + ((Y - hy) * 0.7) ** 2)
        weight = lg.mask * (0.2 + 0.8 * np.exp(-dist / 0.1)) * (1.0 - no_marks)
        D += 0.12 * marks_gain * ridge * weight + 0.05 * weight
        D += 0.12 * np.exp(-((dist / 0.04) ** 2)) * lg.ell * (1 - no_marks)

    # --- ribs and clavicles ----------------------------------------------------------------
    D += _bones(X, Y, A, lungs, lung_any, body, by_obs.get(FRA, []), no_marks)

    # --- findings ------------------------------------------------------------------------
    for f in findings:
        painter = _PAINTERS.get(f.observation)
        if painter is not None:
            D += painter(f, X, Y, A, lungs, S)

    # --- exposure ------------------------------------------------------------------------
    img = A.brightness + A.contrast * D + 0.03 * n_low * body
    grain = np.random.default_rng([A.texture_seed & 0xFFFFFFFF, S]).standard_normal((S, S))
    img = img + 0.012 * grain.astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** np.float32(A.gamma)

    for f in by_obs.get(SD, []):
        dev = _draw_devices(f, A, lungs, S)
        img = img * (1.0 - dev) + np.float32(0.97) * dev
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _bones(X, Y, A: Anatomy, lungs, lung_any, body, fractures: Sequence[Finding], no_marks) -> np.ndarray:
    """Posterior ribs (10 per side), fainter anterior ribs, clavicles; rib/clavicle fractures."""
    out = np.zeros_like(X)
    th = 0.0115 * A.scale
    visible = body * (0.3 + 0.7 * lung_any) * (1.0 - 0.3 * no_marks) * _soft(0.5 * (lungs['left'].base + lungs['right'].base) + 0.03 - Y, 0.03)
    rib_breaks: dict[tuple[str, int], Finding] = {}
    clav_breaks: dict[str, Finding] = {}
    for f in fractures:
        if f.location == "clavicle":
            clav_breaks[f.side or "right"] = f
        else:
            rib_breaks[(f.side or "right", int(f.params.get("rib", 5)) - 1)] = f
    for side in ("right", "left"):
        s = _sgn(side)
        lg = lungs[side]
        span = A.lung_dx + 1.06 * lg.a
        dxn = np.maximum((X - A.cx) * s / span, 0.0)  # 0 at the spine, 1 at the chest wall
        lat = _soft(dxn - 0.07, 0.02) * _soft(1.04 - dxn, 0.025)
        for k in range(10):
            y0 = A.rib_top + k * A.rib_gap
            curve = 0.12 + 0.012 * k
            yc = y0 - 0.07 * dxn + curve * dxn ** 2.2
            gap = 1.0
            f = rib_breaks.get((side, k))
            extra = 0.0
            if f is not None:
                b = float(f.params.get("break_at", 0.65))
                step = float(f.params.get("step", 1.2)) * th
                yc = yc + step * _soft(dxn - b, 0.004)
                g = float(f.params.get("gap", 0.012)) / span
                gap = 1.0 - np.exp(-(((dxn - b) / g) ** 2))
                bx = A.cx + s * b * span
                by = y0 - 0.07 * b + curve * b ** 2.2
                extra = float(f.params.get("callus", 0.06)) * np.exp(-(((X - bx) ** 2 + (Y - by) ** 2) / (2.2 * th) ** 2))
            out += A.rib_amp * np.exp(-(((Y - yc) / th) ** 2)) * lat * gap * visible + extra * body
            # anterior rib: from the lateral end running down and medially, fading medially
            ya = y0 + curve + 0.02 + 0.16 * (1.0 - dxn)
            ant = _soft(dxn - 0.4, 0.08) * _soft(1.0 - dxn, 0.03)
            out += 0.4 * A.rib_amp * np.exp(-(((Y - ya) / (1.3 * th)) ** 2)) * ant * visible
        # clavicle: from the sternal notch laterally and slightly upwards
        dc = (np.abs(X - A.cx) - 0.04 * A.scale) / (0.3 * A.scale)
        onside = _soft((X - A.cx) * s, 0.005)
        yc = A.rib_top + 0.085 - 0.075 * dc + 0.025 * np.sin(np.pi * np.clip(dc, 0, 1))
        gap = 1.0
        f = clav_breaks.get(side)
        if f is not None:
            b = float(f.params.get("break_at", 0.5))
            yc = yc + float(f.params.get("step", 1.2)) * 0.014 * A.scale * _soft(dc - b, 0.01)
            gap = 1.0 - np.exp(-(((dc - b) / (float(f.params.get("gap", 0.012)) / (0.3 * A.scale))) ** 2))
        clav = np.exp(-(((Y - yc) / (0.014 * A.scale)) ** 2)) * _soft(dc, 0.02) * _soft(1.0 - dc, 0.03) * onside
        out += 0.16 * clav * gap * body
    return out


# --- finding painters: each returns the density it adds ----------------------------------


def _paint_effusion(f: Finding, X, Y, A, lungs, S):
    """Fluid fills the aerated lung below a meniscus that rises towards the chest wall."""
    out = np.zeros_like(X)
    for side in _sides(f.side):
        lg = lungs[side]
        h = float(f.params.get("height", 0.4))                 # fraction of the lung height
        level_lat = lg.base - h * (lg.base - lg.top)
        meniscus = float(f.params.get("meniscus", 0.3)) * h * (lg.base - lg.top)
        level = level_lat + meniscus * np.clip(1.0 - lg.ulat, 0.0, 1.6) / 1.6
        fluid = _soft(Y - level, 0.012)
        out += float(f.params.get("density", 1.0)) * fluid * lg.mask * (lg.depth + 0.1)
    return out


def _lobe_point(lg: _Lung, zone: str, du: float, dv: float) -> tuple[float, float]:
    v = {"upper": -0.35, "middle": 0.15, "lower": 0.55}[zone] + dv
    return lg.point(0.2 + du, v)


def _paint_airspace(f: Finding, X, Y, A, lungs, S):
    """Lung Opacity (patchy), Consolidation (dense, air bronchograms), Pneumonia (between)."""
    out = np.zeros_like(X)
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch = _field(rng, 9, S)
    bronch = _field(rng, 15, S)
    kind = f.observation
    amp = float(f.params.get("amp", 0.3))
    for side in _sides(f.side):
        lg = lungs[side]
        cxp, cyp = _lobe_point(lg, f.location or "lower", float(f.params.get("du", 0.0)), float(f.params.get("dv", 0.0)))
        rx = float(f.params.get("rx", 0.08)) * A.scale
        ry = float(f.params.get("ry", 0.07)) * A.scale
        d = np.sqrt(((X - cxp) / rx) ** 2 + ((Y - cyp) / ry) ** 2)
        if kind == CON:
            blob = _soft(1.0 - d + 0.12 * patch, 0.1)
            texture = 0.9 + 0.1 * patch - 0.3 * np.exp(-((bronch / 0.12) ** 2)) * _soft(0.7 - d, 0.1)
        elif kind == PNA:
            blob = _soft(1.0 - d + 0.3 * patch, 0.18)
            texture = np.clip(0.7 + 0.3 * patch, 0.0, 1.0)
        else:
            blob = np.exp(-1.2 * d ** 2)
            texture = np.clip(0.5 + 0.5 * patch, 0.0, 1.0)
        out += amp * blob * texture * lg.mask * (lg.depth + 0.05)
    return out


def _paint_lesion(f: Finding, X, Y, A, lungs, S):
    """A round nodule, or a larger lobulated mass."""
    lg = lungs[f.side or "right"]
    cxp, cyp = lg.point(float(f.params.get("u", 0.1)), float(f.params.get("v", -0.2)))
    rad = float(f.params.get("radius", 0.025))
    ang = np.arctan2(Y - cyp, X - cxp)
    lob = float(f.params.get("lobulation", 0.0))
    rr = rad * (1.0 + lob * np.cos(3 * ang + float(f.params.get("phase", 0.0))))
    d = np.sqrt((X - cxp) ** 2 + (Y - cyp) ** 2)
    core = _soft(rr - d, 0.004)
    return float(f.params.get("amp", 0.3)) * core * (0.85 + 0.15 * np.clip(1 - d / rr, 0, 1)) * (0.3 + 0.7 * lg.ell)


def _paint_edema(f: Finding, X, Y, A, lungs, S):
    """Bilateral perihilar haze (the interstitial markings are coarsened in render_image)."""
    out = np.zeros_like(X)
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch = _field(rng, 8, S)
    amp = float(f.params.get("amp", 0.2))
    for lg in lungs.values():
        hx, hy = lg.lx - lg.sgn * 0.45 * lg.a, lg.ly + 0.05 * lg.b
        g = np.exp(-(((X - hx) / (0.8 * lg.a)) ** 2 + ((Y - hy) / (0.6 * lg.b)) ** 2))
        out += amp * g * (0.8 + 0.2 * patch) * lg.mask
    return out


def _paint_atelectasis(f: Finding, X, Y, A, lungs, S):
    """A thin plate-like band just above the hemidiaphragm."""
    out = np.zeros_like(X)
    for i, side in enumerate(_sides(f.side)):
        lg = lungs[side]
        cxp, _ = lg.point(float(f.params.get("u", 0.15)), 0.6)
        cyp = lg.base - float(f.params.get("above", 0.1)) * A.scale
        ang = float(f.params.get("tilt", 0.1)) * (1 if i == 0 else -1) * lg.sgn
        length = float(f.params.get("length", 0.15)) * A.scale
        th = float(f.params.get("thickness", 0.009))
        tx, ty = math.cos(ang), math.sin(ang)
        along = (X - cxp) * tx + (Y - cyp) * ty
        perp = -(X - cxp) * ty + (Y - cyp) * tx
        band = np.exp(-((perp / th) ** 2)) * _soft(length / 2 - np.abs(along), 0.012)
        out += float(f.params.get("amp", 0.35)) * band * lg.mask
    return out


def _paint_pleural_other(f: Finding, X, Y, A, lungs, S):
    """Pleural thickening: a soft-tissue rim along the lateral lung edge, or an apical cap."""
    lg = lungs[f.side or "right"]
    t = float(f.params.get("thickness", 0.025)) / lg.a
    if f.location == "apical":
        where = _soft(-lg.v - 0.6, 0.08)
    else:
        where = _soft(lg.ulat - 0.3, 0.08) * _soft(0.5 - lg.v, 0.08) * _soft(lg.v + 0.7, 0.08)
    band = _soft(lg.r - (1.0 - t), 0.15 * t) * where * lg.mask
    return float(f.params.get("amp", 1.0)) * band * (lg.depth + 0.05)


_PAINTERS = {
    EFF: _paint_effusion,
    OPA: _paint_airspace,
    CON: _paint_airspace,
    PNA: _paint_airspace,
    LES: _paint_lesion,
    EDE: _paint_edema,
    ATE: _paint_atelectasis,
    PLO: _paint_pleural_other,
}


def _draw_devices(f: Finding, A: Anatomy, lungs, S: int) -> np.ndarray:
    """Support devices as an antialiased coverage map in [0, 1] (drawn at 2x, box-reduced)."""
    k = 2
    size = S * k
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lw = max(2, int(round(size / 80)))

    def line(points, width=lw, level=255):
        draw.line(_to_pixels(points, A, size), fill=level, width=width, joint="curve")

    cx = A.cx
    carina = A.lung_cy - 0.55 * A.lung_b
    rl, ll = lungs["right"], lungs["left"]
    for dev in f.params.get("devices", []):
        if dev == "ett":
            tip = carina - 0.05
            line([(cx + 0.003, -0.02), (cx + 0.003, tip)], width=lw + 1)
        elif dev == "ng":
            pts = [(cx - 0.006, -0.02), (cx - 0.006, carina + 0.05)] + _bezier(
                (cx - 0.006, carina + 0.05), (cx + 0.0, ll.base + 0.02), (ll.lx - 0.1 * ll.a, ll.base + 0.06))
            line(pts, width=lw)
        elif dev == "cvc":
            pts = _bezier((cx - 0.13, 0.03), (cx - 0.05, 0.10), (cx - 0.035, carina + 0.06))
            line(pts, width=lw)
        elif dev == "picc":
            pts = [(1.02, 0.22)] + _bezier((0.88, 0.2), (cx + 0.08, 0.16), (cx - 0.03, carina + 0.07))
            line(pts, width=lw)
        elif dev == "pacemaker":
            bx, by = cx + 0.24 * A.scale, 0.13
            box = _to_pixels([(bx - 0.045, by - 0.03), (bx + 0.045, by + 0.03)], A, size)
            (x0, y0), (x1, y1) = box
            draw.rounded_rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                                   radius=size * 0.012, fill=255)
            hx = cx + A.heart_dx
            lead = _bezier((bx - 0.03, by + 0.01), (cx - 0.02, carina - 0.08), (cx - 0.01, carina + 0.08)) + \
                _bezier((cx - 0.01, carina + 0.08), (cx, A.lung_cy + 0.2 * A.lung_b), (hx + 0.06, A.lung_cy + 0.45 * A.lung_b))
            line(lead, width=max(2, lw - 1))
            lead2 = _bezier((bx - 0.03, by - 0.005), (cx - 0.03, carina - 0.06), (cx - 0.03, carina + 0.12))
            line(lead2, width=max(2, lw - 1))
        elif dev.startswith("chest_tube"):
            side = dev.split("_")[-1]
            lg = lungs[side]
            entry = lg.point(1.15, 0.5)
            mid = lg.point(0.75, 0.0)
            tip = lg.point(0.2, -0.8)
            line([(entry[0] + lg.sgn * 0.05, entry[1] + 0.02)] + _bezier(entry, mid, tip), width=lw + 2)
        elif dev == "ecg":
            for j, (ex, ey) in enumerate(f.params.get("ecg_at", [])):
                r = 0.022
                (x0, y0), = _to_pixels([(ex, ey)], A, size)
                rr = r * size
                draw.ellipse([x0 - rr, y0 - rr, x0 + rr, y0 + rr], outline=255, width=lw)
                wire_end = (1.02 if ex > cx else -0.02, ey + 0.1 + 0.05 * j)
                line(_bezier((ex, ey + r), ((ex + wire_end[0]) / 2, ey + 0.12), wire_end), width=max(1, lw - 1), level=200)
    arr = np.asarray(canvas.reduce(k), dtype=np.float32) / 255.0
    return arr
