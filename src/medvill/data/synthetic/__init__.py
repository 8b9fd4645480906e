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

Modules
-------
``observations`` (observation names), ``cases`` (data classes), ``anatomy``, ``geometry``
(rendering helpers), ``render`` (the radiograph), ``paint`` (finding painters and devices),
``findings`` (what is drawn), ``phrases`` and ``reports`` (what is said), ``questions``
(VQA) and ``generate`` (cases and files).
"""

from __future__ import annotations

from .anatomy import sample_anatomy
from .cases import Anatomy, Finding, Sentence, SyntheticCase, SyntheticSummary
from .findings import sample_findings
from .generate import (
    GENERATOR,
    SPLITS,
    VERSION,
    cardiothoracic_ratio,
    case_id,
    case_split,
    generate_synthetic,
    synthesize_case,
)
from .observations import ABNORMALITIES, ATE, CARD, CON, ECM, EDE, EFF, FRA, LES, NF, OPA, PLO, PNA, PTX, SD
from .questions import make_questions
from .render import render_image
from .reports import aggregate_labels, write_report

__all__ = [
    "ABNORMALITIES", "ATE", "CARD", "CON", "ECM", "EDE", "EFF", "FRA", "GENERATOR", "LES", "NF", "OPA", "PLO", "PNA",
    "PTX", "SD", "SPLITS", "VERSION", "Anatomy", "Finding", "Sentence", "SyntheticCase", "SyntheticSummary",
    "aggregate_labels", "cardiothoracic_ratio", "case_id", "case_split", "generate_synthetic", "make_questions",
    "render_image", "sample_anatomy", "sample_findings", "synthesize_case", "write_report",
]
