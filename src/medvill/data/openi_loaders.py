"""Open-I loaders for two of its layouts: NLM XML (a) and the Kaggle CSV pair (b), and the
record building they share with R2Gen's ``annotation.json`` (c, :mod:`medvill.data.openi_r2gen`).

The layouts, the hash split and the labels are described in :mod:`medvill.data.openi`, whose
:func:`~medvill.data.openi.load_openi` picks the layout; the fourth layout, MedViLL's split
files, is read by :mod:`medvill.data.medvill_jsonl`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .choices import SECTIONS
from .common import (
    Labeler,
    RowPolicy,
    check_choice,
    check_fractions,
    check_split,
    clean_text,
    find_optional,
    hash_split,
    natural_key,
    read_csv,
    run_labeler,
)
from .label_values import blank_label_rows
from .openi_reports import OpenIReport, find_xml_source, mesh_to_text, read_openi_xml
from .openi_views import frontal_image, report_image_views
from .records import Record, SkipReport, choose_text

log = logging.getLogger("medvill.data.openi")  # the logger of every Open-I module

LABEL_SOURCES = ("mesh", "report", "none")
VIEW_SOURCES = ("auto", "projections", "dicom", "first")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
PROJECTIONS_NAMES = ("indiana_projections.csv",)
REPORTS_CSV_NAMES = ("indiana_reports.csv",)
DICOM_METADATA_NAMES = ("nlmcxr_dicom_metadata.csv",)


# ---------------------------------------------------------------------------------------
# shared record building
# ---------------------------------------------------------------------------------------


def label_texts(texts: list[str], labeler: Labeler | None) -> np.ndarray:
    """Labels for texts; empty texts get blank labels and are not sent to the labeler."""
    out = blank_label_rows(len(texts))
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if idx:
        out[idx] = run_labeler(labeler, [texts[i] for i in idx])
    return out


def _label_matrix(mode: str, mesh_texts: list[str], reports: list[str], labeler: Labeler | None) -> np.ndarray:
    """(N, 14) labels of the chosen reports: the labeler on the MeSH terms written as text
    (``mesh``), on the reports themselves (``report``), or blank (NaN) otherwise."""
    if mode == "mesh":
        return label_texts(mesh_texts, labeler)
    if mode == "report":
        return label_texts(reports, labeler)
    return blank_label_rows(len(reports))


def first_dir(*candidates: Path) -> Path:
    """The first of ``candidates`` that is a folder, else the last one."""
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[-1]


# ---------------------------------------------------------------------------------------
# layout (a): NLM XML
# ---------------------------------------------------------------------------------------


def _view_files(root: Path, view_source: str, projections: str | Path | None,
                dicom_metadata: str | Path | None) -> tuple[Path | None, Path | None]:
    """The projections table and DICOM metadata that ``view_source`` reads (None: not read)."""
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
    return proj_path, dicom_path


def _xml_views(root: Path, reports: list[OpenIReport], proj_path: Path | None, dicom_path: Path | None,
               policy: str, rows: RowPolicy) -> dict[str, str]:
    """The views of the reports' images (warns when there is none to go by)."""
    views = report_image_views((i for rep in reports for i in rep.images), projections=proj_path,
                               dicom_metadata=dicom_path, policy=policy, skips=rows.skips)
    if not views:
        log.warning("Open-I: no projections table or DICOM metadata found in %s; using each report's first "
                    "image, whatever its view", root)
    return views


def _choose_xml_reports(reports: list[OpenIReport], split: str, fractions: tuple[float, float, float],
                        section: str, view_source: str, views: dict[str, str], image_dir: Path,
                        check_images: bool, rows: RowPolicy) -> list[tuple[OpenIReport, str, str]]:
    """``(report, image id, text)`` of the reports of ``split`` that pair with an image."""
    chosen: list[tuple[OpenIReport, str, str]] = []
    n_unknown = 0
    for rep in reports:
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
            picked, unknown_view = frontal_image(rep.images, views)
            if picked is None:
                rows.exclude("no frontal image", rep.where)
                continue
            image_id = picked
            n_unknown += unknown_view
        image = image_dir / f"{image_id}.png"
        if check_images and not image.is_file():
            rows.bad(f"missing image {image}", rep.where)
            continue
        chosen.append((rep, image_id, text))
    if n_unknown and views:
        log.warning("Open-I: %d reports have no image of known frontal view; used their first image of "
                    "unknown view", n_unknown)
    return chosen


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
    """Open-I from the NLM XML reports and PNG images (layout (a) of :mod:`medvill.data.openi`).

    ``root`` holds ``ecgen-radiology/*.xml`` or ``NLMCXR_reports.tgz`` (or pass ``reports=``),
    the images as ``<parentImage id>.png`` in ``images`` (default: the first folder of
    ``root/images``, ``root/NLMCXR_png``, ``root``), and optionally
    ``indiana_projections.csv`` / ``nlmcxr_dicom_metadata.csv(.gz)`` for the view.
    ``view_source``: ``"auto"`` (projections table, then DICOM metadata, then the first
    image), ``"projections"`` / ``"dicom"`` (that file only; an error if absent), ``"first"``
    (always the report's first image).  Text: ``section`` of FINDINGS / IMPRESSION (the
    longer one by default).  Labels and split: see :mod:`medvill.data.openi`.
    """
    check_split(split)
    check_choice("section", section, SECTIONS)
    check_choice("labels", labels, LABEL_SOURCES)
    check_choice("view_source", view_source, VIEW_SOURCES)
    fractions = check_fractions(split_fractions)
    for t in mesh_terms:
        check_choice("MeSH term kind", t, ("major", "automatic"))
    root = Path(root)
    source = find_xml_source(root, reports)
    image_dir = Path(images) if images is not None else first_dir(root / "images", root / "NLMCXR_png", root)
    proj_path, dicom_path = _view_files(root, view_source, projections, dicom_metadata)

    rows = RowPolicy(policy, skips, source)
    all_reports = read_openi_xml(source, policy=policy, skips=rows.skips)
    views = {} if view_source == "first" else _xml_views(root, all_reports, proj_path, dicom_path, policy, rows)
    chosen = _choose_xml_reports(all_reports, split, fractions, section, view_source, views, image_dir,
                                 check_images, rows)

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


@dataclass
class _CsvReport:
    """A row of ``indiana_reports.csv`` paired with its frontal image."""

    uid: str
    image: str  # file name under the image folder
    text: str
    findings: str
    impression: str
    mesh: str  # the MeSH column: major terms joined by ";"


def _csv_files(root: Path, reports_csv: str | Path | None, projections_csv: str | Path | None) -> tuple[Path, Path]:
    """The reports and projections CSVs (given, or found in ``root``)."""
    rep_path = Path(reports_csv) if reports_csv is not None else find_optional(root, REPORTS_CSV_NAMES)
    proj_path = Path(projections_csv) if projections_csv is not None else find_optional(root, PROJECTIONS_NAMES)
    if rep_path is None or not rep_path.is_file():
        raise FileNotFoundError(f"Open-I CSV layout: {rep_path or root / REPORTS_CSV_NAMES[0]} not found")
    if proj_path is None or not proj_path.is_file():
        raise FileNotFoundError(f"Open-I CSV layout: {proj_path or root / PROJECTIONS_NAMES[0]} not found")
    return rep_path, proj_path


def _read_projections(path: Path, rows: RowPolicy) -> dict[str, list[tuple[str, str]]]:
    """uid -> ``(filename, "frontal" | "lateral")`` of its images, in file order."""
    images_of: dict[str, list[tuple[str, str]]] = {}
    for lineno, row in read_csv(path, ("uid", "filename", "projection"), rows):
        proj = row["projection"].strip().lower()
        if proj not in ("frontal", "lateral") or not row["filename"]:
            rows.bad(f"bad projection row (projection {row['projection']!r}, filename {row['filename']!r})",
                     f"{path}:{lineno}")
            continue
        images_of.setdefault(row["uid"], []).append((row["filename"], proj))
    return images_of


def _choose_csv_reports(path: Path, images_of: dict[str, list[tuple[str, str]]], split: str,
                        fractions: tuple[float, float, float], section: str, image_dir: Path, check_images: bool,
                        rows: RowPolicy) -> list[_CsvReport]:
    """The reports of ``split`` in the reports CSV that pair with a frontal image."""
    chosen: list[_CsvReport] = []
    seen: set[str] = set()
    for lineno, row in read_csv(path, ("uid", "MeSH", "findings", "impression"), rows):
        where = f"{path}:{lineno}"
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
        chosen.append(_CsvReport(uid, frontal[0], text, findings, impression, row["MeSH"]))
    return chosen


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
    """Open-I from the Kaggle CSV pair (layout (b) of :mod:`medvill.data.openi`).

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
    rep_path, proj_path = _csv_files(root, reports_csv, projections_csv)
    image_dir = Path(images) if images is not None else first_dir(
        root / "images" / "images_normalized", root / "images_normalized", root / "images", root)
    rows = RowPolicy(policy, skips, rep_path)
    images_of = _read_projections(proj_path, rows)
    chosen = _choose_csv_reports(rep_path, images_of, split, fractions, section, image_dir, check_images, rows)

    mesh = [mesh_to_text(c.mesh.split(";")) for c in chosen] if labels == "mesh" else []
    matrix = _label_matrix(labels, mesh, [c.text for c in chosen], labeler)
    records = [Record(id=c.uid, image=image_dir / c.image, text=c.text, labels=matrix[i].copy(), split=split,
                      findings=c.findings, impression=c.impression)
               for i, c in enumerate(chosen)]
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    return records
