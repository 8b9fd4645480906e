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
  (:func:`load_medvill_jsonl`, shared with MIMIC-CXR).

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
FINDINGS nor IMPRESSION) are always just counted in the :class:`SkipReport`.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    DataError,
    Labeler,
    RowPolicy,
    blank_labels,
    check_choice,
    check_fractions,
    check_split,
    clean_text,
    find_optional,
    hash_split,
    natural_key,
    normalize_split,
    read_csv,
    run_labeler,
)
from .mimic_cxr import load_medvill_jsonl, parse_positive_labels
from .records import Record, SkipReport, choose_text

__all__ = [
    "OpenIReport", "read_openi_xml", "mesh_to_text", "dicom_view", "image_key", "read_image_views", "load_openi_xml",
    "load_openi_csv", "load_r2gen", "load_medvill_jsonl", "parse_positive_labels", "load_openi",
]

log = logging.getLogger(__name__)

SECTIONS = ("longer", "findings", "impression", "both")
LABEL_SOURCES = ("mesh", "report", "none")
VIEW_SOURCES = ("auto", "projections", "dicom", "first")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
PROJECTIONS_NAMES = ("indiana_projections.csv",)
REPORTS_CSV_NAMES = ("indiana_reports.csv",)
DICOM_METADATA_NAMES = ("nlmcxr_dicom_metadata.csv",)
REPORTS_TGZ_NAMES = ("NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz")
R2GEN_NAMES = ("annotation.json", "r2gen_annotation.json")


@dataclass(frozen=True)
class OpenIReport:
    """One NLM Open-I XML report."""

    uid: str                      # "1" for CXR1 / 1.xml
    findings: str
    impression: str
    major: tuple[str, ...] = ()      # MeSH major terms, as written
    automatic: tuple[str, ...] = ()  # MeSH automatic terms
    images: tuple[str, ...] = ()     # parentImage ids, in XML order
    where: str = ""


# ---------------------------------------------------------------------------------------
# XML reports
# ---------------------------------------------------------------------------------------


def _parse_report_xml(data: bytes, fallback_uid: str, where: str) -> OpenIReport:
    root = ET.fromstring(data)
    uid = fallback_uid
    uid_el = root.find("uId")
    if uid_el is not None and uid_el.get("id"):
        m = re.fullmatch(r"CXR(\d+)", uid_el.get("id", "").strip())
        if m:
            uid = m.group(1)
    sections: dict[str, list[str]] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        text = clean_text("".join(el.itertext()))
        if text:
            sections.setdefault(label, []).append(text)
    mesh = root.find("MeSH")
    major = [clean_text(e.text) for e in mesh.findall("major")] if mesh is not None else []
    automatic = [clean_text(e.text) for e in mesh.findall("automatic")] if mesh is not None else []
    images = [p.get("id", "").strip() for p in root.findall("parentImage") if p.get("id", "").strip()]
    return OpenIReport(uid=uid, findings=" ".join(sections.get("FINDINGS", [])),
                       impression=" ".join(sections.get("IMPRESSION", [])),
                       major=tuple(t for t in major if t), automatic=tuple(t for t in automatic if t),
                       images=tuple(images), where=where)


def _xml_sources(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """(where, file stem, bytes) of every XML report in a .tgz or a folder."""
    if source.is_file():
        found = []
        with tarfile.open(source, "r|*") as tf:  # streamed: one pass over the compressed file
            for m in tf:
                if m.isfile() and m.name.endswith(".xml") and not Path(m.name).name.startswith("._"):
                    fh = tf.extractfile(m)
                    if fh is not None:
                        found.append((f"{source}:{m.name}", Path(m.name).stem, fh.read()))
        yield from sorted(found, key=lambda f: natural_key(f[0]))
    else:
        folder = source / "ecgen-radiology" if (source / "ecgen-radiology").is_dir() else source
        for p in sorted(folder.glob("*.xml"), key=lambda p: natural_key(p.name)):
            yield str(p), p.stem, p.read_bytes()


def _find_xml_source(root: Path, reports: str | Path | None) -> Path:
    if reports is not None:
        src = Path(reports)
        if not src.exists():
            raise FileNotFoundError(f"Open-I reports not found: {src}")
        return src
    if (root / "ecgen-radiology").is_dir():
        return root / "ecgen-radiology"
    for name in REPORTS_TGZ_NAMES:
        if (root / name).is_file():
            return root / name
    if root.is_dir() and any(root.glob("*.xml")):
        return root
    raise FileNotFoundError(f"Open-I XML reports not found in {root}: expected ecgen-radiology/*.xml or "
                            f"{' / '.join(REPORTS_TGZ_NAMES)}")


def _parse_all(source: Path) -> tuple[tuple[str, OpenIReport | None, str], ...]:
    out: list[tuple[str, OpenIReport | None, str]] = []
    for where, stem, data in _xml_sources(source):
        try:
            out.append((where, _parse_report_xml(data, stem, where), ""))
        except ET.ParseError as exc:
            out.append((where, None, f"not valid XML ({exc})"))
    return tuple(out)


@lru_cache(maxsize=2)
def _parse_archive(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, OpenIReport | None, str], ...]:
    """Parsed reports of one archive, cached per (path, size, mtime): the splits of one run
    read the same archive."""
    return _parse_all(Path(path))


def read_openi_xml(source: str | Path, *, policy: str = "skip", skips: SkipReport | None = None) -> list[OpenIReport]:
    """Every report of an Open-I XML collection: a ``.tgz`` as NLM ships it, an
    ``ecgen-radiology`` folder, or a folder holding it.  Sorted by uid; an XML file that
    cannot be parsed, or a uid seen twice, is a bad row."""
    source = Path(source)
    rows = RowPolicy(policy, skips, source)
    if source.is_file():
        st = source.stat()
        parsed = _parse_archive(str(source.resolve()), st.st_size, st.st_mtime_ns)
    else:
        parsed = _parse_all(source)
    reports: dict[str, OpenIReport] = {}
    for where, rep, error in parsed:
        if rep is None:
            rows.bad(error, where)
            continue
        if rep.uid in reports:
            rows.bad(f"report uid {rep.uid} appears twice (also {reports[rep.uid].where})", where)
            continue
        reports[rep.uid] = rep
    rows.finish(log)
    return [reports[k] for k in sorted(reports, key=natural_key)]


# ---------------------------------------------------------------------------------------
# MeSH -> text
# ---------------------------------------------------------------------------------------

NORMAL_TEXT = "no acute cardiopulmonary abnormality"


def mesh_term_text(term: str) -> str:
    """One MeSH term as a phrase for the labeler (see the module docstring); "" to drop it."""
    term = clean_text(term)
    if not term or term.lower() == "no indexing":
        return ""
    if term.lower() == "normal":
        return NORMAL_TEXT
    parts = [p.strip() for p in term.split("/") if p.strip()]
    if not parts:
        return ""
    heading = parts[0]
    if ", " in heading:  # inverted MeSH heading: "Catheters, Indwelling" -> "Indwelling Catheters"
        pieces = [p.strip() for p in heading.split(",") if p.strip()]
        heading = " ".join(pieces[1:] + pieces[:1])
    return " ".join(list(reversed(parts[1:])) + [heading]).lower()


def mesh_to_text(terms: Sequence[str]) -> str:
    """MeSH terms -> report-like text for the labeler: one sentence per term (duplicates
    dropped), e.g. ``["Cardiomegaly/mild", "normal"]`` -> ``"mild cardiomegaly. no acute
    cardiopulmonary abnormality."``; ``""`` when no term is left."""
    out: list[str] = []
    for t in terms:
        phrase = mesh_term_text(t)
        if phrase and phrase not in out:
            out.append(phrase)
    return " ".join(f"{p}." for p in out)


# ---------------------------------------------------------------------------------------
# image views
# ---------------------------------------------------------------------------------------

_LATERAL_POSITIONS = {"LL", "RL", "LATERAL", "LARGE LATERAL", "LAT", "XTABLE LATERAL"}
_FUJI_LATERAL_CODE = "60003"


def dicom_view(row: dict[str, str]) -> str:
    """``"frontal"`` / ``"lateral"`` / ``"unknown"`` from one row of the Open-I DICOM metadata.

    Lateral: ``View Position`` LL / RL / LATERAL / ... or a ``Patient Orientation`` whose row
    direction is A or P (the image's x axis runs front-back).  Frontal: ``View Position`` PA or
    AP, except with ``Acquisition Device Processing Code`` 60003 (a Fuji exposure-menu code
    that, in this collection, marks lateral images written with the default PA tag: 1,342 of
    the 1,359 such images are lateral in the projections table).  Anything else: unknown.
    """
    vp = " ".join(row.get("View Position", "").upper().split())
    orient = re.findall(r"[A-Z]+", row.get("Patient Orientation", "").upper())
    if vp in _LATERAL_POSITIONS or (orient and orient[0] in ("A", "P")):
        return "lateral"
    if vp in ("PA", "AP"):
        if row.get("Acquisition Device Processing Code", "").strip() == _FUJI_LATERAL_CODE:
            return "lateral"
        return "frontal"
    return "unknown"


_IMAGE_KEY = re.compile(r"(?:CXR)?(\d+)_(?:\d+_)?(IM-[\d-]+)")


def image_key(name: str) -> str:
    """The key that matches one Open-I image across the three sources, ``"<uid>/IM-...``.

    The XML ``parentImage`` id (``CXR1_1_IM-0001-4001``, also the PNG name), the DICOM
    metadata ``imageid`` (``CXR1_IM-0001-4001``) and the projections ``filename``
    (``1_IM-0001-4001.dcm.png``) all give ``"1/IM-0001-4001"``.  A name of another form is
    returned without extension.
    """
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".dcm.png", ".png", ".dcm", ".jpg"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    m = _IMAGE_KEY.fullmatch(base)
    return f"{m.group(1)}/{m.group(2)}" if m else base


def read_image_views(*, projections: str | Path | None = None, dicom_metadata: str | Path | None = None,
                     policy: str = "skip", skips: SkipReport | None = None) -> dict[str, str]:
    """:func:`image_key` -> ``"frontal"`` / ``"lateral"`` / ``"unknown"`` from the projections table
    (preferred) and / or the DICOM metadata (for images the table lacks)."""
    views: dict[str, str] = {}
    if dicom_metadata is not None:
        path = Path(dicom_metadata)
        rows = RowPolicy(policy, skips, path)
        for _, row in read_csv(path, ("imageid", "View Position"), rows,
                               optional=("Patient Orientation", "Acquisition Device Processing Code")):
            views[image_key(row["imageid"])] = dicom_view(row)
        rows.finish(log)
    if projections is not None:
        path = Path(projections)
        rows = RowPolicy(policy, skips, path)
        for lineno, row in read_csv(path, ("filename", "projection"), rows, optional=()):
            proj = row["projection"].strip().lower()
            if proj not in ("frontal", "lateral"):
                rows.bad(f"unknown projection {row['projection']!r} (expected Frontal or Lateral)", f"{path}:{lineno}")
                continue
            views[image_key(row["filename"])] = proj
        rows.finish(log)
    return views


# ---------------------------------------------------------------------------------------
# shared record building
# ---------------------------------------------------------------------------------------


def _label_rows(texts: list[str], labeler: Labeler | None) -> np.ndarray:
    """Labels for texts; empty texts get blank labels and are not sent to the labeler."""
    out = np.full((len(texts), len(blank_labels())), np.nan, dtype=np.float32)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if idx:
        out[idx] = run_labeler(labeler, [texts[i] for i in idx])
    return out


def _label_matrix(mode: str, mesh_texts: list[str], reports: list[str], labeler: Labeler | None) -> np.ndarray:
    """(N, 14) labels of the chosen reports: the labeler on the MeSH terms written as text
    (``mesh``), on the reports themselves (``report``), or blank (NaN) otherwise."""
    if mode == "mesh":
        return _label_rows(mesh_texts, labeler)
    if mode == "report":
        return _label_rows(reports, labeler)
    return np.full((len(reports), len(blank_labels())), np.nan, dtype=np.float32)


def _first_dir(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[-1]


# ---------------------------------------------------------------------------------------
# layout (a): NLM XML
# ---------------------------------------------------------------------------------------


def load_openi_xml(
    root: str | Path,
    split: str,
    *,
    reports: str | Path | None = None,
    images: str | Path | None = None,
    projections: str | Path | None = None,
    dicom_metadata: str | Path | None = None,
    view_source: str = "auto",
    section: str = "longer",
    labels: str = "mesh",
    mesh_terms: Sequence[str] = ("major",),
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    check_images: bool = True,
    policy: str = "skip",
    labeler: Labeler | None = None,
    skips: SkipReport | None = None,
) -> list[Record]:
    """Open-I from the NLM XML reports and PNG images (layout (a) of the module docstring).

    ``root`` holds ``ecgen-radiology/*.xml`` or ``NLMCXR_reports.tgz`` (or pass ``reports=``),
    the images as ``<parentImage id>.png`` in ``images`` (default: the first folder of
    ``root/images``, ``root/NLMCXR_png``, ``root``), and optionally
    ``indiana_projections.csv`` / ``nlmcxr_dicom_metadata.csv(.gz)`` for the view.
    ``view_source``: ``"auto"`` (projections table, then DICOM metadata, then the first
    image), ``"projections"`` / ``"dicom"`` (that file only; an error if absent), ``"first"``
    (always the report's first image).  Text: ``section`` of FINDINGS / IMPRESSION (the
    longer one by default).  Labels and split: see the module docstring.
    """
    check_split(split)
    check_choice("section", section, SECTIONS)
    check_choice("labels", labels, LABEL_SOURCES)
    check_choice("view_source", view_source, VIEW_SOURCES)
    fractions = check_fractions(split_fractions)
    for t in mesh_terms:
        check_choice("MeSH term kind", t, ("major", "automatic"))
    root = Path(root)
    source = _find_xml_source(root, reports)
    image_dir = Path(images) if images is not None else _first_dir(root / "images", root / "NLMCXR_png", root)
    proj_path = Path(projections) if projections is not None else (
        find_optional(root, PROJECTIONS_NAMES) if view_source in ("auto", "projections") else None)
    dicom_path = Path(dicom_metadata) if dicom_metadata is not None else (
        find_optional(root, DICOM_METADATA_NAMES) if view_source in ("auto", "dicom") else None)
    if view_source == "projections" and proj_path is None:
        raise FileNotFoundError(f"view_source='projections' but {PROJECTIONS_NAMES[0]} is not in {root}")
    if view_source == "dicom" and dicom_path is None:
        raise FileNotFoundError(f"view_source='dicom' but {DICOM_METADATA_NAMES[0]}(.gz) is not in {root}")
    if view_source == "projections":
        dicom_path = None
    if view_source == "dicom":
        proj_path = None

    rows = RowPolicy(policy, skips, source)
    all_reports = read_openi_xml(source, policy=policy, skips=rows.skips)
    views: dict[str, str] = {}
    if view_source != "first":
        views = read_image_views(projections=proj_path, policy=policy, skips=rows.skips) if proj_path else {}
        keys = {image_key(i) for rep in all_reports for i in rep.images}
        if dicom_path is not None and not keys <= views.keys():  # DICOM metadata only where needed
            dicom = read_image_views(dicom_metadata=dicom_path, policy=policy, skips=rows.skips)
            views = {**dicom, **views}
        if not views:
            log.warning("Open-I: no projections table or DICOM metadata found in %s; using each report's first "
                        "image, whatever its view", root)
    chosen: list[tuple[OpenIReport, str, str]] = []
    n_unknown = 0
    for rep in all_reports:
        if hash_split(rep.uid, fractions) != split:
            continue
        if not rep.images:
            rows.exclude("no image", rep.where)
            continue
        text = choose_text(rep.findings, rep.impression, section)
        if not text:
            rows.exclude("no findings or impression", rep.where)
            continue
        if view_source == "first":
            image_id = rep.images[0]
        else:
            kinds = [views.get(image_key(i), "unknown") for i in rep.images]
            if "frontal" in kinds:
                image_id = rep.images[kinds.index("frontal")]
            elif "unknown" in kinds:
                image_id = rep.images[kinds.index("unknown")]
                n_unknown += 1
            else:
                rows.exclude("no frontal image", rep.where)
                continue
        image = image_dir / f"{image_id}.png"
        if check_images and not image.is_file():
            rows.bad(f"missing image {image}", rep.where)
            continue
        chosen.append((rep, image_id, text))
    if n_unknown and views:
        log.warning("Open-I: %d reports have no image of known frontal view; used their first image of "
                    "unknown view", n_unknown)

    terms = tuple(mesh_terms)
    mesh = [mesh_to_text((rep.major if "major" in terms else ()) + (rep.automatic if "automatic" in terms else ()))
            for rep, _, _ in chosen] if labels == "mesh" else []
    matrix = _label_matrix(labels, mesh, [t for _, _, t in chosen], labeler)
    records = [Record(id=rep.uid, image=image_dir / f"{image_id}.png", text=text, labels=matrix[i].copy(),
                      split=split, findings=rep.findings, impression=rep.impression)
               for i, (rep, image_id, text) in enumerate(chosen)]
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    return records


# ---------------------------------------------------------------------------------------
# layout (b): Kaggle CSV pair
# ---------------------------------------------------------------------------------------


def load_openi_csv(
    root: str | Path,
    split: str,
    *,
    reports_csv: str | Path | None = None,
    projections_csv: str | Path | None = None,
    images: str | Path | None = None,
    section: str = "longer",
    labels: str = "mesh",
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    check_images: bool = True,
    policy: str = "skip",
    labeler: Labeler | None = None,
    skips: SkipReport | None = None,
) -> list[Record]:
    """Open-I from the Kaggle CSV pair (layout (b) of the module docstring).

    ``indiana_reports.csv`` (columns ``uid, MeSH, findings, impression`` used; ``MeSH`` holds
    the major terms joined by ``;``) and ``indiana_projections.csv`` (``uid, filename,
    projection``).  The report's image is its first ``Frontal`` row in the projections file;
    the file is ``images/<filename>`` with ``images`` defaulting to the first folder of
    ``root/images/images_normalized``, ``root/images_normalized``, ``root/images``, ``root``.
    Split, MeSH labels and skips as for the XML layout.
    """
    check_split(split)
    check_choice("section", section, SECTIONS)
    check_choice("labels", labels, LABEL_SOURCES)
    fractions = check_fractions(split_fractions)
    root = Path(root)
    rep_path = Path(reports_csv) if reports_csv is not None else find_optional(root, REPORTS_CSV_NAMES)
    proj_path = Path(projections_csv) if projections_csv is not None else find_optional(root, PROJECTIONS_NAMES)
    if rep_path is None or not rep_path.is_file():
        raise FileNotFoundError(f"Open-I CSV layout: {rep_path or root / REPORTS_CSV_NAMES[0]} not found")
    if proj_path is None or not proj_path.is_file():
        raise FileNotFoundError(f"Open-I CSV layout: {proj_path or root / PROJECTIONS_NAMES[0]} not found")
    image_dir = Path(images) if images is not None else _first_dir(
        root / "images" / "images_normalized", root / "images_normalized", root / "images", root)
    rows = RowPolicy(policy, skips, rep_path)

    images_of: dict[str, list[tuple[str, str]]] = {}
    for lineno, row in read_csv(proj_path, ("uid", "filename", "projection"), rows):
        proj = row["projection"].strip().lower()
        if proj not in ("frontal", "lateral") or not row["filename"]:
            rows.bad(f"bad projection row (projection {row['projection']!r}, filename {row['filename']!r})",
                     f"{proj_path}:{lineno}")
            continue
        images_of.setdefault(row["uid"], []).append((row["filename"], proj))

    chosen: list[tuple[str, str, str, str, str, str]] = []
    seen: set[str] = set()
    for lineno, row in read_csv(rep_path, ("uid", "MeSH", "findings", "impression"), rows):
        where = f"{rep_path}:{lineno}"
        uid = row["uid"]
        if not uid:
            rows.bad("blank uid", where)
            continue
        if uid in seen:
            rows.bad(f"uid {uid} appears twice", where)
            continue
        seen.add(uid)
        if hash_split(uid, fractions) != split:
            continue
        findings, impression = clean_text(row["findings"]), clean_text(row["impression"])
        imgs = images_of.get(uid, [])
        if not imgs:
            rows.exclude("no image", where)
            continue
        text = choose_text(findings, impression, section)
        if not text:
            rows.exclude("no findings or impression", where)
            continue
        frontal = [f for f, p in imgs if p == "frontal"]
        if not frontal:
            rows.exclude("no frontal image", where)
            continue
        image = image_dir / frontal[0]
        if check_images and not image.is_file():
            rows.bad(f"missing image {image}", where)
            continue
        chosen.append((uid, frontal[0], text, findings, impression, row["MeSH"]))

    mesh = [mesh_to_text(c[5].split(";")) for c in chosen] if labels == "mesh" else []
    matrix = _label_matrix(labels, mesh, [c[2] for c in chosen], labeler)
    records = [Record(id=uid, image=image_dir / fname, text=text, labels=matrix[i].copy(), split=split,
                      findings=findings, impression=impression)
               for i, (uid, fname, text, findings, impression, _) in enumerate(chosen)]
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    return records


# ---------------------------------------------------------------------------------------
# layout (c): R2Gen annotation.json
# ---------------------------------------------------------------------------------------


def load_r2gen(
    path_or_root: str | Path,
    split: str,
    *,
    images: str | Path | None = None,
    image_index: int = 0,
    labels: str = "labeler",
    check_images: bool = True,
    policy: str = "skip",
    labeler: Labeler | None = None,
    skips: SkipReport | None = None,
) -> list[Record]:
    """IU X-ray in R2Gen's ``annotation.json`` (layout (c) of the module docstring).

    ``{"train": [...], "val": [...], "test": [...]}``, each record ``{"id", "report",
    "image_path": ["<id>/0.png", "<id>/1.png"], "split"}``.  The top-level key gives the
    split (``val`` = ``validate``); a key that is no split name (one copy has a key of four
    spaces for the test set) falls back to each record's ``split`` field; a record whose
    ``split`` field contradicts its key is a bad row.  The image is ``image_path[image_index]``
    (R2Gen lists the frontal view first) under ``images`` (default: ``images/`` next to the
    JSON file, else its folder).  Text: ``report`` (R2Gen's findings text).  Labels:
    ``"labeler"`` on that text (default) or ``"none"`` (blank).
    """
    check_split(split)
    check_choice("labels", labels, ("labeler", "none"))
    p = Path(path_or_root)
    if p.is_dir():
        found = find_optional(p, R2GEN_NAMES)
        if found is None:
            raise FileNotFoundError(f"R2Gen annotation not found in {p}; expected {' or '.join(R2GEN_NAMES)}")
        p = found
    if not p.is_file():
        raise FileNotFoundError(f"R2Gen annotation not found: {p}")
    image_dir = Path(images) if images is not None else _first_dir(p.parent / "images", p.parent)
    rows = RowPolicy(policy, skips, p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected an object of split name -> list of records")
    chosen: list[tuple[str, Path, str]] = []
    seen: set[str] = set()
    for key, items in data.items():
        key_split = normalize_split(key)
        if not isinstance(items, list):
            raise DataError(f"{p}: key {key!r} is not a list of records")
        for j, rec in enumerate(items):
            where = f"{p}:{key!r}[{j}]"
            if not isinstance(rec, dict):
                rows.bad("not a JSON object", where)
                continue
            missing = [k for k in ("id", "report", "image_path") if k not in rec]
            if missing:
                rows.bad(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", where)
                continue
            rec_split = normalize_split(rec.get("split")) if rec.get("split") is not None else None
            if key_split and rec_split and key_split != rec_split:
                rows.bad(f"split field {rec['split']!r} contradicts key {key!r}", where)
                continue
            eff = key_split or rec_split
            if eff is None:
                rows.bad(f"no split: key {key!r} is no split name and the record has no split field", where)
                continue
            if eff != split:
                continue
            rid = str(rec["id"]).strip()
            if not rid or rid in seen:
                rows.bad(f"blank or duplicate id {rid!r}", where)
                continue
            paths = rec["image_path"] if isinstance(rec["image_path"], list) else [rec["image_path"]]
            if len(paths) <= image_index:
                rows.bad(f"image_path has {len(paths)} entries, no index {image_index}", where)
                continue
            text = clean_text(rec["report"])
            if not text:
                rows.bad("empty report", where)
                continue
            image = image_dir / str(paths[image_index])
            if check_images and not image.is_file():
                rows.bad(f"missing image {image}", where)
                continue
            seen.add(rid)
            chosen.append((rid, image, text))
    chosen.sort(key=lambda c: natural_key(c[0]))
    matrix = (_label_rows([c[2] for c in chosen], labeler) if labels == "labeler"
              else np.full((len(chosen), len(blank_labels())), np.nan, dtype=np.float32))
    records = [Record(id=rid, image=image, text=text, labels=matrix[i].copy(), split=split)
               for i, (rid, image, text) in enumerate(chosen)]
    rows.finish(log)
    return records


# ---------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------

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
    if any((root / n).is_file() for n in ("Train.jsonl", "train.jsonl", "Test.jsonl", "test.jsonl")) or (
            root / "medvill_split").is_dir():
        return "medvill"
    raise FileNotFoundError(f"no Open-I data found in {root}: expected ecgen-radiology/ or NLMCXR_reports.tgz, "
                            f"indiana_reports.csv, annotation.json, or Train/Valid/Test.jsonl")


def load_openi(root: str | Path, split: str, *, layout: str = "auto", **kwargs: Any) -> list[Record]:
    """Open-I in any of the four layouts (``layout="auto"``: :func:`detect_layout`); keyword
    arguments go to :func:`load_openi_xml`, :func:`load_openi_csv`, :func:`load_r2gen` or
    :func:`load_medvill_jsonl`."""
    check_choice("layout", layout, LAYOUTS)
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "xml":
        return load_openi_xml(root, split, **kwargs)
    if layout == "csv":
        return load_openi_csv(root, split, **kwargs)
    if layout == "r2gen":
        return load_r2gen(root, split, **kwargs)
    if root.is_dir() and not any(root.glob("*.jsonl")) and (root / "medvill_split").is_dir():
        root = root / "medvill_split"
    return load_medvill_jsonl(root, split, **kwargs)
