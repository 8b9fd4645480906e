"""MIMIC-CXR-JPG image/report pairs (MedViLL's own MIMIC-CXR split files: :mod:`medvill.data.medvill_jsonl`).

Getting the data
----------------
MIMIC-CXR needs a credentialed PhysioNet account and the signed data use agreement:

* images and CSVs: MIMIC-CXR-JPG v2.0.0, https://physionet.org/content/mimic-cxr-jpg/2.0.0/
* reports: ``mimic-cxr-reports.zip`` from MIMIC-CXR v2.0.0,
  https://physionet.org/content/mimic-cxr/2.0.0/ (unzip it; it holds the same ``files/``
  tree with one ``sZZZZZZZZ.txt`` per study)

Expected layout (``root``; the three CSVs may be gzipped or not)::

    root/
      mimic-cxr-2.0.0-metadata.csv(.gz)   one row per image (dicom_id, subject_id, study_id,
                                          ViewPosition, StudyDate, StudyTime, ...)
      mimic-cxr-2.0.0-split.csv(.gz)      one row per image (dicom_id, study_id, subject_id, split)
      mimic-cxr-2.0.0-chexpert.csv(.gz)   one row per study (subject_id, study_id, 14 observations)
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    reports_root/   (default: root)
      files/p10/p10000032/s50414267.txt

Columns are selected by name (extra columns are ignored; a missing one is an error naming the
file and the column).

Rules (:func:`load_mimic_cxr`)
------------------------------
* **Split**: the official ``split`` column (``train`` / ``validate`` / ``test``).
* **View filter**: ``views=("AP",)`` by default, as in the paper (AP image/report pairs only);
  e.g. ``("PA", "AP")`` for all frontal images.  A blank ``ViewPosition`` or one that is not
  a MIMIC-CXR view (:data:`KNOWN_VIEWS`) is a bad row (skipped and counted, or an error); known
  views not in ``views`` are simply left out.
* **One image per study**: among the study's images of the split with a view in ``views``,
  the first by (position of its view in ``views``, StudyDate, StudyTime, dicom_id) - i.e.
  prefer the first view listed, then the earliest acquisition, then the smallest dicom_id
  (blank dates/times sort last).  If the chosen JPG is missing (a counted skip, or an error)
  the next image in that order is used.
* **Report text** (:func:`medvill.data.sections.extract_sections`): FINDINGS and IMPRESSION sections are found by
  their headers (case-insensitive, at the start of a line, ending at the next section
  header, spanning lines); ``section="longer"`` (default, the paper's rule) takes the longer
  of the two, ``"findings"`` / ``"impression"`` one of them with the other as fallback,
  ``"both"`` both.  A report with neither section falls back to its **last paragraph**
  (the last block separated by a blank line, without a leading ``HEADER:`` label), as the
  MIMIC-CXR section script does; ``Record.findings`` and ``Record.impression`` then stay
  empty.  A missing or empty report is a bad row.
* **Labels**: ``labels="official"`` (default) reads the study's row of the chexpert CSV
  (1.0 / 0.0 / -1.0 / blank -> 1 / 0 / -1 / nan); a study without a row there, or with a value
  that is none of these, is a bad row.  ``labels="labeler"`` runs the labeler on the text the
  model reads (after section selection); ``labels="none"`` leaves every label blank.

Record ids are ``"s<study_id>"`` (as in MedViLL's files); records are sorted by id.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS
from .choices import SECTIONS
from .common import (
    Labeler,
    RowPolicy,
    check_choice,
    check_split,
    find_file,
    natural_key,
    normalize_split,
    read_csv,
    read_text,
    run_labeler,
)
from .label_values import blank_labels, label_vector
from .label_values import parse_positive_labels as parse_positive_labels
from .medvill_jsonl import load_medvill_jsonl as load_medvill_jsonl
from .records import Record, SkipReport
from .sections import extract_sections as extract_sections
from .sections import report_text

# (parse_positive_labels, load_medvill_jsonl and extract_sections lived here before
# medvill.data.label_values / medvill_jsonl / sections; they stay importable from here.)

log = logging.getLogger(__name__)

METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv",)
SPLIT_NAMES = ("mimic-cxr-2.0.0-split.csv",)
CHEXPERT_NAMES = ("mimic-cxr-2.0.0-chexpert.csv",)

#: ViewPosition values of MIMIC-CXR-JPG (blank aside).
KNOWN_VIEWS = frozenset({
    "PA", "AP", "LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO", "LPO",
    "XTABLE LATERAL", "SWIMMERS",
})
LABEL_SOURCES = ("official", "labeler", "none")
_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")


@dataclass
class _Image:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    date: float
    time: float
    where: str


@dataclass
class _Study:
    """A study whose image and report were found: what its record is made of."""

    image: _Image
    text: str
    findings: str
    impression: str


def _files_dir(base: Path) -> Path:
    return base / "files" if (base / "files").is_dir() else base


def _number(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        return math.inf
    return v if math.isfinite(v) else math.inf


def _digits(value: str) -> bool:
    return bool(re.fullmatch(r"\d+", value))


def mimic_image_path(files: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    return files / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def mimic_report_path(files: Path, subject_id: str, study_id: str) -> Path:
    return files / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


def _check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` upper-cased, as a tuple; an empty or unknown view is a ValueError."""
    out = tuple(str(v).strip().upper() for v in ((views,) if isinstance(views, str) else views))
    if not out:
        raise ValueError("views must name at least one view, e.g. ('AP',) or ('PA', 'AP')")
    unknown = [v for v in out if v not in KNOWN_VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; MIMIC-CXR views are {', '.join(sorted(KNOWN_VIEWS))}")
    return out


# ---------------------------------------------------------------------------------------
# the three CSVs
# ---------------------------------------------------------------------------------------


def _find_csvs(root: Path, labels: str) -> tuple[Path, Path, Path | None]:
    """The metadata, split and (with ``labels="official"``) chexpert CSVs in ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG folder not found: {root}")
    meta_path = find_file(root, METADATA_NAMES, "MIMIC-CXR-JPG metadata file")
    split_path = find_file(root, SPLIT_NAMES, "MIMIC-CXR-JPG split file")
    chex_path = find_file(root, CHEXPERT_NAMES, "MIMIC-CXR-JPG chexpert label file") if labels == "official" else None
    return meta_path, split_path, chex_path


def _read_official_splits(path: Path, rows: RowPolicy) -> tuple[dict[str, str], set[str]]:
    """dicom_id -> split, and the dicom_ids of bad rows (already counted)."""
    splits: dict[str, str] = {}
    bad: set[str] = set()
    for lineno, row in read_csv(path, ("dicom_id", "split"), rows):
        where = f"{path}:{lineno}"
        value = normalize_split(row["split"])
        if not row["dicom_id"]:
            rows.bad("blank dicom_id", where)
            continue
        if value is None:
            rows.bad(f"unknown split value {row['split']!r} in column 'split' (expected train, validate or test)",
                     where)
        elif splits.get(row["dicom_id"], value) != value:
            rows.bad(f"dicom_id {row['dicom_id']} is listed in two splits", where)
        else:
            splits[row["dicom_id"]] = value
            continue
        bad.add(row["dicom_id"])
    for dicom in bad:
        splits.pop(dicom, None)
    return splits, bad


def _read_chexpert(path: Path, rows: RowPolicy) -> tuple[dict[str, np.ndarray], set[str]]:
    """study_id -> label vector, and the study_ids of bad rows (already counted)."""
    labels: dict[str, np.ndarray] = {}
    bad: set[str] = set()
    for lineno, row in read_csv(path, ("study_id",) + CHEXPERT_OBSERVATIONS, rows):
        where = f"{path}:{lineno}"
        study = row["study_id"]
        if not _digits(study):
            rows.bad(f"study_id {study!r} is not a number", where)
            continue
        if study in labels or study in bad:
            rows.bad(f"study {study} has a second label row", where)
            labels.pop(study, None)
            bad.add(study)
            continue
        try:
            vec = label_vector({name: row[name] for name in CHEXPERT_OBSERVATIONS}, field="column",
                               expected="1.0, 0.0, -1.0")
        except ValueError as exc:
            rows.bad(str(exc), where)
            bad.add(study)
            continue
        labels[study] = vec
    return labels, bad


def _read_images(meta_path: Path, split_path: Path, official: dict[str, str], bad_dicoms: set[str], split: str,
                 views: tuple[str, ...], rows: RowPolicy) -> dict[str, list[_Image]]:
    """study_id -> the images of the metadata file in ``split`` with a view in ``views``."""
    by_study: dict[str, list[_Image]] = {}
    for lineno, row in read_csv(meta_path, _METADATA_COLUMNS, rows):
        where = f"{meta_path}:{lineno}"
        dicom, subject, study = row["dicom_id"], row["subject_id"], row["study_id"]
        if not dicom or not _digits(subject) or not _digits(study):
            rows.bad("blank dicom_id or non-numeric subject_id / study_id", where)
            continue
        if dicom not in official:
            if dicom not in bad_dicoms:  # a bad split row is counted once, there
                rows.bad(f"dicom_id {dicom} is not in {split_path.name}", where)
            continue
        if official[dicom] != split:
            continue
        view = " ".join(row["ViewPosition"].upper().split())
        if not view:
            rows.bad("blank ViewPosition", where)
            continue
        if view not in KNOWN_VIEWS:
            rows.bad(f"unknown ViewPosition {row['ViewPosition']!r}", where)
            continue
        if view not in views:
            continue
        by_study.setdefault(study, []).append(
            _Image(dicom, subject, study, view, _number(row["StudyDate"]), _number(row["StudyTime"]), where))
    return by_study


# ---------------------------------------------------------------------------------------
# one study: its image, its report
# ---------------------------------------------------------------------------------------


def _pick_image(images: list[_Image], views: tuple[str, ...], image_files: Path, check_images: bool,
                rows: RowPolicy) -> _Image | None:
    """The study's first image in the order of the rules whose JPG exists (a missing one is
    a bad row)."""
    for im in sorted(images, key=lambda im: (views.index(im.view), im.date, im.time, im.dicom_id)):
        path = mimic_image_path(image_files, im.subject_id, im.study_id, im.dicom_id)
        if check_images and not path.is_file():
            rows.bad(f"missing image {path}", im.where)
            continue
        return im
    return None


def _read_report(pick: _Image, report_files: Path, section: str, fallback_last_paragraph: bool,
                 rows: RowPolicy) -> _Study | None:
    """The study with its report text, or None when the report is missing or empty (a bad row)."""
    rpath = mimic_report_path(report_files, pick.subject_id, pick.study_id)
    if not rpath.is_file():
        rows.bad(f"missing report {rpath}", pick.where)
        return None
    try:
        raw = read_text(rpath)
    except (OSError, UnicodeDecodeError) as exc:
        rows.bad(f"cannot read report {rpath} ({exc})", pick.where)
        return None
    text, findings, impression = report_text(raw, section, fallback_last_paragraph)
    if not text:
        rows.bad(f"empty report {rpath}" if not raw.strip() else
                 f"no FINDINGS / IMPRESSION text in report {rpath}", pick.where)
        return None
    return _Study(pick, text, findings, impression)


def _study_labels(labels: str, studies: list[_Study], chexpert: dict[str, np.ndarray],
                labeler: Labeler | None) -> list[np.ndarray]:
    """One label vector per study: the chexpert row, the labeler's, or blank."""
    if labels == "official":
        return [chexpert[s.image.study_id].copy() for s in studies]
    if labels == "labeler":
        matrix = run_labeler(labeler, [s.text for s in studies])
        return [matrix[i].astype(np.float32) for i in range(len(studies))]
    return [blank_labels() for _ in studies]


# ---------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------


def load_mimic_cxr(
    root: str | Path,
    split: str,
    *,
    views: Sequence[str] = ("AP",),
    section: str = "longer",
    labels: str = "official",
    reports_root: str | Path | None = None,
    fallback_last_paragraph: bool = True,
    check_images: bool = True,
    policy: str = "skip",
    labeler: Labeler | None = None,
    skips: SkipReport | None = None,
) -> list[Record]:
    """One image/report pair per study of one official MIMIC-CXR-JPG split.

    See the module docstring for where to get the data, the folder layout and the rules
    (view filter, one image per study, section extraction and fallback, labels).
    ``check_images=False`` trusts the JPG paths without looking at the disk.
    Bad rows: ``policy="skip"`` (count them in ``skips``) or ``"error"`` (raise
    :class:`~medvill.data.common.DataError` naming the file and line).
    """
    check_split(split)
    check_choice("section", section, SECTIONS)
    check_choice("labels", labels, LABEL_SOURCES)
    views = _check_views(views)
    root = Path(root)
    meta_path, split_path, chex_path = _find_csvs(root, labels)
    image_files = _files_dir(root)
    report_files = _files_dir(Path(reports_root)) if reports_root is not None else image_files
    rows = RowPolicy(policy, skips, root)

    official, bad_dicoms = _read_official_splits(split_path, rows)
    chexpert, bad_studies = _read_chexpert(chex_path, rows) if chex_path is not None else ({}, set())
    by_study = _read_images(meta_path, split_path, official, bad_dicoms, split, views, rows)

    studies: list[_Study] = []
    for study in sorted(by_study, key=natural_key):
        pick = _pick_image(by_study[study], views, image_files, check_images, rows)
        if pick is None:
            continue
        if labels == "official" and study not in chexpert:
            if study not in bad_studies:  # a bad label row is counted once, there
                rows.bad(f"study {study} has no row in {chex_path.name if chex_path else 'the chexpert file'}",
                         pick.where)
            continue
        found = _read_report(pick, report_files, section, fallback_last_paragraph, rows)
        if found is not None:
            studies.append(found)

    vectors = _study_labels(labels, studies, chexpert, labeler)
    records = [Record(id=f"s{s.image.study_id}", text=s.text, labels=vec, split=split, findings=s.findings,
                      impression=s.impression,
                      image=mimic_image_path(image_files, s.image.subject_id, s.image.study_id, s.image.dicom_id))
               for s, vec in zip(studies, vectors)]
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    log.info("MIMIC-CXR %s: %d studies (views %s)", split, len(records), "/".join(views))
    return records
