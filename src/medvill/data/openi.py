"""Open-I / Indiana University chest X-ray collection (IU X-ray), in four layouts.

Getting the data
----------------
* NLM distribution (https://openi.nlm.nih.gov/faq, "What data is available for download"):
  ``NLMCXR_reports.tgz`` (3,955 XML reports, ``ecgen-radiology/<n>.xml``) and
  ``NLMCXR_png.tgz`` (the images as ``CXR<n>_<...>.png``, one file per ``parentImage id``).
  ``nlmcxr_dicom_metadata.csv.gz`` (DICOM header fields per image; ships with the
  torchxrayvision package) helps pick the frontal image.
* Kaggle "Chest X-rays (Indiana University)": ``indiana_reports.csv`` +
  ``indiana_projections.csv`` + ``images/images_normalized/<uid>_IM-....dcm.png``.
* R2Gen (github.com/cuhksz-nlp/R2Gen): ``iu_xray/annotation.json`` + ``iu_xray/images/<id>/0.png``.
* MedViLL (github.com/SuperSupermoon/MedViLL, ``data/openi``): ``Train/Valid/Test.jsonl``
  (:func:`~medvill.data.medvill_jsonl.load_medvill_jsonl`, shared with MIMIC-CXR).

There is no official Open-I split.  For the XML and CSV layouts the split is a hash of the
report uid (:func:`medvill.data.common.hash_split`: SHA-256 of the uid string, e.g. ``"1"``,
as a number u in [0, 1); train if u < 0.7, validate if u < 0.8, else test by default), so a
report keeps its split whatever else is in the folder, and the XML and CSV layouts agree.

Record ids are the report uid (``"1"`` for ``CXR1`` / ``1.xml``; the ids of the MedViLL
files), except R2Gen whose ids are its own (``"CXR2384_IM-0942"``).  Records are sorted by id.

Frontal image (XML layout)
--------------------------
Each image gets a view: from ``indiana_projections.csv`` when it is found (``projection``
Frontal / Lateral; images are matched across files by :func:`image_key`), else from
``nlmcxr_dicom_metadata.csv(.gz)`` (:func:`dicom_view`), else unknown.  The report's
image is its **first frontal image in XML order**; if none is frontal, its first image of
unknown view (the number of such reports is logged as a warning); a report whose images
are all lateral, or that lists no image, is left out (counted).  In the DICOM metadata the
``View Position`` tag is unreliable in this collection: of the 7,465 images also in the
projections table, 1,368 lateral images say ``PA``; :func:`dicom_view` therefore also uses the
patient orientation and the Fuji processing code (measured against the projections table: the
DICOM rule picks a frontal image for 3,621 of the 3,689 reports that have one, 98.2 %).

Labels from MeSH
----------------
The paper runs the CheXpert labeler on the MeSH annotation (``labels="mesh"``, default for the
XML and CSV layouts).  :func:`mesh_to_text` turns the terms into one sentence each:
``"Cardiomegaly/mild"`` -> ``"mild cardiomegaly."``, ``"Opacity/lung/base/left"`` ->
``"left base lung opacity."`` (qualifiers in reverse order, then the heading), inverted
headings are put back in order (``"Catheters, Indwelling/right"`` -> ``"right indwelling
catheters."``), ``"normal"`` -> ``"no acute cardiopulmonary abnormality."`` (the labeler's No
Finding) and ``"No Indexing"`` is dropped; a report with no term left gets blank (nan) labels
without calling the labeler.  By default only the ``major`` terms (indexed by people) are
used: the ``automatic`` ones are machine-extracted from the report and turn hedged mentions
into bare terms (e.g. 1019.xml: "could be secondary to a small effusion" -> automatic
``Pleural Effusion``); pass ``mesh_terms=("major", "automatic")`` to use both.
``labels="report"`` labels the report text instead, ``labels="none"`` leaves labels blank.

Bad rows (unreadable XML, truncated CSV line, missing image file with ``check_images``) follow
``policy``; reports the data set itself cannot pair (no image, only lateral images, neither
FINDINGS nor IMPRESSION) are always just counted in the
:class:`~medvill.data.records.SkipReport`.

Modules
-------
This module picks the layout (:func:`load_openi`, :func:`detect_layout`); the work is done in
:mod:`medvill.data.openi_reports` (XML reports, MeSH -> text), :mod:`medvill.data.openi_views`
(frontal image), :mod:`medvill.data.openi_loaders` (layouts (a) and (b)),
:mod:`medvill.data.openi_r2gen` (layout (c)) and :mod:`medvill.data.medvill_jsonl` (layout (d));
the names below are importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import check_choice, find_optional
from .label_values import parse_positive_labels
from .medvill_jsonl import MEDVILL_FILES, load_medvill_jsonl
from .openi_loaders import REPORTS_CSV_NAMES, load_openi_csv, load_openi_xml
from .openi_r2gen import R2GEN_NAMES, load_r2gen
from .openi_reports import REPORTS_TGZ_NAMES, OpenIReport, mesh_to_text, read_openi_xml
from .openi_views import dicom_view, image_key, read_image_views
from .records import Record

__all__ = [
    "OpenIReport", "read_openi_xml", "mesh_to_text", "dicom_view", "image_key", "read_image_views", "load_openi_xml",
    "load_openi_csv", "load_r2gen", "load_medvill_jsonl", "parse_positive_labels", "load_openi",
]

LAYOUTS = ("auto", "xml", "csv", "r2gen", "medvill")


def detect_layout(root: str | Path) -> str:
    """Which Open-I layout ``root`` holds, checked in this order: ``xml``
    (``ecgen-radiology/`` or ``NLMCXR_reports.tgz``), ``csv`` (``indiana_reports.csv``),
    ``r2gen`` (``annotation.json`` / ``r2gen_annotation.json``, or ``root`` is that file),
    ``medvill`` (``Train.jsonl``..., or a ``medvill_split/`` folder with them)."""
    root = Path(root)
    if root.is_file():
        return "r2gen" if root.suffix == ".json" else "medvill"
    if (root / "ecgen-radiology").is_dir() or any((root / n).is_file() for n in REPORTS_TGZ_NAMES):
        return "xml"
    if find_optional(root, REPORTS_CSV_NAMES) is not None:
        return "csv"
    if find_optional(root, R2GEN_NAMES) is not None:
        return "r2gen"
    if any((root / n).is_file() for n in MEDVILL_FILES["train"] + MEDVILL_FILES["test"]) or (
            root / "medvill_split").is_dir():
        return "medvill"
    raise FileNotFoundError(f"no Open-I data found in {root}: expected ecgen-radiology/ or NLMCXR_reports.tgz, "
                            f"indiana_reports.csv, annotation.json, or Train/Valid/Test.jsonl")


def load_openi(root: str | Path, split: str, *, layout: str = "auto", **kwargs: Any) -> list[Record]:
    """Open-I in any of the four layouts (``layout="auto"``: :func:`detect_layout`); keyword
    arguments go to :func:`~medvill.data.openi_loaders.load_openi_xml`,
    :func:`~medvill.data.openi_loaders.load_openi_csv`, :func:`~medvill.data.openi_r2gen.load_r2gen`
    or :func:`~medvill.data.medvill_jsonl.load_medvill_jsonl`."""
    check_choice("layout", layout, LAYOUTS)
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "xml":
        return load_openi_xml(root, split, **kwargs)
    if layout == "csv":
        return load_openi_csv(root, split, **kwargs)
    if layout in ("r2gen", "medvill"):  # one report text per study: no sections to choose from
        section = kwargs.pop("section", "longer")
        if section != "longer":
            raise ValueError(f"data.section={section}: Open-I's {layout} layout holds one report text per study, "
                             "not its sections; use the XML or CSV layout to choose a section")
    if layout == "r2gen":
        return load_r2gen(root, split, **kwargs)
    if root.is_dir() and not any(root.glob("*.jsonl")) and (root / "medvill_split").is_dir():
        root = root / "medvill_split"
    return load_medvill_jsonl(root, split, **kwargs)
