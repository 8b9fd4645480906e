"""MIMIC-CXR-JPG image/report pairs, and MedViLL's own JSONL split files.

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
* **Report text** (:func:`extract_sections`): FINDINGS and IMPRESSION sections are found by
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

import ast
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS
from .common import (
    Labeler,
    RowPolicy,
    blank_labels,
    check_choice,
    check_split,
    clean_text,
    find_file,
    natural_key,
    normalize_split,
    parse_label_value,
    read_csv,
    read_jsonl_lines,
    read_text,
    run_labeler,
)
from .records import Record, SkipReport, choose_text

log = logging.getLogger(__name__)

METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv",)
SPLIT_NAMES = ("mimic-cxr-2.0.0-split.csv",)
CHEXPERT_NAMES = ("mimic-cxr-2.0.0-chexpert.csv",)

#: ViewPosition values of MIMIC-CXR-JPG (blank aside).
KNOWN_VIEWS = frozenset({
    "PA", "AP", "LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO", "LPO",
    "XTABLE LATERAL", "SWIMMERS",
})
SECTIONS = ("longer", "findings", "impression", "both")
LABEL_SOURCES = ("official", "labeler", "none")

# ---------------------------------------------------------------------------------------
# report sections
# ---------------------------------------------------------------------------------------

_FINDINGS_NAMES = {"findings", "finding", "findings and impression", "findings/impression"}
_IMPRESSION_NAMES = {"impression", "impressions", "conclusion", "conclusions"}
_OTHER_HEADERS = {
    "indication", "indications", "history", "clinical history", "technique", "comparison", "comparisons",
    "examination", "exam", "reason for exam", "reason for examination", "notification", "recommendation",
    "recommendations", "recommendation(s)", "addendum", "wet read", "procedure", "clinical information",
    "clinical indication", "type of examination", "final report", "study",
}
_HEADER_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/&,-]{0,48}?)[ \t]*:", re.MULTILINE)


def _header_kind(name: str) -> str | None:
    """'findings' / 'impression' / 'other' for a section header name, or None if the text
    before the colon is not a header (an all-capitals label, or a known header name in any
    case)."""
    key = " ".join(name.lower().split())
    if key in _FINDINGS_NAMES:
        return "findings"
    if key in _IMPRESSION_NAMES:
        return "impression"
    if key in _OTHER_HEADERS or (name.isupper() and any(c.isalpha() for c in name)):
        return "other"
    return None


def extract_sections(report: str) -> tuple[str, str, str]:
    """``(findings, impression, last_paragraph)`` of a free-text radiology report.

    A section starts at a header at the beginning of a line (``FINDINGS:``, ``Impression:``,
    ... - case-insensitive; ``CONCLUSION`` counts as impression, ``FINDINGS AND IMPRESSION``
    as findings) and runs, over any number of lines, to the next header (any all-capitals
    ``LABEL:`` at a line start, or a known header name such as ``Comparison:``).  Repeated
    sections are joined.  Whitespace is collapsed to single spaces.  ``last_paragraph`` is the
    last block of the report separated by a blank line or a line of underscores (the
    addendum delimiter), without a leading header label.
    """
    text = report.replace("\r\n", "\n").replace("\r", "\n")
    heads = [(m.start(), m.end(), _header_kind(m.group(1))) for m in _HEADER_RE.finditer(text)]
    heads = [h for h in heads if h[2] is not None]
    parts: dict[str, list[str]] = {"findings": [], "impression": []}
    for i, (_, end, kind) in enumerate(heads):
        if kind in parts:
            stop = heads[i + 1][0] if i + 1 < len(heads) else len(text)
            body = clean_text(text[end:stop])
            if body:
                parts[kind].append(body)
    lines = ["" if re.fullmatch(r"\s*_{3,}\s*", ln) else ln for ln in text.split("\n")]
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", "\n".join(lines)) if p.strip()]
    last = ""
    if paragraphs:
        last = paragraphs[-1]
        m = _HEADER_RE.match(last)
        if m and _header_kind(m.group(1)) is not None:
            last = last[m.end():]
        last = clean_text(last)
    return " ".join(parts["findings"]), " ".join(parts["impression"]), last


def report_text(report: str, section: str = "longer", fallback: bool = True) -> tuple[str, str, str]:
    """``(text, findings, impression)`` for a report: the chosen section(s), or the last
    paragraph when the report has neither FINDINGS nor IMPRESSION (and ``fallback``)."""
    findings, impression, last = extract_sections(report)
    if findings or impression:
        return choose_text(findings, impression, section), findings, impression
    return (last if fallback else ""), "", ""


# ---------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
# ---------------------------------------------------------------------------------------


@dataclass
class _Image:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    date: float
    time: float
    where: str


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
        vec = np.empty(NUM_OBSERVATIONS, dtype=np.float32)
        try:
            for i, name in enumerate(CHEXPERT_OBSERVATIONS):
                try:
                    vec[i] = parse_label_value(row[name])
                except ValueError:
                    raise ValueError(f"column {name!r} has value {row[name]!r}; "
                                     f"expected 1.0, 0.0, -1.0 or blank") from None
        except ValueError as exc:
            rows.bad(str(exc), where)
            bad.add(study)
            continue
        labels[study] = vec
    return labels, bad


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
    views = tuple(str(v).strip().upper() for v in ((views,) if isinstance(views, str) else views))
    if not views:
        raise ValueError("views must name at least one view, e.g. ('AP',) or ('PA', 'AP')")
    unknown = [v for v in views if v not in KNOWN_VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; MIMIC-CXR views are {', '.join(sorted(KNOWN_VIEWS))}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG folder not found: {root}")
    meta_path = find_file(root, METADATA_NAMES, "MIMIC-CXR-JPG metadata file")
    split_path = find_file(root, SPLIT_NAMES, "MIMIC-CXR-JPG split file")
    chex_path = find_file(root, CHEXPERT_NAMES, "MIMIC-CXR-JPG chexpert label file") if labels == "official" else None
    image_files = _files_dir(root)
    report_files = _files_dir(Path(reports_root)) if reports_root is not None else image_files
    rows = RowPolicy(policy, skips, root)

    official, bad_dicoms = _read_official_splits(split_path, rows)
    chexpert, bad_studies = _read_chexpert(chex_path, rows) if chex_path is not None else ({}, set())

    by_study: dict[str, list[_Image]] = {}
    needed = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
    for lineno, row in read_csv(meta_path, needed, rows):
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

    chosen: list[tuple[_Image, str, str, str]] = []
    for study in sorted(by_study, key=natural_key):
        images = sorted(by_study[study], key=lambda im: (views.index(im.view), im.date, im.time, im.dicom_id))
        pick = None
        for im in images:
            if check_images and not mimic_image_path(image_files, im.subject_id, im.study_id, im.dicom_id).is_file():
                rows.bad(f"missing image {mimic_image_path(image_files, im.subject_id, im.study_id, im.dicom_id)}",
                         im.where)
                continue
            pick = im
            break
        if pick is None:
            continue
        if labels == "official" and study not in chexpert:
            if study not in bad_studies:  # a bad label row is counted once, there
                rows.bad(f"study {study} has no row in {chex_path.name if chex_path else 'the chexpert file'}",
                         pick.where)
            continue
        rpath = mimic_report_path(report_files, pick.subject_id, study)
        if not rpath.is_file():
            rows.bad(f"missing report {rpath}", pick.where)
            continue
        try:
            raw = read_text(rpath)
        except (OSError, UnicodeDecodeError) as exc:
            rows.bad(f"cannot read report {rpath} ({exc})", pick.where)
            continue
        text, findings, impression = report_text(raw, section, fallback_last_paragraph)
        if not text:
            rows.bad(f"empty report {rpath}" if not raw.strip() else
                     f"no FINDINGS / IMPRESSION text in report {rpath}", pick.where)
            continue
        chosen.append((pick, text, findings, impression))

    if labels == "labeler":
        matrix = run_labeler(labeler, [c[1] for c in chosen])
    records = []
    for i, (im, text, findings, impression) in enumerate(chosen):
        if labels == "official":
            vec = chexpert[im.study_id].copy()
        elif labels == "labeler":
            vec = matrix[i].astype(np.float32)
        else:
            vec = blank_labels()
        records.append(Record(
            id=f"s{im.study_id}", image=mimic_image_path(image_files, im.subject_id, im.study_id, im.dicom_id),
            text=text, labels=vec, split=split, findings=findings, impression=impression))
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    log.info("MIMIC-CXR %s: %d studies (views %s)", split, len(records), "/".join(views))
    return records


# ---------------------------------------------------------------------------------------
# MedViLL's JSONL split files (MIMIC-CXR and Open-I)
# ---------------------------------------------------------------------------------------

_MEDVILL_FILES = {"train": ("Train.jsonl", "train.jsonl"),
                  "validate": ("Valid.jsonl", "valid.jsonl", "Val.jsonl", "val.jsonl", "Validate.jsonl",
                               "validate.jsonl"),
                  "test": ("Test.jsonl", "test.jsonl")}
_OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


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
    if isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    else:
        s = str(value if value is not None else "").strip()
        if not s:
            names = []
        else:
            try:
                parsed = ast.literal_eval(f"[{s}]")
            except (ValueError, SyntaxError):
                raise ValueError(f"cannot parse label string {s!r}; "
                                 f"expected e.g. \"'Edema', 'Cardiomegaly'\"") from None
            if not all(isinstance(p, str) for p in parsed):
                raise ValueError(f"cannot parse label string {s!r}; expected quoted observation names")
            names = [p.strip() for p in parsed]
    vec = np.zeros(NUM_OBSERVATIONS, dtype=np.float32)
    for name in names:
        if not name:
            continue
        if name not in _OBS_INDEX:
            raise ValueError(f"unknown CheXpert observation {name!r} in label field")
        vec[_OBS_INDEX[name]] = 1.0
    return vec


def _medvill_file(path_or_root: Path, split: str) -> Path:
    if path_or_root.is_file():
        return path_or_root
    if not path_or_root.is_dir():
        raise FileNotFoundError(f"MedViLL JSONL file or folder not found: {path_or_root}")
    present = {p.name: p for p in path_or_root.iterdir() if p.is_file()}
    for name in _MEDVILL_FILES[split]:
        for cand in (name, name + ".gz"):
            if cand in present:
                return present[cand]
    raise FileNotFoundError(f"no {split} file in {path_or_root}; expected one of "
                            f"{', '.join(_MEDVILL_FILES[split])}")


def _resolve_medvill_image(img: str, file_dir: Path, image_root: Path | None) -> Path:
    p = Path(img)
    if p.is_absolute():
        return p
    candidates = []
    if image_root is not None:
        candidates += [image_root / p, image_root / p.name]
    candidates += [file_dir / p, file_dir / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_medvill_jsonl(
    path_or_root: str | Path,
    split: str,
    *,
    image_root: str | Path | None = None,
    check_images: bool = True,
    policy: str = "skip",
    skips: SkipReport | None = None,
) -> list[Record]:
    """MedViLL's own split files (MIMIC-CXR and Open-I), one JSON object per line::

        {"id": "s57495790", "split": "valid", "label": "'Lung Opacity'", "text": "<report>",
         "img": "data/preprocessed/mimic/valid/s57495790.jpg"}

    (the Open-I files have no ``split`` key).  They come with the MedViLL repository
    (github.com/SuperSupermoon/MedViLL, ``data/mimic`` and ``data/openi``); the MIMIC-CXR ones
    hold MIMIC report text and need the PhysioNet licence.

    ``path_or_root`` is a folder with ``Train.jsonl`` / ``Valid.jsonl`` / ``Test.jsonl`` (the
    split picks the file; lower-case names and ``.gz`` work too) or one file, whose rows are
    kept when their ``split`` key (``valid`` = ``validate``) matches ``split`` or is absent.
    Labels: :func:`parse_positive_labels` (listed = 1, unlisted = 0).  Text: ``text`` as is
    (MedViLL already chose the section).  Image ``img``: absolute, else the first that exists
    of ``image_root/img``, ``image_root/<file name>``, ``<jsonl folder>/img``,
    ``<jsonl folder>/<file name>``.  An empty text, a missing image (with ``check_images``),
    a missing key or a bad label is a bad row.  Records are sorted by id.
    """
    check_split(split)
    path = _medvill_file(Path(path_or_root), split)
    img_root = Path(image_root) if image_root is not None else None
    rows = RowPolicy(policy, skips, path)
    records: list[Record] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl_lines(path, rows):
        where = f"{path}:{lineno}"
        missing = [k for k in ("id", "label", "text", "img") if k not in obj]
        if missing:
            rows.bad(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", where)
            continue
        if "split" in obj:
            row_split = normalize_split(obj["split"])
            if row_split is None:
                rows.bad(f"unknown split value {obj['split']!r}", where)
                continue
            if row_split != split:
                continue
        rid = str(obj["id"]).strip()
        if not rid:
            rows.bad("blank id", where)
            continue
        if rid in seen:
            rows.bad(f"duplicate id {rid!r}", where)
            continue
        try:
            vec = parse_positive_labels(obj["label"])
        except ValueError as exc:
            rows.bad(str(exc), where)
            continue
        text = clean_text(obj["text"])
        if not text:
            rows.bad("empty report", where)
            continue
        image = _resolve_medvill_image(str(obj["img"]), path.parent, img_root)
        if check_images and not image.is_file():
            rows.bad(f"missing image {image}", where)
            continue
        seen.add(rid)
        records.append(Record(id=rid, image=image, text=text, labels=vec, split=split))
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    return records
