"""Built-in synthetic chest X-rays with radiology reports, CheXpert labels and VQA questions.

This is the project's default data set: the demo, the tests and the benchmarks train on it.
Everything is deterministic and derived from ``(seed, index)`` only (no global random state),
so a case is the same whether it is made alone (:func:`synthesize_case`) or inside
:func:`generate_synthetic`, whatever ``n`` is, and the same seed gives byte-identical files.
(Text, labels, questions and splits are exact everywhere; pixels are computed in floating
point, so a different CPU / numpy build could in rare pixels round one gray level apart.)
The ``image_size`` only changes the resolution: findings, reports and questions of a case
are the same at every size.

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
* **Pneumothorax** (left / right; small / moderate / large) - an apical-lateral rim of the
  hemithorax with no lung markings, darker than the lung, bounded by a thin bright visceral
  pleural edge; the collapsed lung inside it is denser the larger the pneumothorax.
* **Lung Opacity** - a patchy, moderately dense region in a lobe (or both bases).
* **Consolidation** - a dense, more uniform region in a lobe with faint lucent air
  bronchograms.
* **Pneumonia** - drawn like a patchy consolidation in a lobe.  Pneumonia is also often
  *reported* (mostly as uncertain: "cannot exclude pneumonia", "concerning for pneumonia")
  alongside a drawn opacity or consolidation.
* Lobes: upper / middle / lower zones of each lung (the left "middle" is the lingula); left
  middle and lower findings sit lateral to the heart so that they stay visible.
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
reported as positive (1) is drawn clearly.  The exception is a drawn Pneumonia reported as
uncertain: the opacity itself is certain (drawn clearly, often also reported as a positive
Lung Opacity), only its cause is not.  ``SyntheticCase.drawn`` keeps what is drawn (with the
exact parameters), ``SyntheticCase.labels`` what the report says, and :func:`render_image`
redraws a patient with any list of findings.

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
* Observation keywords: Cardiomegaly - cardiomegaly, heart, cardiac (silhouette),
  cardiomediastinal; Enlarged Cardiomediastinum - mediastinum / mediastinal,
  cardiomediastinal; Lung Lesion - nodule, mass; Lung Opacity - opacity / opacification /
  opacities, airspace disease; Edema - edema, vascular congestion; Consolidation -
  consolidation; Pneumonia - pneumonia, infection; Atelectasis - atelectasis; Pneumothorax -
  pneumothorax, PTX; Pleural Effusion - effusion, pleural fluid; Pleural Other - pleural
  thickening, pleural scarring; Fracture - fracture; Support Devices - tube, ETT, line,
  PICC, catheter, pacemaker, leads, device.  Cue words: negation - no, without, normal,
  unremarkable, not seen, not widened; uncertainty - possible / possibly, questionable, may
  represent, cannot exclude, cannot be excluded, concerning for, suspicious for.
* Avoided on purpose: "CHF" / "heart failure" (the CheXpert labeler turns them into an
  uncertain Cardiomegaly), "nodular opacity" (a lesion *and* an opacity), and words the
  labeler counts as unlabeled abnormalities ("density", "prominence", "degenerative"...;
  "blunting" only appears next to a stated effusion).
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

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import umask_mode
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
# so that e.g. removing a finding never changes the anatomy or the noise.  Image texture and
# noise come from ``Anatomy.texture_seed`` (drawn in the anatomy stream).
_ANATOMY, _FINDINGS, _TEXT, _QUESTIONS = 0, 1, 2, 4


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
    """What :func:`generate_synthetic` wrote: ``counts`` records per split, ``label_counts``
    per observation the number of records labelled ``"1"``, ``"0"``, ``"-1"`` and ``"blank"``."""

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
        lung_b=0.335 * s * float(rng.uniform(0.95, 1.04)),
        lung_cy=float(0.46 + rng.normal(0, 0.012)),
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
        gamma=round(float(rng.uniform(0.9, 1.25)), 3),
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
    t = np.tanh(np.asarray(d, dtype=np.float32) * np.float32(1.0 / w))
    t *= 0.5
    t += 0.5
    return t


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Rows: smooth (Gaussian RBF) interpolation weights from ``cells + 1`` grid knots to
    ``size`` pixel centres; the knot spacing is fixed in image units, so a field looks the
    same at every image size."""
    x = (np.arange(size, dtype=np.float64) + 0.5) / size
    knots = np.linspace(-0.5 / cells, 1 + 0.5 / cells, cells + 2)
    w = np.exp(-(((x[:, None] - knots[None, :]) * cells / 0.7) ** 2))
    w /= np.sqrt((w ** 2).sum(axis=1, keepdims=True))     # unit variance per pixel
    return w


def _field(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance at every pixel."""
    g = rng.standard_normal((cells + 2, cells + 2))
    w = _interp_matrix(size, cells)
    return (w @ g @ w.T).astype(np.float32)   # (float64 products: much faster than float32 here)


@lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return (np.linspace(0.0, 1.0, 4096) ** gamma).astype(np.float32)


@lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    px, py = np.meshgrid(c, c)
    return px, py


class _Grid:
    """Anatomical coordinates of every pixel (the patient is slightly rotated)."""

    def __init__(self, A: Anatomy, S: int):
        px, py = _pixel_grid(S)
        self.S, self.A = S, A
        self.ca, self.sa = math.cos(A.angle), math.sin(A.angle)
        ca, sa = np.float32(self.ca), np.float32(self.sa)
        self.X = 0.5 + ca * (px - 0.5) - sa * (py - 0.5)
        self.Y = 0.5 + sa * (px - 0.5) + ca * (py - 0.5)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel rows/columns covering the anatomical rectangle [x0, x1] x [y0, y1]."""
        xs, ys = [], []
        for qx in (x0, x1):
            for qy in (y0, y1):
                xs.append(0.5 + self.ca * (qx - 0.5) + self.sa * (qy - 0.5))
                ys.append(0.5 - self.sa * (qx - 0.5) + self.ca * (qy - 0.5))
        S = self.S

        def rng(lo: float, hi: float) -> slice:
            return slice(min(max(int(math.floor(lo * S)) - 1, 0), S), min(max(int(math.ceil(hi * S)) + 1, 0), S))

        return rng(min(ys), max(ys)), rng(min(xs), max(xs))


class _Lung:
    """Geometry of one lung, computed inside its bounding box ``self.box`` (rows, cols).

    ``ulat`` runs from the lung centre towards the lateral chest wall (1 at the edge), ``v``
    from the centre downwards (-1 at the apex), ``r`` is the normalised radius (1 on the
    outline; the lower half is squarer so the lung is widest at its base).  ``mask`` is the
    aerated lung (later reduced where the mediastinum and heart cover it), ``depth`` the
    density its air removes.
    """

    def __init__(self, g: _Grid, A: Anatomy, side: str, dome_raise: float, ew: float):
        s = _sgn(side)
        self.side, self.sgn = side, s
        self.lx = A.cx + s * A.lung_dx
        self.ly = A.lung_cy
        self.a = A.lung_a * (0.96 if side == "left" else 1.0)
        self.b = A.lung_b
        self.top = self.ly - self.b
        self.box = g.box(self.lx - 1.12 * self.a, self.lx + 1.12 * self.a, self.top - 0.02, self.ly + self.b + 0.03)
        X, Y = g.X[self.box], g.Y[self.box]
        self.X, self.Y = X, Y
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
        self.mask = self.ell * self.below
        self.depth = 0.4 * (0.75 + 0.25 * np.sqrt(np.clip(1 - self.r ** 2, 0, 1)))
        self.depth *= 1.0 - 0.12 * np.clip(self.v, 0, 1)      # bases a little denser

    def point(self, ulat: float, v: float) -> tuple[float, float]:
        """Image coordinates of a point given in lung coordinates."""
        y = self.ly + v * self.b
        t = min(max((y - self.top) / (1.9 * self.b), 0.0), 1.0)
        return self.lx + self.sgn * ulat * self.a * (0.6 + 0.45 * math.sqrt(t)), y


def _dome_line(A: Anatomy, X: np.ndarray, dome_raise: dict[str, float]) -> np.ndarray:
    """Height of the diaphragm (the higher of the two domes) at every X."""
    out = None
    for side in ("right", "left"):
        s = _sgn(side)
        a = A.lung_a * (0.96 if side == "left" else 1.0)
        lx = A.cx + s * A.lung_dx
        base = A.lung_cy + 0.93 * A.lung_b - dome_raise[side] - (A.right_dome_up if side == "right" else 0.0)
        d = base - A.dome_h * np.clip(1 - ((X - (lx - s * 0.2 * a)) / (1.1 * a)) ** 2, 0, 1) ** 0.7
        out = d if out is None else np.minimum(out, d)
    assert out is not None  # both sides were drawn
    return out


def _to_pixels(points: Sequence[tuple[float, float]], A: Anatomy, size: float) -> list[tuple[float, float]]:
    """Anatomical normalised coordinates -> pixel coordinates (inverse of the grid rotation)."""
    c, s = math.cos(A.angle), math.sin(A.angle)
    out = []
    for qx, qy in points:
        px = 0.5 + c * (qx - 0.5) + s * (qy - 0.5)
        py = 0.5 - s * (qx - 0.5) + c * (qy - 0.5)
        out.append((px * size, py * size))
    return out


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
            n: int = 24) -> list[tuple[float, float]]:
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
    g = _Grid(A, S)
    X, Y = g.X, g.Y
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
    ys = np.clip((Y + 0.04) * 5.0, 0.0, 1.0)
    W = (0.08 + 0.40 * np.sqrt(ys * (2.0 - ys))) * A.scale          # neck widening into shoulders
    body = _soft(W - dxm, 0.01)
    thick = np.sqrt(np.clip(1.0 - (dxm / (W + 1e-3)) ** 2, 0.0, 1.0))
    D = body * (0.30 + 0.26 * thick + 0.015 * n_tissue)

    lungs = {side: _Lung(g, A, side, dome_raise[side], ew) for side in ("right", "left")}
    lung_top = A.lung_cy - A.lung_b

    # abdomen below the diaphragm is denser than the chest wall
    cage_w = A.lung_dx + 1.05 * A.lung_a
    rows, cols = g.box(A.cx - cage_w - 0.06, A.cx + cage_w + 0.06, lung_top, 1.1)
    dia = _dome_line(A, X, dome_raise)
    cage = _soft(cage_w - dxm[rows, cols], 0.03)
    D[rows, cols] += 0.1 * _soft(Y[rows, cols] - dia[rows, cols], 0.008) * body[rows, cols] * cage

    # mediastinum (a column between the lungs, widened superiorly for ECM) and heart
    carina = A.lung_cy - 0.5 * A.lung_b
    hs = heart_scale
    hcx = A.cx + A.heart_dx * (1.0 + 0.8 * (hs - 1.0))
    hcy = A.lung_cy + 0.55 * A.lung_b
    hw, hh = A.heart_hw * hs, A.heart_hh * (1.0 + 0.3 * (hs - 1.0))
    half = max(A.med_hw * med_scale + 0.03, hcx + hw - A.cx, A.cx - (hcx - hw)) + 0.02
    mr, mc = g.box(A.cx - half, A.cx + half, -0.1, 1.1)
    Xm, Ym = X[mr, mc], Y[mr, mc]
    up = _soft(Ym - 0.03, 0.02)
    widen = 1.0 + (med_scale - 1.0) * np.exp(-(((Ym - carina) / 0.12) ** 2))
    knob = 0.02 * np.exp(-(((Ym - (carina - 0.05)) / 0.03) ** 2))
    right_edge = A.cx + (A.med_hw * widen + knob)          # image right = patient left (aortic knob)
    left_edge = A.cx - (A.med_hw * 0.92 * widen)
    med = np.zeros_like(X)
    med[mr, mc] = _soft(np.minimum(right_edge - Xm, Xm - left_edge), ew) * up
    rh = np.sqrt(((Xm - hcx) / hw) ** 2 + ((Ym - hcy) / hh) ** 2)
    heart_m = _soft((1.0 - rh) * hw, ew)
    # the upper heart border tapers into the mediastinum (great vessels)
    t = np.clip((Ym - (hcy - 1.25 * hh)) / (1.25 * hh), 0.0, 1.0)
    xr = A.cx + A.med_hw + (hcx + hw * 0.97 - A.cx - A.med_hw) * np.sqrt(t)
    xl = A.cx - 0.92 * A.med_hw - (A.cx - 0.92 * A.med_hw - (hcx - hw * 0.97)) * t ** 0.7
    cone = _soft(np.minimum(xr - Xm, Xm - xl), ew) * _soft(Ym - (hcy - 1.25 * hh), ew) * _soft(hcy - Ym, ew)
    heart = np.zeros_like(X)
    heart[mr, mc] = np.maximum(heart_m, cone)

    # lungs: air removes density; the mediastinum and the heart cover the medial lung
    lung_any = np.zeros_like(X)
    for lg in lungs.values():
        b = lg.box
        lg.mask *= (1.0 - med[b]) * (1.0 - 0.96 * heart[b])
        D[b] -= lg.depth * lg.mask
        np.maximum(lung_any[b], lg.mask, out=lung_any[b])
    above = _soft(dia[mr, mc] + 0.01 - Ym, 0.01)
    D[mr, mc] += (0.06 * med[mr, mc] + 0.1 * heart[mr, mc] * (1.0 - med[mr, mc])) * above * _soft(
        cage_w - dxm[mr, mc], 0.03)

    # spine and trachea
    D[mr, mc] += 0.06 * _soft(0.028 * A.scale - dxm[mr, mc], ew) * (
        0.8 + 0.2 * np.cos(2 * np.pi * (Ym - A.rib_top) / A.rib_gap)) * up
    trachea = _soft(0.012 * A.scale - np.abs(Xm - A.cx - 0.003), ew) * _soft(carina - Ym, 0.01) * _soft(Ym, 0.02)
    D[mr, mc] -= 0.12 * trachea

    # gastric bubble under the left hemidiaphragm
    if A.bubble > 0:
        lg = lungs["left"]
        bx, by = lg.lx - 0.15 * lg.a, float(lg.base) + 0.02
        br, bc = g.box(bx - 2 * A.bubble, bx + 2 * A.bubble, by - 2 * A.bubble, by + 2 * A.bubble)
        Xb, Yb = X[br, bc], Y[br, bc]
        rb = np.sqrt(((Xb - bx) / (1.4 * A.bubble)) ** 2 + ((Yb - by) / A.bubble) ** 2)
        D[br, bc] -= 0.14 * _soft(1.0 - rb, 0.15) * _soft(Yb - (dia[br, bc] + 0.012), 0.004)

    # --- pneumothorax: an apical-lateral rim without lung markings ------------------------
    no_marks = {side: 0.0 for side in lungs}
    for f in by_obs.get(PTX, []):
        for side in _sides(f.side):
            lg = lungs[side]
            r0 = float(f.params.get("r0", 0.7))
            sector = _soft(lg.ulat * 0.9 - lg.v - 0.1, 0.25)            # apical and lateral
            rim = _soft((lg.r - r0) * lg.a, 0.004) * sector * lg.mask
            no_marks[side] = np.maximum(no_marks[side], rim)
            edge = np.exp(-(((lg.r - r0) * lg.a / 0.0045) ** 2)) * sector * lg.mask
            # the collapsed lung is denser the more it has collapsed
            collapsed = _soft((r0 - lg.r) * lg.a, 0.004) * lg.mask * max(0.0, 0.3 * (0.85 - r0))
            D[lg.box] += (float(f.params.get("edge", 0.16)) * edge - float(f.params.get("extra_air", 0.1)) * rim
                          + collapsed)

    # --- lung markings and hila ----------------------------------------------------------
    marks_gain = 1.0
    for f in by_obs.get(EDE, []):
        marks_gain = max(marks_gain, float(f.params.get("marks_gain", 1.8)))
    for lg in lungs.values():
        b = lg.box
        hx, hy = lg.lx - lg.sgn * 0.55 * lg.a, lg.ly - 0.02 * lg.b
        dist = np.sqrt((lg.X - hx) ** 2 + ((lg.Y - hy) * 0.7) ** 2)
        # vessels radiate from the hilum (wobbling spokes that fade out) plus fine texture
        ox = hx - lg.sgn * 0.06
        theta = np.arctan2(lg.Y - hy, (lg.X - ox) * lg.sgn)
        spokes = np.sin(8.0 * theta + 1.2 * n_mark1[b])
        ridge = 0.8 * np.exp(-((spokes * 2.5) ** 2)) * _soft(dist - 0.03, 0.015)
        ridge += 0.3 * np.exp(-((n_mark2[b] * 4.5) ** 2))
        keep = 1.0 - no_marks[lg.side]
        weight = lg.mask * (0.2 + 0.8 * np.exp(-dist * 10.0)) * keep
        D[b] += (0.15 * marks_gain * ridge + 0.05) * weight + 0.14 * np.exp(-((dist * 22.0) ** 2)) * lg.ell * keep

    # --- ribs and clavicles ----------------------------------------------------------------
    _bones(D, g, A, lungs, lung_any, body, by_obs.get(FRA, []), no_marks)

    # --- findings ------------------------------------------------------------------------
    for f in findings:
        painter = _PAINTERS.get(f.observation)
        if painter is not None:
            painter(f, D, g, A, lungs)

    # --- exposure ------------------------------------------------------------------------
    img = A.brightness + A.contrast * D + 0.03 * n_low * body
    grain = np.random.default_rng([A.texture_seed & 0xFFFFFFFF, S]).standard_normal((S, S), dtype=np.float32)
    img += 0.012 * grain
    img = _gamma_lut(round(A.gamma, 3))[(np.clip(img, 0.0, 1.0) * 4095.0 + 0.5).astype(np.int32)]

    for f in by_obs.get(SD, []):
        dev = _draw_devices(f, A, lungs, S)
        img = img * (1.0 - dev) + np.float32(0.97) * dev
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _bones(D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung], lung_any: np.ndarray, body: np.ndarray,
           fractures: Sequence[Finding], no_marks: Mapping[str, np.ndarray | float]) -> None:
    """Posterior ribs (10 per side), fainter anterior ribs, clavicles; rib/clavicle fractures."""
    th = 0.0115 * A.scale
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
        low = 0.5 * (lungs["left"].base + lungs["right"].base) + 0.03
        x0, x1 = sorted((A.cx, A.cx + s * 1.06 * span))
        b = g.box(x0 - 0.01, x1 + 0.01, A.rib_top - 0.08, low + 0.06)
        X, Y = g.X[b], g.Y[b]
        pm = np.zeros_like(X)
        pm_full = no_marks[side]
        if isinstance(pm_full, np.ndarray):
            tmp = np.zeros_like(g.X)
            tmp[lg.box] = pm_full
            pm = tmp[b]
        visible = body[b] * (0.3 + 0.7 * lung_any[b]) * (1.0 - 0.3 * pm) * _soft(low - Y, 0.03)
        dxn = np.maximum((X - A.cx) * s / span, 0.0)  # 0 at the spine, 1 at the chest wall
        lat = _soft(dxn - 0.07, 0.02) * _soft(1.04 - dxn, 0.025)
        # all ten posterior ribs at once: rib k follows
        #   y = rib_top + k * gap - 0.07 * dxn + (0.12 + 0.012 * k) * dxn ** 2
        # so the (fractional) rib number of every pixel has a closed form
        bend = dxn * dxn
        period = A.rib_gap + 0.012 * bend
        kc = (Y - A.rib_top + 0.07 * dxn - 0.12 * bend) / period
        kr = np.clip(np.round(kc), 0, 9)
        band = np.exp(-(((kc - kr) * period / th) ** 2))
        broken = [k for (sd, k) in rib_breaks if sd == side]
        for k in broken:
            band *= kr != k
        out = A.rib_amp * band * lat * visible
        for k in broken:
            f = rib_breaks[(side, k)]
            y0 = A.rib_top + k * A.rib_gap
            curve = 0.12 + 0.012 * k
            yc = y0 - 0.07 * dxn + curve * bend
            bk = float(f.params.get("break_at", 0.65))
            yc = yc + float(f.params.get("step", 1.2)) * th * _soft(dxn - bk, 0.004)
            gap = 1.0 - np.exp(-(((dxn - bk) * span / float(f.params.get("gap", 0.012))) ** 2))
            bx = A.cx + s * bk * span
            by = y0 - 0.07 * bk + curve * bk ** 2
            callus = float(f.params.get("callus", 0.06)) * np.exp(-(((X - bx) ** 2 + (Y - by) ** 2) / (2.2 * th) ** 2))
            out += A.rib_amp * np.exp(-(((Y - yc) / th) ** 2)) * lat * gap * visible + callus * body[b]
        # anterior ribs: from the lateral ends running down and medially, fading medially
        ka = (Y - A.rib_top - 0.14 - 0.16 * (1.0 - dxn)) / (A.rib_gap + 0.012)
        kar = np.clip(np.round(ka), 0, 9)
        ant = _soft(dxn - 0.4, 0.08) * _soft(1.0 - dxn, 0.03)
        out += 0.4 * A.rib_amp * np.exp(-(((ka - kar) * (A.rib_gap + 0.012) / (1.3 * th)) ** 2)) * ant * visible
        D[b] += out
        # clavicle: from the sternal notch laterally and slightly upwards
        x0, x1 = sorted((A.cx, A.cx + s * 0.36 * A.scale))
        b = g.box(x0 - 0.01, x1 + 0.01, A.rib_top - 0.02, A.rib_top + 0.15)
        X, Y = g.X[b], g.Y[b]
        dc = (np.abs(X - A.cx) - 0.04 * A.scale) / (0.3 * A.scale)
        yc = A.rib_top + 0.1 - 0.08 * dc + 0.025 * np.sin(np.pi * np.clip(dc, 0, 1))
        gap = 1.0
        fc = clav_breaks.get(side)
        if fc is not None:
            bk = float(fc.params.get("break_at", 0.5))
            yc = yc + float(fc.params.get("step", 1.2)) * 0.014 * A.scale * _soft(dc - bk, 0.01)
            gap = 1.0 - np.exp(-(((dc - bk) * 0.3 * A.scale / float(fc.params.get("gap", 0.012))) ** 2))
        clav = np.exp(-(((Y - yc) / (0.014 * A.scale)) ** 2)) * _soft(dc, 0.02) * _soft(1.0 - dc, 0.03)
        D[b] += 0.16 * clav * gap * body[b] * _soft((X - A.cx) * s, 0.005)


# --- finding painters: each adds its density to D in place --------------------------------


def _paint_effusion(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Fluid fills the aerated lung below a meniscus that rises towards the chest wall."""
    for side in _sides(f.side):
        lg = lungs[side]
        h = float(f.params.get("height", 0.4))                 # fraction of the lung height
        level_lat = lg.base - h * (lg.base - lg.top)
        meniscus = float(f.params.get("meniscus", 0.3)) * h * (lg.base - lg.top)
        level = level_lat + meniscus * np.clip(1.0 - lg.ulat, 0.0, 1.6) / 1.6
        fluid = _soft(lg.Y - level, 0.012)
        D[lg.box] += float(f.params.get("density", 1.0)) * fluid * lg.mask * (lg.depth + 0.1)


def _lobe_point(lg: _Lung, zone: str, du: float, dv: float) -> tuple[float, float]:
    v = {"upper": -0.4, "middle": 0.05, "lower": 0.38}[zone] + dv
    # keep the left middle/lower zones lateral to the heart, where they can be seen
    u = 0.28 + (0.2 if lg.side == "left" and zone != "upper" else 0.0)
    return lg.point(u + du, v)


def _paint_airspace(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Lung Opacity (patchy), Consolidation (dense, air bronchograms), Pneumonia (between)."""
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch_full = _field(rng, 9, g.S)
    bronch_full = _field(rng, 15, g.S)
    kind = f.observation
    amp = float(f.params.get("amp", 0.3))
    for side in _sides(f.side):
        lg = lungs[side]
        patch, bronch = patch_full[lg.box], bronch_full[lg.box]
        cxp, cyp = _lobe_point(lg, f.location or "lower", float(f.params.get("du", 0.0)),
                               float(f.params.get("dv", 0.0)))
        rx = float(f.params.get("rx", 0.08)) * A.scale
        ry = float(f.params.get("ry", 0.07)) * A.scale
        d = np.sqrt(((lg.X - cxp) / rx) ** 2 + ((lg.Y - cyp) / ry) ** 2)
        if kind == CON:
            blob = _soft(1.0 - d + 0.3 * np.clip(patch, -1.5, 1.5), 0.2)
            # air bronchograms: thin lucent branches running away from the hilum
            theta = np.arctan2(lg.Y - (lg.ly - 0.1 * lg.b), (lg.X - (lg.lx - lg.sgn * 0.9 * lg.a)) * lg.sgn)
            air = np.exp(-((np.sin(14.0 * theta + 0.8 * bronch) * 3.0) ** 2)) * _soft(0.75 - d, 0.15)
            texture = 0.9 + 0.1 * np.clip(patch, -1.5, 1.5) - 0.22 * air
        elif kind == PNA:
            blob = _soft(1.0 - d + 0.25 * np.clip(patch, -1.5, 1.5), 0.18)
            texture = np.clip(0.75 + 0.25 * patch, 0.45, 1.0)
        else:
            blob = np.exp(-1.2 * d ** 2)
            texture = np.clip(0.55 + 0.4 * patch, 0.25, 1.0)
        D[lg.box] += amp * blob * texture * lg.mask * (lg.depth + 0.05)


def _paint_lesion(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """A round nodule, or a larger lobulated mass."""
    lg = lungs[f.side or "right"]
    cxp, cyp = lg.point(float(f.params.get("u", 0.1)), float(f.params.get("v", -0.2)))
    rad = float(f.params.get("radius", 0.025))
    ang = np.arctan2(lg.Y - cyp, lg.X - cxp)
    lob = float(f.params.get("lobulation", 0.0))
    rr = rad * (1.0 + lob * np.cos(3 * ang + float(f.params.get("phase", 0.0))))
    d = np.sqrt((lg.X - cxp) ** 2 + (lg.Y - cyp) ** 2)
    core = _soft(rr - d, 0.004)
    amp = float(f.params.get("amp", 0.3))
    D[lg.box] += amp * core * (0.85 + 0.15 * np.clip(1 - d / rr, 0, 1)) * (0.3 + 0.7 * lg.ell)


def _paint_edema(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Bilateral perihilar haze (the interstitial markings are coarsened in render_image)."""
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch = _field(rng, 8, g.S)
    amp = float(f.params.get("amp", 0.2))
    for lg in lungs.values():
        hx, hy = lg.lx - lg.sgn * 0.45 * lg.a, lg.ly + 0.05 * lg.b
        gauss = np.exp(-(((lg.X - hx) / (0.8 * lg.a)) ** 2 + ((lg.Y - hy) / (0.6 * lg.b)) ** 2))
        D[lg.box] += amp * gauss * (0.8 + 0.2 * patch[lg.box]) * lg.mask


def _paint_atelectasis(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """A thin plate-like band just above the hemidiaphragm."""
    for i, side in enumerate(_sides(f.side)):
        lg = lungs[side]
        cxp, _ = lg.point(float(f.params.get("u", 0.15)), 0.6)
        cyp = lg.base - float(f.params.get("above", 0.1)) * A.scale
        ang = float(f.params.get("tilt", 0.1)) * (1 if i == 0 else -1) * lg.sgn
        length = float(f.params.get("length", 0.15)) * A.scale
        th = float(f.params.get("thickness", 0.009))
        tx, ty = math.cos(ang), math.sin(ang)
        along = (lg.X - cxp) * tx + (lg.Y - cyp) * ty
        perp = -(lg.X - cxp) * ty + (lg.Y - cyp) * tx
        band = np.exp(-((perp / th) ** 2)) * _soft(length / 2 - np.abs(along), 0.012)
        D[lg.box] += float(f.params.get("amp", 0.35)) * band * lg.mask


def _paint_pleural_other(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Pleural thickening: a soft-tissue rim along the lateral lung edge, or an apical cap."""
    lg = lungs[f.side or "right"]
    t = float(f.params.get("thickness", 0.025)) / lg.a
    if f.location == "apical":
        where = _soft(-lg.v - 0.6, 0.08)
    else:
        where = _soft(lg.ulat - 0.3, 0.08) * _soft(0.5 - lg.v, 0.08) * _soft(lg.v + 0.7, 0.08)
    band = _soft(lg.r - (1.0 - t), 0.15 * t) * where * lg.mask
    D[lg.box] += float(f.params.get("amp", 1.0)) * band * (lg.depth + 0.05)


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


def _draw_devices(f: Finding, A: Anatomy, lungs: dict[str, _Lung], S: int) -> np.ndarray:
    """Support devices as an antialiased coverage map in [0, 1] (drawn at 2x, box-reduced)."""
    k = 2
    size = S * k
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lw = max(2, int(round(size / 80)))

    def line(points: Sequence[tuple[float, float]], width: int = lw, level: int = 255) -> None:
        draw.line(_to_pixels(points, A, size), fill=level, width=width, joint="curve")

    cx = A.cx
    carina = A.lung_cy - 0.5 * A.lung_b
    ll = lungs["left"]
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
                _bezier((cx - 0.01, carina + 0.08), (cx, A.lung_cy + 0.2 * A.lung_b),
                        (hx + 0.06, A.lung_cy + 0.45 * A.lung_b))
            line(lead, width=max(2, lw - 1))
            lead2 = _bezier((bx - 0.03, by - 0.005), (cx - 0.03, carina - 0.06), (cx - 0.03, carina + 0.12))
            line(lead2, width=max(2, lw - 1))
        elif dev.startswith("chest_tube"):
            side = dev.split("_")[-1]
            lg = lungs[side]
            entry = lg.point(1.15, 0.5)
            mid = lg.point(0.75, 0.0)
            tube_tip = lg.point(0.2, -0.8)
            line([(entry[0] + lg.sgn * 0.05, entry[1] + 0.02)] + _bezier(entry, mid, tube_tip), width=lw + 2)
        elif dev == "ecg":
            for j, (ex, ey) in enumerate(f.params.get("ecg_at", [])):
                r = 0.022
                (x0, y0), = _to_pixels([(ex, ey)], A, size)
                rr = r * size
                draw.ellipse([x0 - rr, y0 - rr, x0 + rr, y0 + rr], outline=255, width=lw)
                wire_end = (1.02 if ex > cx else -0.02, ey + 0.1 + 0.05 * j)
                wire = _bezier((ex, ey + r), ((ex + wire_end[0]) / 2, ey + 0.12), wire_end)
                line(wire, width=max(1, lw - 1), level=200)
    arr = np.asarray(canvas.reduce(k), dtype=np.float32) / 255.0
    return arr


# ---------------------------------------------------------------------------------------
# findings: what is drawn
# ---------------------------------------------------------------------------------------

#: Relative frequency of each abnormality when a case has findings.
_WEIGHTS = {EFF: 1.2, OPA: 1.0, ATE: 1.1, CARD: 1.0, EDE: 1.0, CON: 1.0, PTX: 1.0, LES: 1.0,
            PNA: 0.75, ECM: 0.95, FRA: 0.95, PLO: 0.95}
#: Number of abnormalities per case (0 -> "No Finding").
_N_FINDINGS_P = (0.30, 0.27, 0.22, 0.14, 0.07)
#: Probability that a finding is reported as uncertain (and drawn faintly).
_P_UNCERTAIN = {EFF: 0.15, OPA: 0.15, ATE: 0.2, CARD: 0.12, EDE: 0.15, CON: 0.1, PTX: 0.1, LES: 0.15,
                ECM: 0.15, FRA: 0.15, PLO: 0.15}
_DEVICE_KINDS = ("ett", "ng", "cvc", "picc", "pacemaker", "ecg")
_DEVICE_P = (0.3, 0.18, 0.17, 0.15, 0.22, 0.2)


def _pick(rng: np.random.Generator, seq: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    if p is None:
        return seq[int(rng.integers(len(seq)))]
    pa = np.asarray(p, dtype=np.float64)
    return seq[int(rng.choice(len(seq), p=pa / pa.sum()))]


def _lr(rng: np.random.Generator) -> str:
    return "left" if rng.random() < 0.5 else "right"


def sample_findings(rng: np.random.Generator) -> list[Finding]:
    """Draw the abnormalities (and devices) of one case; see the module docstring."""
    k = int(rng.choice(len(_N_FINDINGS_P), p=_N_FINDINGS_P))
    names = list(_WEIGHTS)
    w = np.array([_WEIGHTS[o] for o in names])
    chosen = [names[i] for i in rng.choice(len(names), size=k, replace=False, p=w / w.sum())] if k else []
    # clinically plausible companions
    if EDE in chosen:
        if rng.random() < 0.35 and CARD not in chosen:
            chosen.append(CARD)
        if rng.random() < 0.3 and EFF not in chosen:
            chosen.append(EFF)
    if CARD in chosen and rng.random() < 0.15 and EFF not in chosen:
        chosen.append(EFF)
    order = {o: i for i, o in enumerate(ABNORMALITIES)}
    chosen.sort(key=order.__getitem__)
    used_lobes: set[tuple[str, str]] = set()
    out = [_make_finding(o, rng, used_lobes, co=chosen) for o in chosen]
    ptx = [f for f in out if f.observation == PTX]
    devices: list[str] = []
    if rng.random() < 0.22:
        n_dev = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        idx = rng.choice(len(_DEVICE_KINDS), size=n_dev, replace=False, p=np.array(_DEVICE_P) / sum(_DEVICE_P))
        devices = [_DEVICE_KINDS[i] for i in sorted(idx)]
    if ptx and ptx[0].value == 1 and rng.random() < 0.35:
        devices.append(f"chest_tube_{ptx[0].side}")
    if devices:
        ecg_at = [(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.12, 0.7))) for _ in range(int(rng.integers(2, 4)))]
        out.append(Finding(SD, 1, params={"devices": devices, "ecg_at": ecg_at}))
    return out


def _make_finding(obs: str, rng: np.random.Generator, used_lobes: set, co: Sequence[str]) -> Finding:
    unc = obs in _P_UNCERTAIN and rng.random() < _P_UNCERTAIN[obs]
    value = -1 if unc else 1
    u = rng.uniform
    if obs == CARD:
        if unc:
            return Finding(obs, value, severity="mild", faint=True, params={"heart_scale": float(u(1.15, 1.2))})
        sev = _pick(rng, ("mild", "moderate", "severe"), (0.45, 0.35, 0.2))
        lo, hi = {"mild": (1.3, 1.38), "moderate": (1.42, 1.52), "severe": (1.56, 1.66)}[sev]
        return Finding(obs, value, severity=sev, params={"heart_scale": float(u(lo, hi))})
    if obs == ECM:
        if unc:
            return Finding(obs, value, severity="mild", faint=True, params={"med_scale": float(u(1.35, 1.45))})
        sev = _pick(rng, ("mild", "marked"), (0.55, 0.45))
        lo, hi = {"mild": (1.65, 1.85), "marked": (1.95, 2.25)}[sev]
        return Finding(obs, value, severity=sev, params={"med_scale": float(u(lo, hi))})
    if obs == EFF:
        side = _pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3))
        if EDE in co and rng.random() < 0.7:
            side = "bilateral"
        if unc:
            return Finding(obs, value, side=side, severity="small", faint=True,
                           params={"height": float(u(0.08, 0.1)), "meniscus": float(u(0.25, 0.4))})
        sev = _pick(rng, ("small", "moderate", "large"), (0.45, 0.35, 0.2))
        lo, hi = {"small": (0.14, 0.19), "moderate": (0.26, 0.34), "large": (0.42, 0.52)}[sev]
        return Finding(obs, value, side=side, severity=sev,
                       params={"height": float(u(lo, hi)), "meniscus": float(u(0.25, 0.4))})
    if obs == PTX:
        side = _lr(rng)
        if unc:
            return Finding(obs, value, side=side, severity="small", location="apical", faint=True,
                           params={"r0": float(u(0.87, 0.9)), "extra_air": 0.05, "edge": 0.1})
        sev = _pick(rng, ("small", "moderate", "large"), (0.45, 0.35, 0.2))
        lo, hi = {"small": (0.75, 0.8), "moderate": (0.6, 0.68), "large": (0.42, 0.5)}[sev]
        return Finding(obs, value, side=side, severity=sev, location="apical" if sev == "small" else "lateral",
                       params={"r0": float(u(lo, hi)), "extra_air": 0.11, "edge": float(u(0.16, 0.2))})
    if obs in (OPA, CON, PNA):
        bilateral = obs == OPA and rng.random() < 0.18
        for _ in range(10):
            side = "bilateral" if bilateral else _lr(rng)
            zone = "lower" if bilateral else _pick(rng, ("upper", "middle", "lower"), (0.3, 0.25, 0.45))
            if all((s, zone) not in used_lobes for s in _sides(side)):
                break
        used_lobes.update((s, zone) for s in _sides(side))
        params: dict[str, Any] = {"tex": int(rng.integers(0, 2**62)), "du": float(u(-0.1, 0.15)),
                                  "dv": float(u(-0.08, 0.08)), "rx": float(u(0.07, 0.1)), "ry": float(u(0.06, 0.085))}
        if obs in (CON, PNA):                               # larger and less sharply marginated
            params.update(rx=float(u(0.09, 0.12)), ry=float(u(0.075, 0.1)))
        if obs == OPA:
            params["amp"] = float(u(0.3, 0.38)) if unc else float(u(0.55, 0.7))
            if not unc and rng.random() < 0.35:
                params["pneumonia"] = -1 if rng.random() < 0.8 else 1
        elif obs == CON:
            params["amp"] = float(u(0.4, 0.5)) if unc else float(u(0.8, 0.95))
            if not unc and rng.random() < 0.5:
                params["pneumonia"] = -1 if rng.random() < 0.65 else 1
        else:
            value = 1 if rng.random() < 0.45 else -1      # reported pneumonia: often uncertain,
            unc = False                                     # but the opacity itself is clear
            params["amp"] = float(u(0.6, 0.8))
        return Finding(obs, value, side=side, location=zone, faint=unc, params=params)
    if obs == LES:
        side = _lr(rng)
        v = float(u(-0.6, 0.45))
        zone = "upper" if v < -0.2 else ("middle" if v < 0.2 else "lower")
        params = {"u": float(u(-0.3, 0.55)), "v": v, "phase": float(u(0, 2 * np.pi))}
        if unc:
            params.update(radius=float(u(0.014, 0.017)), amp=float(u(0.16, 0.2)), lobulation=0.0)
            return Finding(obs, value, side=side, severity="small", location=zone, faint=True, params=params)
        if rng.random() < 0.6:
            params.update(radius=float(u(0.018, 0.026)), amp=float(u(0.28, 0.34)), lobulation=0.0)
            sev = "small"
        else:
            params.update(radius=float(u(0.045, 0.068)), amp=float(u(0.32, 0.38)), lobulation=float(u(0.05, 0.14)))
            sev = "large"
        return Finding(obs, value, side=side, severity=sev, location=zone, params=params)
    if obs == EDE:
        tex = int(rng.integers(0, 2**62))
        if unc:
            return Finding(obs, value, side="bilateral", severity="mild", faint=True,
                           params={"amp": 0.07, "marks_gain": 1.3, "tex": tex})
        sev = _pick(rng, ("mild", "moderate", "severe"), (0.45, 0.35, 0.2))
        amp, gain = {"mild": (0.13, 1.5), "moderate": (0.19, 1.8), "severe": (0.26, 2.1)}[sev]
        return Finding(obs, value, side="bilateral", severity=sev, params={"amp": amp, "marks_gain": gain, "tex": tex})
    if obs == ATE:
        side = _pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3))
        params = {"u": float(u(0.0, 0.35)), "tilt": float(u(-0.2, 0.2)), "length": float(u(0.12, 0.17)),
                  "thickness": float(u(0.008, 0.011)), "above": float(u(0.08, 0.12)),
                  "amp": float(u(0.15, 0.2)) if unc else float(u(0.3, 0.4)), "dome_raise": 0.006 if unc else 0.015}
        return Finding(obs, value, side=side, location="lower", faint=unc, params=params)
    if obs == PLO:
        side = _lr(rng)
        loc = _pick(rng, ("lateral", "apical"), (0.65, 0.35))
        params = {"thickness": float(u(0.013, 0.016)) if unc else float(u(0.02, 0.032)), "amp": 0.6 if unc else 1.0}
        return Finding(obs, value, side=side, location=loc, faint=unc, params=params)
    if obs == FRA:
        side = _lr(rng)
        loc = "rib" if (unc or rng.random() < 0.7) else "clavicle"
        sign = 1.0 if rng.random() < 0.5 else -1.0
        params = {"step": sign * (0.8 if unc else float(u(1.6, 2.2))), "gap": 0.01 if unc else float(u(0.016, 0.022)),
                  "callus": 0.04 if unc else 0.1}
        if loc == "rib":
            params.update(rib=int(rng.integers(3, 10)), break_at=float(u(0.55, 0.8)))
        else:
            params.update(break_at=float(u(0.35, 0.65)))
        return Finding(obs, value, side=side, location=loc, faint=unc, params=params)
    raise ValueError(f"no finding generator for {obs!r}")


# ---------------------------------------------------------------------------------------
# reports: what is said
# ---------------------------------------------------------------------------------------

_Mention = tuple[str, int]
_Candidate = tuple[str, tuple[_Mention, ...]]

_LOBES = {
    ("right", "upper"): ("right upper lobe", "RUL"), ("right", "middle"): ("right middle lobe", "RML"),
    ("right", "lower"): ("right lower lobe", "RLL"), ("left", "upper"): ("left upper lobe", "LUL"),
    ("left", "middle"): ("lingula", "lingula"), ("left", "lower"): ("left lower lobe", "LLL"),
}
_ZONE_WORD = {"upper": "upper", "middle": "mid", "lower": "lower"}
_ORDINAL = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_SEV_ADJ = {"small": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",),
            "mild": ("mild",), "severe": ("severe", "marked"), "marked": ("marked",)}
_SEV_ADV = {"mild": "mildly", "moderate": "moderately", "severe": "markedly", "marked": "markedly"}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lobe(f: Finding, rng: np.random.Generator) -> str:
    full, abbr = _LOBES[(f.side or "right", f.location or "lower")]
    return abbr if rng.random() < 0.3 else full


def _ord(n: int, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return _ORDINAL[n]
    return f"{n}{'rd' if n == 3 else 'th'}"


def _finding_candidates(f: Finding, rng: np.random.Generator, ctx: dict[str, Any]) -> list[_Candidate]:
    """Sentences that state finding ``f`` (with its reported value) - the FINDINGS phrasings."""
    o, v = f.observation, f.value
    m: tuple[_Mention, ...] = ((o, v),)
    side = f.side or "right"
    sev = _pick(rng, _SEV_ADJ.get(f.severity or "", ("",)))
    c: list[_Candidate] = []
    if o == EFF:
        if side == "bilateral":
            if v == 1:
                c += [(f"{sev} bilateral pleural effusions.", m), (f"There are {sev} bilateral pleural effusions.", m),
                      (f"{sev} bilateral effusions.", m)]
                if f.severity == "small":
                    c += [("Blunting of both costophrenic angles consistent with small bilateral effusions.", m)]
                if ctx["neg_ok"](PTX):
                    c += [(f"{sev} bilateral pleural effusions without evidence of pneumothorax.", m + ((PTX, 0),))]
            else:
                c += [("Possible small bilateral pleural effusions.", m),
                      ("Questionable trace bilateral effusions.", m),
                      ("Small bilateral pleural effusions cannot be excluded.", m)]
        else:
            if v == 1:
                c += [(f"{sev} {side} pleural effusion.", m), (f"There is a {sev} {side} pleural effusion.", m),
                      (f"{sev} {side}-sided effusion.", m), (f"{sev} amount of {side} pleural fluid.", m),
                      (f"{sev} {'R' if side == 'right' else 'L'} pleural effusion.", m)]
                if f.severity == "small":
                    c += [(f"Blunting of the {side} costophrenic angle consistent with a small effusion.", m)]
                if ctx["neg_ok"](PTX):
                    c += [(f"{sev} {side} pleural effusion without evidence of pneumothorax.", m + ((PTX, 0),)),
                          (f"{sev} {side} pleural effusion, no pneumothorax.", m + ((PTX, 0),))]
            else:
                c += [(f"Possible small {side} pleural effusion.", m), (f"Questionable trace {side} effusion.", m),
                      (f"A small {side} pleural effusion cannot be excluded.", m),
                      (f"Minimal blunting of the {side} costophrenic angle may represent a small effusion.", m)]
    elif o == PTX:
        if v == 1:
            where = "apical " if f.location == "apical" else ""
            c += [(f"{sev} {side} {where}pneumothorax.", m), (f"There is a {sev} {side}-sided pneumothorax.", m),
                  (f"{sev} {side} PTX.", m),
                  (f"{sev} {side} {where}pneumothorax with a visible visceral pleural edge.", m)]
            if ctx["neg_ok"](EFF):
                c += [(f"{sev} {side} pneumothorax without pleural effusion.", m + ((EFF, 0),))]
        else:
            c += [(f"Possible tiny {side} apical pneumothorax.", m),
                  (f"Questionable small {side} apical pneumothorax.", m),
                  (f"A tiny {side} apical pneumothorax cannot be excluded.", m)]
    elif o == CARD:
        if v == 1:
            adv = _SEV_ADV[f.severity or "mild"]
            c += [(f"{sev} cardiomegaly.", m), (f"The heart is {adv} enlarged.", m),
                  (f"{sev} enlargement of the cardiac silhouette.", m), (f"Heart size is {adv} enlarged.", m),
                  (f"The cardiac silhouette is {adv} enlarged.", m), (f"Stable {sev} cardiomegaly.", m)]
        else:
            c += [("Possible mild cardiomegaly.", m), ("Questionable mild enlargement of the cardiac silhouette.", m),
                  ("Mild cardiomegaly cannot be excluded.", m)]
    elif o == ECM:
        if v == 1:
            adv = _SEV_ADV[f.severity or "mild"]
            c += [(f"The mediastinum is {adv} widened.", m), (f"{sev} widening of the superior mediastinum.", m),
                  ("Widened upper mediastinal silhouette.", m),
                  (f"The superior mediastinal contour is {adv} widened.", m)]
        else:
            c += [("Possible widening of the superior mediastinum.", m), ("Questionable mediastinal widening.", m)]
    elif o == LES:
        lobe = _lobe(f, rng)
        zone = f"{side} {_ZONE_WORD[f.location or 'middle']} lung"
        size = 2 * float(f.params.get("radius", 0.02)) * 370
        if v == 1 and f.severity == "small":
            mm = int(round(size))
            c += [(f"{mm} mm nodule in the {lobe}.", m), (f"A small nodule projects over the {zone}.", m),
                  (f"{_cap(lobe) if len(lobe) > 3 else lobe} pulmonary nodule measuring {mm} mm.", m),
                  (f"There is a {mm} mm {zone} nodule.", m)]
        elif v == 1:
            cm = round(size / 10, 1)
            c += [(f"{cm} cm mass in the {lobe}.", m), (f"Large {zone} mass.", m),
                  (f"There is a {cm} cm mass in the {lobe}.", m), (f"Lobulated mass in the {lobe}.", m)]
        else:
            c += [(f"Questionable nodule in the {zone}.", m), (f"Possible small nodule in the {lobe}.", m),
                  (f"A small nodule in the {lobe} cannot be excluded.", m)]
    elif o in (OPA, CON, PNA):
        pna = f.params.get("pneumonia")
        if side == "bilateral":
            lobe_txt, base_txt = "both lower lobes", "both lung bases"
        else:
            lobe_txt, base_txt = _lobe(f, rng), f"{side} lung base"
        lower = f.location == "lower"
        c += _airspace_candidates(o, v, pna, lobe_txt, base_txt if lower else None, side, rng)
    elif o == EDE:
        if v == 1:
            c += [(f"{sev} pulmonary edema.", m), (f"{sev} interstitial edema.", m),
                  ("Diffuse bilateral perihilar edema.", m), (f"Findings of {sev} pulmonary edema.", m),
                  (f"Bilateral perihilar hazy opacities consistent with {sev} pulmonary edema.", m + ((OPA, 1),))]
            if f.severity == "mild":
                c += [("Mild pulmonary vascular congestion.", m)]
        else:
            c += [("Possible mild pulmonary edema.", m), ("Questionable mild interstitial edema.", m),
                  ("Mild pulmonary vascular congestion cannot be excluded.", m)]
    elif o == ATE:
        if side == "bilateral":
            if v == 1:
                c += [("Bibasilar atelectasis.", m), ("Mild bibasilar atelectasis.", m),
                      ("Linear atelectasis at both lung bases.", m), ("Bibasilar plate-like atelectasis.", m)]
            else:
                c += [("Bibasilar linear markings, possibly atelectasis.", m),
                      ("Possible mild bibasilar atelectasis.", m)]
        else:
            if v == 1:
                c += [(f"{side} basilar atelectasis.", m), (f"Linear atelectasis at the {side} base.", m),
                      (f"Plate-like atelectasis in the {side} lower lobe.", m),
                      (f"Subsegmental atelectasis at the {side} lung base.", m),
                      (f"{'RLL' if side == 'right' else 'LLL'} subsegmental atelectasis.", m)]
            else:
                c += [(f"Streaky {side} basilar changes may represent atelectasis.", m),
                      (f"Possible {side} basilar atelectasis.", m)]
    elif o == PLO:
        where = "apical" if f.location == "apical" else "lateral"
        if v == 1:
            if where == "apical":
                c += [(f"{side} apical pleural thickening.", m), (f"Pleural thickening at the {side} apex.", m),
                      (f"Mild {side} apical pleural scarring.", m)]
            else:
                c += [(f"Pleural thickening along the {side} lateral chest wall.", m),
                      (f"{side} lateral pleural thickening.", m), (f"Mild {side} lateral pleural scarring.", m)]
        else:
            c += [(f"Possible {side} {where} pleural thickening.", m),
                  (f"Questionable {side} {where} pleural thickening.", m)]
    elif o == FRA:
        if f.location == "clavicle":
            c += [(f"Fracture of the {side} clavicle.", m), (f"{side} clavicle fracture.", m),
                  (f"There is a displaced fracture of the {side} clavicle.", m)]
        else:
            n = int(f.params.get("rib", 5))
            rib = _ord(n, rng)
            if v == 1:
                c += [(f"Acute fracture of the {side} {rib} rib.", m), (f"Displaced {side} {rib} rib fracture.", m),
                      (f"{side} {rib} posterior rib fracture.", m),
                      (f"There is a fracture of the {side} {rib} posterior rib with mild displacement.", m)]
            else:
                c += [(f"Possible nondisplaced fracture of the {side} {rib} rib.", m),
                      (f"Questionable {side} {rib} rib fracture.", m),
                      (f"A {side} rib fracture cannot be excluded.", m)]
    elif o == SD:
        c += [_device_sentence(d, rng) for d in f.params.get("devices", [])]
    return c


def _airspace_candidates(o: str, v: int, pna: int | None, lobe: str, base: str | None, side: str,
                         rng: np.random.Generator) -> list[_Candidate]:
    """Opacity / consolidation / pneumonia phrasings, with the pneumonia co-mention if any."""
    c: list[_Candidate] = []
    if o == OPA:
        m = ((OPA, v),)
        if v == 1:
            plain = [f"Patchy opacity in the {lobe}.", f"Ill-defined opacity in the {lobe}.",
                     f"{_cap(lobe) if side != 'bilateral' else 'Bilateral lower lobe'} airspace opacity.",
                     f"Hazy opacification of the {lobe}.", f"Patchy airspace disease in the {lobe}."]
            if base:
                plain += [f"Hazy opacity at the {base}."] if side != "bilateral" else ["Bibasilar opacities."]
            if pna is None:
                c += [(t, m) for t in plain]
            elif pna == -1:
                c += [(f"Patchy opacity in the {lobe}, concerning for pneumonia.", m + ((PNA, -1),)),
                      (f"Ill-defined opacity in the {lobe} which may represent pneumonia.", m + ((PNA, -1),)),
                      (f"Patchy airspace opacity in the {lobe}; infection cannot be excluded.", m + ((PNA, -1),))]
            else:
                c += [(f"Patchy airspace opacity in the {lobe} due to pneumonia.", m + ((PNA, 1),)),
                      (f"Opacity in the {lobe} representing pneumonia.", m + ((PNA, 1),))]
        else:
            c += [(f"Possible subtle opacity in the {lobe}.", m), (f"Questionable faint opacity in the {lobe}.", m),
                  (f"A subtle {lobe} opacity cannot be excluded.", m)]
    elif o == CON:
        m = ((CON, v),)
        if v == 1:
            plain = [f"{_cap(lobe)} consolidation.", f"Dense consolidation in the {lobe}.",
                     f"There is airspace consolidation in the {lobe}.", f"Consolidation of the {lobe}."]
            if base:
                plain += [f"Focal consolidation at the {base}."]
            if pna is None:
                c += [(t, m) for t in plain]
            elif pna == -1:
                c += [(f"{_cap(lobe)} consolidation, concerning for pneumonia.", m + ((PNA, -1),)),
                      (f"Dense consolidation in the {lobe} which may represent pneumonia.", m + ((PNA, -1),)),
                      (f"Consolidation in the {lobe}; pneumonia cannot be excluded.", m + ((PNA, -1),)),
                      (f"{_cap(lobe)} consolidation, suspicious for infection.", m + ((PNA, -1),))]
            else:
                c += [(f"{_cap(lobe)} pneumonia with dense consolidation.", ((PNA, 1), (CON, 1))),
                      (f"Consolidation in the {lobe} due to pneumonia.", m + ((PNA, 1),))]
        else:
            c += [(f"Possible early consolidation in the {lobe}.", m), (f"Questionable {lobe} consolidation.", m)]
    else:  # Pneumonia drawn as a patchy airspace process
        m = ((PNA, v),)
        if v == 1:
            c += [(f"{_cap(lobe)} pneumonia.", m), (f"Findings of pneumonia in the {lobe}.", m),
                  (f"Patchy airspace disease in the {lobe} due to pneumonia.", ((OPA, 1), (PNA, 1)))]
        else:
            c += [(f"Patchy {lobe} opacity, concerning for pneumonia.", ((OPA, 1), (PNA, -1))),
                  (f"Patchy opacity in the {lobe} which may represent pneumonia.", ((OPA, 1), (PNA, -1))),
                  (f"Ill-defined {lobe} airspace abnormality, possibly early pneumonia.", m),
                  (f"Patchy opacity in the {lobe}; pneumonia cannot be excluded.", ((OPA, 1), (PNA, -1)))]
    return c


def _device_sentence(dev: str, rng: np.random.Generator) -> _Candidate:
    m = ((SD, 1),)
    if dev == "ett":
        opts = [f"Endotracheal tube terminates {int(rng.integers(3, 6))} cm above the carina.",
                "ETT in standard position.",
                "The endotracheal tube is in appropriate position."]
    elif dev == "ng":
        opts = ["Nasogastric tube courses below the diaphragm.", "NG tube tip in the stomach.",
                "An enteric tube extends into the stomach."]
    elif dev == "cvc":
        opts = ["Right internal jugular central venous catheter terminates in the SVC.",
                "R IJ central line with tip in the mid SVC.", "Right IJ catheter tip projects over the SVC."]
    elif dev == "picc":
        opts = ["Left PICC terminates in the SVC.", "Left upper extremity PICC line with tip in the lower SVC.",
                "L PICC tip in the distal SVC."]
    elif dev == "pacemaker":
        opts = ["Left chest wall pacemaker with leads in the right atrium and right ventricle.",
                "Dual-chamber pacemaker in place.", "Left-sided pacemaker device with intact leads."]
    elif dev == "ecg":
        opts = ["ECG leads overlie the chest.", "External monitoring leads are noted.",
                "EKG leads project over the chest."]
    elif dev.startswith("chest_tube"):
        side = dev.rsplit("_", 1)[-1]
        opts = [f"{_cap(side)} chest tube in place.", f"{_cap(side)}-sided chest tube with tip at the apex.",
                f"{'R' if side == 'right' else 'L'} pigtail catheter in the pleural space."]
    else:
        raise ValueError(f"unknown device {dev!r}")
    return _pick(rng, opts), m


#: Explicit negations: (text, observations negated).  Only used when every observation in it
#: is absent from the image (and not otherwise mentioned).
_NEGATIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "pleural": [
        ("No pleural effusion or pneumothorax.", (EFF, PTX)), ("No pneumothorax or pleural effusion.", (PTX, EFF)),
        ("There is no pleural effusion or pneumothorax.", (EFF, PTX)),
        ("No focal consolidation, pleural effusion or pneumothorax.", (CON, EFF, PTX)),
        ("There is no focal consolidation, pleural effusion, or pneumothorax.", (CON, EFF, PTX)),
        ("No pleural effusion.", (EFF,)), ("No pleural effusions.", (EFF,)),
        ("No evidence of pleural effusion.", (EFF,)),
        ("No pneumothorax.", (PTX,)), ("There is no pneumothorax.", (PTX,)), ("No evidence of pneumothorax.", (PTX,)),
        ("Pneumothorax is not seen.", (PTX,)), ("No PTX.", (PTX,)),
    ],
    "airspace": [
        ("There is no focal consolidation.", (CON,)), ("No focal consolidation.", (CON,)),
        ("No focal airspace consolidation.", (CON,)), ("No focal airspace opacity.", (OPA,)),
        ("No focal opacity to suggest pneumonia.", (OPA, PNA)), ("No evidence of pneumonia.", (PNA,)),
        ("No focal consolidation to suggest pneumonia.", (CON, PNA)),
    ],
    "cardiac": [
        ("The cardiomediastinal silhouette is within normal limits.", (CARD, ECM)),
        ("Normal cardiomediastinal silhouette.", (CARD, ECM)),
        ("Cardiomediastinal silhouette is unremarkable.", (CARD, ECM)),
        ("Heart size is normal.", (CARD,)), ("The heart is normal in size.", (CARD,)), ("Normal heart size.", (CARD,)),
        ("No cardiomegaly.", (CARD,)), ("Mediastinal contours are normal.", (ECM,)),
        ("The mediastinum is not widened.", (ECM,)), ("Normal mediastinal silhouette.", (ECM,)),
    ],
    "edema": [("No pulmonary edema.", (EDE,)), ("No evidence of pulmonary edema.", (EDE,)),
              ("There is no pulmonary vascular congestion.", (EDE,))],
    "bones": [("No acute displaced rib fracture.", (FRA,)), ("No acute fracture.", (FRA,)),
              ("No displaced fracture is seen.", (FRA,))],
    "lesion": [("No suspicious pulmonary nodules or masses.", (LES,)), ("No focal nodule.", (LES,))],
    "atelectasis": [("No atelectasis.", (ATE,))],
}
_NEG_P = {"pleural": 0.85, "airspace": 0.55, "cardiac": 0.75, "edema": 0.3, "bones": 0.25, "lesion": 0.15,
          "atelectasis": 0.05}

_TECHNIQUE = ("PA view of the chest.", "PA and lateral views of the chest.", "Frontal view of the chest.",
              "Single frontal radiograph of the chest.", "PA chest radiograph.")
_COMPARISON = ("Comparison is made to the prior study.", "Compared to prior study.",
               "No prior studies are available for comparison.", "Comparison: none.")
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are well expanded and clear.")
_BONES_OK = ("The osseous structures are intact.", "No acute osseous abnormality.",
             "Visualized osseous structures are unremarkable.")
_ABDOMEN_OK = ("The visualized upper abdomen is unremarkable.", "Upper abdomen is unremarkable.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process.")

#: Which drawn observations rule out a negation of an observation (they would look alike).
_NEGATION_BLOCKERS = {
    OPA: {OPA, CON, PNA, EDE, LES, ATE}, CON: {CON, PNA, OPA}, PNA: {PNA, CON, OPA},
    EDE: {EDE}, LES: {LES}, ATE: {ATE}, CARD: {CARD}, ECM: {ECM}, EFF: {EFF}, PTX: {PTX},
    FRA: {FRA}, PLO: {PLO},
}
_GROUP = {OPA: "lung", CON: "lung", PNA: "lung", LES: "lung", EDE: "lung", ATE: "lung",
          EFF: "pleura", PTX: "pleura", PLO: "pleura", CARD: "heart", ECM: "heart", FRA: "bones", SD: "devices"}
_IMPRESSION_PRIORITY = (PTX, EFF, CON, PNA, OPA, EDE, CARD, ECM, LES, ATE, FRA, PLO)


def aggregate_labels(sentences: Iterable[Sentence]) -> dict[str, int | None]:
    """CheXpert aggregation of sentence mentions: 1 beats -1 beats 0, unmentioned is None;
    No Finding is 1 when nothing but Support Devices is 1 or -1, otherwise None."""
    seen: dict[str, set[int]] = {}
    for sent in sentences:
        for obs, val in sent.mentions:
            seen.setdefault(obs, set()).add(int(val))
    labels: dict[str, int | None] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        vals = seen.get(obs, set())
        labels[obs] = 1 if 1 in vals else (-1 if -1 in vals else (0 if 0 in vals else None))
    finding = any(labels[o] in (1, -1) for o in CHEXPERT_OBSERVATIONS if o not in (NF, SD))
    labels[NF] = None if finding else 1
    return labels


def write_report(drawn: Sequence[Finding], rng: np.random.Generator) -> tuple[list[Sentence], list[Sentence]]:
    """FINDINGS and IMPRESSION sentences for the drawn findings (see the module docstring)."""
    drawn_obs = {f.observation for f in drawn}
    comention = {PNA for f in drawn if f.params.get("pneumonia") is not None}

    def neg_ok(obs: str) -> bool:
        return not (_NEGATION_BLOCKERS.get(obs, {obs}) & drawn_obs) and obs not in comention

    ctx = {"neg_ok": neg_ok}
    groups: dict[str, list[Sentence]] = {"devices": [], "lung": [], "pleura": [], "heart": [], "bones": []}
    for f in drawn:
        cands = _finding_candidates(f, rng, ctx)
        if f.observation == SD:
            for text, m in cands:
                groups["devices"].append(_sentence(text, m))
            if len(cands) >= 2 and rng.random() < 0.3:
                groups["devices"] = [_sentence(_pick(rng, ("Lines and tubes are in standard position.",
                                                           "Support devices are in standard position.")), ((SD, 1),))]
            continue
        text, m = _pick(rng, cands)
        groups[_GROUP[f.observation]].append(_sentence(text, m))
    # explicit negations of absent observations (not repeating ones already stated inline)
    negated: set[str] = {o for g in groups.values() for sent in g for o, val in sent.mentions if val == 0}
    for key, p in _NEG_P.items():
        if rng.random() >= p:
            continue
        opts = [(t, obs) for t, obs in _NEGATIONS[key] if all(neg_ok(o) for o in obs) and not (set(obs) & negated)]
        if not opts:
            continue
        text, obs = _pick(rng, opts)
        negated.update(obs)
        target = {"pleural": "pleura", "airspace": "lung", "cardiac": "heart", "edema": "lung", "bones": "bones",
                  "lesion": "lung", "atelectasis": "lung"}[key]
        groups[target].append(_sentence(text, tuple((o, 0) for o in obs)))
    # mention-free filler
    lungs_normal = not (drawn_obs & {OPA, CON, PNA, EDE, LES, ATE, PTX, EFF, PLO})
    if lungs_normal and rng.random() < 0.6:
        groups["lung"].insert(0, Sentence(_pick(rng, _CLEAR_LUNGS)))
    if FRA not in drawn_obs and rng.random() < 0.35:
        groups["bones"].append(Sentence(_pick(rng, _BONES_OK)))
    if rng.random() < 0.1:
        groups["bones"].append(Sentence(_pick(rng, _ABDOMEN_OK)))
    for g in ("lung", "pleura", "heart"):
        if len(groups[g]) > 1 and rng.random() < 0.3:
            groups[g] = [groups[g][i] for i in rng.permutation(len(groups[g]))]
    order = ["lung", "pleura", "heart", "bones"]
    if rng.random() < 0.35:
        order = ["heart", "lung", "pleura", "bones"]
    order = (["devices"] + order) if rng.random() < 0.6 else (order[:-1] + ["devices", order[-1]])
    findings: list[Sentence] = []
    if rng.random() < 0.4:
        findings.append(Sentence(_pick(rng, _TECHNIQUE)))
    if rng.random() < 0.3:
        findings.append(Sentence(_pick(rng, _COMPARISON)))
    for g in order:
        findings.extend(groups[g])
    if all(not s.mentions for s in findings):                 # never an empty-of-content report
        findings.append(_sentence(_pick(rng, _NEGATIONS["pleural"][:3])[0], ((EFF, 0), (PTX, 0))))

    impression = _write_impression(drawn, findings, rng, ctx)
    # FINDINGS is always the longer section (readers that take "the longer section" then see
    # every label): pad a short one with mention-free filler
    def length(sents: list[Sentence]) -> int:
        return len(" ".join(x.text for x in sents))

    has_intro = any(x.text in _TECHNIQUE + _COMPARISON for x in findings)
    leading = [] if has_intro else [_TECHNIQUE[0], _COMPARISON[0]]
    trailing = [t for t in ((() if FRA in drawn_obs else _BONES_OK[:1]) + _ABDOMEN_OK[:1])
                if all(x.text != t for x in findings)]
    for i, text in enumerate(leading):
        if length(findings) > length(impression):
            break
        findings.insert(i, Sentence(text))
    for text in trailing:
        if length(findings) > length(impression):
            break
        findings.append(Sentence(text))
    return findings, impression


def _sentence(text: str, mentions: Sequence[_Mention], section: str = "findings") -> Sentence:
    text = _cap(text)
    if not mentions:
        return Sentence(text, section=section)
    (o, v), rest = mentions[0], tuple(mentions[1:])
    return Sentence(text, o, int(v), rest, section)


def _write_impression(drawn: Sequence[Finding], findings: Sequence[Sentence], rng: np.random.Generator,
                      ctx: dict[str, Any]) -> list[Sentence]:
    """A shorter summary that only repeats (observation, value) pairs already in FINDINGS."""
    stated = {mv for s in findings for mv in s.mentions}
    abnormal = [f for f in drawn if f.observation != SD]
    out: list[Sentence] = []
    if not abnormal:
        out.append(Sentence(_pick(rng, _NORMAL_IMPRESSION), section="impression"))
    else:
        prio = {o: i for i, o in enumerate(_IMPRESSION_PRIORITY)}
        top = sorted(abnormal, key=lambda f: prio[f.observation])[: int(rng.integers(1, 4))]
        for f in top:
            cands = [(t, m) for t, m in _finding_candidates(f, rng, ctx) if set(m) <= stated]
            short = sorted(cands, key=lambda c: len(c[0]))[:3]
            if short:
                text, m = _pick(rng, short)
                out.append(_sentence(text, m, "impression"))
        if len(abnormal) <= 1 and rng.random() < 0.3:
            out.append(Sentence("Otherwise no acute cardiopulmonary process.", section="impression"))
    devices = [f for f in drawn if f.observation == SD]
    if devices and rng.random() < 0.3 and (SD, 1) in stated:
        out.append(_sentence("Support devices as described above.", ((SD, 1),), "impression"))
    return out


# ---------------------------------------------------------------------------------------
# VQA questions
# ---------------------------------------------------------------------------------------

_PRESENCE_Q: dict[str, tuple[str, tuple[str, ...]]] = {
    EFF: ("PRES", ("Is there a pleural effusion?", "Is there an effusion?", "Is there fluid in the pleural space?")),
    PTX: ("PRES", ("Is there a pneumothorax?", "Is there air in the pleural space?")),
    CARD: ("SIZE", ("Is the heart enlarged?", "Is there cardiomegaly?", "Is the cardiac silhouette enlarged?")),
    ECM: ("SIZE", ("Is the mediastinum widened?", "Is the upper mediastinum enlarged?")),
    LES: ("PRES", ("Is there a lung nodule or mass?", "Is there a focal lung lesion?")),
    CON: ("PRES", ("Is there consolidation?", "Is there a focal consolidation?")),
    OPA: ("PRES", ("Is there a lung opacity?", "Are there any opacities in the lungs?")),
    EDE: ("PRES", ("Is there pulmonary edema?", "Is there evidence of pulmonary edema?")),
    ATE: ("PRES", ("Is there atelectasis?", "Is there any atelectasis?")),
    FRA: ("PRES", ("Is there a fracture?", "Are any bones fractured?")),
    PLO: ("PRES", ("Is there pleural thickening?",)),
}
_SIDE_Q = {
    EFF: ("Is there a pleural effusion on the {s}?", "Is the effusion on the {s} side?"),
    PTX: ("Is there a pneumothorax on the {s}?", "Is the {s} lung collapsed?"),
    LES: ("Is there a nodule or mass in the {s} lung?",),
    ATE: ("Is there atelectasis in the {s} lung?",),
    FRA: ("Is there a fracture on the {s} side?",),
}
_DEVICE_NAMES = {"ett": "endotracheal tube", "ng": "nasogastric tube", "cvc": "central venous catheter",
                 "picc": "picc line", "pacemaker": "pacemaker", "ecg": "ecg leads"}
_DEVICE_Q = {"ett": "Is there an endotracheal tube?", "ng": "Is there a nasogastric tube?",
             "pacemaker": "Is there a pacemaker?", "cvc": "Is there a central venous catheter?"}
_ABN_NAME = {EFF: "pleural effusion", PTX: "pneumothorax", CARD: "cardiomegaly", ECM: "widened mediastinum",
             OPA: "opacity", CON: "consolidation", PNA: "pneumonia", EDE: "pulmonary edema", ATE: "atelectasis",
             PLO: "pleural thickening", FRA: "fracture"}


def _device_name(dev: str) -> str:
    return "chest tube" if dev.startswith("chest_tube") else _DEVICE_NAMES[dev]


def make_questions(drawn: Sequence[Finding], labels: dict[str, int | None], n: int,
                   rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` question dicts (question, answer, answer_type, question_type) about one image.

    About half are CLOSED yes/no (the wanted answer is drawn first, so yes and no are
    balanced); the rest OPEN with short lower-case answers.  Only findings reported as
    positive are asked about; a "no" is only given when nothing similar is drawn.
    """
    drawn_obs = {f.observation for f in drawn}
    pos = {f.observation: f for f in drawn if f.value == 1 and labels.get(f.observation) == 1}
    devices = [d for f in drawn if f.observation == SD for d in f.params.get("devices", [])]
    closed: list[tuple[str, str, str]] = []       # (question, answer, type)
    opened: list[tuple[str, str, str]] = []

    def absent(obs: str) -> bool:
        return labels.get(obs) not in (1, -1) and not (_NEGATION_BLOCKERS.get(obs, {obs}) & drawn_obs)

    for obs, (qtype, qs) in _PRESENCE_Q.items():
        if labels.get(obs) == 1:
            closed += [(q, "yes", qtype) for q in qs]
        elif absent(obs):
            closed += [(q, "no", qtype) for q in qs]
    for obs, qs in _SIDE_Q.items():
        f = pos.get(obs)
        if f is not None and f.side:
            for q in qs:
                for s in ("left", "right"):
                    closed.append((q.format(s=s), "yes" if s in _sides(f.side) else "no", "POS"))
        elif absent(obs):
            closed += [(q.format(s=s), "no", "POS") for q in qs for s in ("left", "right")]
    sd_q = ("Are there any support devices?", "Is there a medical device present?", "Are there any lines or tubes?")
    closed += [(q, "yes" if devices else "no", "PRES") for q in sd_q]
    for dev, q in _DEVICE_Q.items():
        closed.append((q, "yes" if dev in devices else "no", "PRES"))
    abnormal_pos = any(labels.get(o) == 1 for o in ABNORMALITIES)
    if labels.get(NF) == 1 and not devices:
        closed += [("Is this a normal chest x-ray?", "yes", "ABN"), ("Is this chest radiograph normal?", "yes", "ABN"),
                   ("Are there any abnormalities?", "no", "ABN"),
                   ("Is there any abnormality in this image?", "no", "ABN")]
    elif abnormal_pos:
        closed += [("Is this a normal chest x-ray?", "no", "ABN"), ("Is this chest radiograph normal?", "no", "ABN"),
                   ("Are there any abnormalities?", "yes", "ABN"),
                   ("Is there any abnormality in this image?", "yes", "ABN")]

    # OPEN
    sev_q = {EFF: ("How large is the pleural effusion?", "What is the size of the effusion?"),
             PTX: ("How large is the pneumothorax?",),
             LES: ("What is the size of the lesion?", "Is the lung lesion small or large?"),
             CARD: ("How enlarged is the heart?", "What is the degree of cardiomegaly?"),
             EDE: ("How severe is the pulmonary edema?",)}
    side_q = {EFF: ("Which side is the effusion on?", "On which side is the pleural effusion?"),
              PTX: ("Which side is the pneumothorax on?", "Where is the pneumothorax?"),
              LES: ("In which lung is the lesion?",), ATE: ("Which side is the atelectasis on?",),
              PLO: ("Which side shows pleural thickening?",), FRA: ("Which side is the fracture on?",)}
    for obs, f in pos.items():
        for q in side_q.get(obs, ()):
            if f.side:
                opened.append((q, f.side, "POS"))
        for q in sev_q.get(obs, ()):
            if f.severity:
                ans = ("small" if f.severity == "small" else "large") if obs == LES else (
                    "severe" if f.severity == "marked" else f.severity)
                opened.append((q, ans, "SIZE"))
    if FRA in pos:
        opened.append(("What bone is fractured?", pos[FRA].location or "rib", "ABN"))
    if LES in pos:
        kind = "nodule" if pos[LES].severity == "small" else "mass"
        opened.append(("What type of lung lesion is seen?", kind, "ABN"))
    if CARD in pos and ECM not in drawn_obs:
        opened.append(("What organ is enlarged?", "heart", "ORGAN"))
    elif ECM in pos and CARD not in drawn_obs:
        opened.append(("What structure is widened?", "mediastinum", "ORGAN"))
    # what is in a given lobe
    in_lobe: dict[tuple[str, str], list[str]] = {}
    for f in drawn:
        if f.observation in (OPA, CON, PNA, LES, ATE):
            for s in _sides(f.side):
                name = None
                if f.observation == LES and f.value == 1:
                    name = "nodule" if f.severity == "small" else "mass"
                elif f.observation == PNA:
                    name = "pneumonia" if f.value == 1 else ("opacity" if labels.get(OPA) == 1 else None)
                elif f.value == 1:
                    name = _ABN_NAME[f.observation]
                in_lobe.setdefault((s, f.location or "lower"), []).append(name or "?")
    for (s, zone), names in in_lobe.items():
        if len(names) == 1 and names[0] != "?":
            opened.append((f"What abnormality is seen in the {_LOBES[(s, zone)][0]}?", names[0], "ABN"))
    uniq = sorted(set(_device_name(d) for d in devices))
    if len(uniq) == 1:
        opened += [("What device is present?", uniq[0], "PRES"), ("What support device is seen?", uniq[0], "PRES")]
    elif uniq:
        opened.append(("How many different support devices are present?", str(len(uniq)), "COUNT"))
    reported = [o for o in ABNORMALITIES if labels.get(o) in (1, -1)]
    if len(reported) == 1 and reported[0] in pos and reported[0] != LES:
        opened.append(("What is the main abnormality?", _ABN_NAME[reported[0]], "ABN"))
    generic = [("What abnormality is seen?", "none", "ABN")] if labels.get(NF) == 1 and not opened else []
    generic += [("What imaging modality is this?", "x-ray", "MODALITY"),
                ("How was this image taken?", "x-ray", "MODALITY"),
               ("What plane is this image in?", "pa", "PLANE"), ("What part of the body is shown?", "chest", "ORGAN"),
               ("What organ system is imaged?", "chest", "ORGAN")]

    out: list[dict[str, Any]] = []
    used: set[str] = set()
    first_closed = rng.random() < 0.5
    for j in range(n):
        want_closed = (j % 2 == 0) == first_closed
        if want_closed:
            target = "yes" if rng.random() < 0.5 else "no"
            pools = [[c for c in closed if c[1] == target and c[0] not in used],
                     [c for c in closed if c[1] != target and c[0] not in used]]
        else:
            pools = [[c for c in opened if c[0] not in used] if rng.random() < 0.8 else [],
                     [c for c in generic if c[0] not in used], [c for c in opened if c[0] not in used]]
        pool = next((p for p in pools if p), None)
        if pool is None:
            pool = [c for c in generic + opened + closed if c[0] not in used] or generic
        q, a, t = _pick(rng, pool)
        used.add(q)
        out.append({"question": q, "answer": a, "answer_type": "CLOSED" if a in ("yes", "no") else "OPEN",
                    "question_type": t})
    return out


# ---------------------------------------------------------------------------------------
# cases and files
# ---------------------------------------------------------------------------------------


def case_id(index: int) -> str:
    return f"synth-{index:06d}"


def case_split(index: int, seed: int, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Split of case ``index``: a golden-ratio (Weyl) sequence with a seed-dependent start.

    Depends only on (seed, index, split_fractions), so it never changes when ``n`` grows, and
    any run of consecutive indices is spread over the splits very evenly (e.g. 40 cases at
    0.8/0.1/0.1 give 4 +- 1 validation and test cases).
    """
    fr = _check_fractions(split_fractions)
    start = float(np.random.default_rng([int(seed), 0x5B11]).random())
    u = (start + index * 0.6180339887498949) % 1.0
    if u < fr[0]:
        return "train"
    return "validate" if u < fr[0] + fr[1] else "test"


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(x) for x in split_fractions)
    if len(fr) != 3 or any(not math.isfinite(x) or x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1 "
                         f"(train, validate, test); got {tuple(split_fractions)!r}")
    return fr


def cardiothoracic_ratio(anatomy: Anatomy, drawn: Sequence[Finding] = ()) -> float:
    """Heart width / internal thoracic width at the heart's widest level."""
    hs = max([float(f.params.get("heart_scale", 1.45)) for f in drawn if f.observation == CARD] or [1.0])
    A = anatomy
    hcy = A.lung_cy + 0.55 * A.lung_b
    t = (hcy - (A.lung_cy - A.lung_b)) / (1.9 * A.lung_b)
    a_eff = A.lung_a * (0.6 + 0.45 * math.sqrt(min(max(t, 0.0), 1.0)))
    thorax = 2 * A.lung_dx + a_eff * (1.0 + 0.96)
    return 2 * A.heart_hw * hs / thorax


def synthesize_case(index: int, seed: int, image_size: int, *, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                    questions_per_image: int = 4) -> SyntheticCase:
    """One synthetic case, derived only from ``(seed, index)`` (pure: no I/O, no global RNG).

    ``image_size`` changes only the pixel resolution: the findings, report, labels and
    questions of a case are the same at every size.
    """
    anatomy = sample_anatomy(_rng(seed, index, _ANATOMY))
    drawn = sample_findings(_rng(seed, index, _FINDINGS))
    for f in drawn:
        if f.observation == CARD:
            f.params["ctr"] = round(cardiothoracic_ratio(anatomy, [f]), 4)
    findings_s, impression_s = write_report(drawn, _rng(seed, index, _TEXT))
    sentences = findings_s + impression_s
    labels = aggregate_labels(sentences)
    findings_text = " ".join(s.text for s in findings_s)
    impression_text = " ".join(s.text for s in impression_s)
    cid = case_id(index)
    questions = make_questions(drawn, labels, questions_per_image, _rng(seed, index, _QUESTIONS))
    for j, q in enumerate(questions):
        q.update(qid=index * questions_per_image + j, image_name=f"{cid}.png")
    image = render_image(anatomy, drawn, image_size)
    return SyntheticCase(
        id=cid, index=index, seed=seed, image=image, findings=findings_text, impression=impression_text,
        report=f"FINDINGS: {findings_text}\nIMPRESSION: {impression_text}", labels=labels, sentences=sentences,
        drawn=drawn, anatomy=anatomy, questions=questions, split=case_split(index, seed, split_fractions),
    )


def _mevf(q: dict[str, Any]) -> dict[str, Any]:
    return {"qid": q["qid"], "image_name": q["image_name"], "image_organ": "CHEST", "answer": q["answer"],
            "answer_type": q["answer_type"], "question_type": q["question_type"], "question": q["question"],
            "phrase_type": "freeform"}


def generate_synthetic(output: str | Path, n: int = 1000, image_size: int = 128, seed: int = 0,
                       split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                       questions_per_image: int = 4) -> SyntheticSummary:
    """Write ``n`` synthetic cases into the new folder ``output``::

        output/
          images/<id>.png          8-bit grayscale PNG, image_size x image_size (ids "synth-000042")
          train.jsonl validate.jsonl test.jsonl
                                   {"id", "image": "images/<id>.png", "findings", "impression",
                                    "report": "FINDINGS: ...\\nIMPRESSION: ...",
                                    "labels": {14 observations: 1|0|-1|null}, "split"}
          trainset.json testset.json
                                   VQA-RAD (MEVF) question lists: {"qid", "image_name": "<id>.png",
                                    "image_organ": "CHEST", "answer", "answer_type": CLOSED|OPEN,
                                    "question_type", "question", "phrase_type": "freeform"};
                                    trainset = train + validate images, testset = test images
          meta.json                {"generator", "version", "n", "image_size", "seed",
                                    "split_fractions", "counts", "label_counts"}

    The folder is written next to ``output`` under a temporary name and renamed into place,
    so it either appears complete or not at all.  An existing non-empty ``output`` raises
    :class:`FileExistsError`; bad arguments raise :class:`ValueError`.
    """
    output = Path(output)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if int(questions_per_image) != questions_per_image or questions_per_image < 0:
        raise ValueError(f"questions_per_image must be a non-negative integer, got {questions_per_image!r}")
    fractions = _check_fractions(split_fractions)
    n, image_size, questions_per_image = int(n), int(image_size), int(questions_per_image)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists and is not an empty folder; choose a new output folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        (tmp / "images").mkdir()
        counts = {s: 0 for s in SPLITS}
        label_counts = {o: {"1": 0, "0": 0, "-1": 0, "blank": 0} for o in CHEXPERT_OBSERVATIONS}
        vqa: dict[str, list[dict[str, Any]]] = {"trainset": [], "testset": []}
        files = {s: (tmp / f"{s}.jsonl").open("w", encoding="utf-8", newline="\n") for s in SPLITS}
        try:
            for i in range(n):
                case = synthesize_case(i, seed, image_size, split_fractions=fractions,
                                       questions_per_image=questions_per_image)
                Image.fromarray(case.image, mode="L").save(tmp / "images" / case.image_name, format="PNG",
                                                           compress_level=1)
                files[case.split].write(json.dumps(case.to_record(), ensure_ascii=False) + "\n")
                counts[case.split] += 1
                for o in CHEXPERT_OBSERVATIONS:
                    val = case.labels[o]
                    label_counts[o]["blank" if val is None else str(val)] += 1
                vqa["testset" if case.split == "test" else "trainset"].extend(_mevf(q) for q in case.questions)
        finally:
            for fh in files.values():
                fh.close()
        for name, items in vqa.items():
            (tmp / f"{name}.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
        meta = {"generator": GENERATOR, "version": VERSION, "n": n, "image_size": image_size, "seed": int(seed),
                "split_fractions": list(fractions), "counts": counts, "label_counts": label_counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp made it 0700
        try:
            os.rename(tmp, output)     # replaces an empty folder; fails on a non-empty one
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            raise FileExistsError(f"{output} appeared while generating and is not empty ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticSummary(root=output, n=n, image_size=image_size, seed=int(seed), counts=counts,
                            label_counts=label_counts)

