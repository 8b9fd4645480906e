"""Your own image/report pairs, from a JSON-lines or CSV file.

One row per image/report pair (``.jsonl``, ``.csv``, optionally ``.gz``; a folder holding
``train.jsonl`` / ``validate.jsonl`` / ``test.jsonl`` - the layout of the built-in synthetic
data set - also works, the split picking the file)::

    {"id": "p1", "image": "images/p1.png", "text": "Small left pleural effusion.", "split": "train",
     "labels": {"Pleural Effusion": 1, "Pneumothorax": 0}}

    id,image,findings,impression,split,No Finding,Enlarged Cardiomediastinum,...,Support Devices
    p1,images/p1.png,"Small left pleural effusion.",Effusion.,train,,,...,

Fields (the keys of :func:`medvill.data.records.read_jsonl_records`, plus CSV columns):

* ``image`` (or ``image_path`` / ``img``), required: relative to the file's folder, or absolute.
* text, required: ``text``; else ``findings`` / ``impression`` (``section``, default the longer
  one, as in the paper); else ``report``, from which the FINDINGS / IMPRESSION sections are
  extracted when it has those headers (:func:`medvill.data.sections.extract_sections`) and
  which is used whole otherwise.
* ``id``, optional: default ``<file stem>-<line number>``.
* labels, optional: a ``labels`` object ``{observation: 1|0|-1|null}`` or the 14 CheXpert
  observations as keys / columns (a CSV has all 14 columns or none; blank = not mentioned).
  Unknown names and values other than 1 / 0 / -1 / blank are bad rows.  **Rows without labels
  are labelled by the labeler** on their text (``labels="auto"``, the default;
  ``"file"`` = blank when absent, ``"labeler"`` = always the labeler, ``"none"`` = all blank).
* ``split``, optional: ``train`` / ``validate`` (or ``valid`` / ``val``) / ``test``.  **Rows
  without a split get a deterministic hash split** on their id (or, without an id, the image
  path as written): SHA-256 of the key as a number u in [0, 1); train if u < 0.8, validate if
  u < 0.9, else test (``split_fractions``).

A missing image file (with ``check_images``), an empty text, a duplicate id, a bad split value
or a bad label is a bad row (``policy``); a CSV without an image or text column is an error
naming the file and the column.  Records are sorted by id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS
from .choices import SECTIONS
from .common import (
    DataError,
    Labeler,
    RowPolicy,
    check_choice,
    check_fractions,
    check_split,
    clean_text,
    hash_split,
    natural_key,
    normalize_split,
    open_text,
    read_csv,
    read_jsonl_lines,
    run_labeler,
)
from .label_values import blank_labels, label_vector
from .records import Record, SkipReport, choose_text
from .sections import extract_sections

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_path", "img")
TEXT_KEYS = ("text", "findings", "impression", "report")
LABEL_MODES = ("auto", "file", "labeler", "none")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class _Row:
    """A kept row; ``labels`` None when the file gives none."""

    id: str
    image: Path
    text: str
    findings: str
    impression: str
    labels: np.ndarray | None


def _row_text(row: dict[str, Any], section: str) -> tuple[str, str, str]:
    """(text, findings, impression) of one row."""
    text = clean_text(row.get("text"))
    findings, impression = clean_text(row.get("findings")), clean_text(row.get("impression"))
    if text:
        return text, findings, impression
    if findings or impression:
        return choose_text(findings, impression, section), findings, impression
    report = str(row.get("report") or "")
    f, i, _ = extract_sections(report)
    if f or i:
        return choose_text(f, i, section), f, i
    return clean_text(report), "", ""


def _resolve_file(path: Path, split: str) -> Path:
    if path.is_dir():
        for name in (f"{split}.jsonl", f"{split}.jsonl.gz", f"{split}.csv", f"{split}.csv.gz"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {split}.jsonl or {split}.csv in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _csv_rows(path: Path, rows: RowPolicy) -> Iterator[tuple[int, dict[str, Any]]]:
    import csv

    with open_text(path, errors="surrogateescape") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    if not header:
        raise DataError(f"{path}: empty file, expected a header row")
    image_col = next((k for k in IMAGE_KEYS if k in header), None)
    if image_col is None:
        raise DataError(f"{path}: missing column 'image' (or image_path / img); header has {', '.join(header)}")
    if not any(k in header for k in TEXT_KEYS):
        raise DataError(f"{path}: missing column 'text' (or findings / impression / report); "
                        f"header has {', '.join(header)}")
    obs = [c for c in CHEXPERT_OBSERVATIONS if c in header]
    if obs and len(obs) != NUM_OBSERVATIONS:
        missing = [c for c in CHEXPERT_OBSERVATIONS if c not in header]
        raise DataError(f"{path}: has {len(obs)} of the 14 label columns; missing column"
                        f"{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}")
    for lineno, row in read_csv(path, [image_col], rows):
        out: dict[str, Any] = {k: v for k, v in row.items() if k not in CHEXPERT_OBSERVATIONS}
        out["image"] = row[image_col]
        if obs:
            out["labels"] = {c: row[c] for c in CHEXPERT_OBSERVATIONS}
        yield lineno, out


def _jsonl_rows(path: Path, rows: RowPolicy) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, obj in read_jsonl_lines(path, rows):
        image_key = next((k for k in IMAGE_KEYS if k in obj), None)
        if image_key is None:
            rows.bad("the record has no 'image' key", f"{path}:{lineno}")
            continue
        wrong = next((k for k in (image_key, *TEXT_KEYS, "split") if obj.get(k) is not None
                      and not isinstance(obj[k], str)), None)
        if wrong is not None:
            rows.bad(f"{wrong!r} must be a string, got a JSON {_json_type(obj[wrong])}", f"{path}:{lineno}")
            continue
        out = dict(obj)
        out["image"] = obj[image_key]
        top = {k: obj[k] for k in CHEXPERT_OBSERVATIONS if k in obj}
        if top:
            merged = dict(obj.get("labels") or {})
            merged.update(top)
            out["labels"] = merged
        yield lineno, out


def _json_type(value: Any) -> str:
    return {list: "list", dict: "object", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")


def _open_rows(path: Path, rows: RowPolicy) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of a ``.csv`` or JSON-lines file (optionally ``.gz``)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return _csv_rows(path, rows)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl_rows(path, rows)
    raise ValueError(f"{path}: expected a .jsonl or .csv file (optionally .gz)")


def _row_split(row: dict[str, Any], raw_id: str, fractions: tuple[float, float, float], rows: RowPolicy,
               where: str) -> str | None:
    """The row's split: its ``split`` value, else the hash split; None for a bad value (counted)."""
    raw_split = str(row.get("split") or "").strip()
    if not raw_split:
        return hash_split(raw_id or str(row["image"]), fractions)
    row_split = normalize_split(raw_split)
    if row_split is None:
        rows.bad(f"unknown split value {raw_split!r} (expected train, validate or test)", where)
    return row_split


def _file_labels(given: Any, rows: RowPolicy, where: str) -> tuple[bool, np.ndarray | None]:
    """``(ok, labels)`` from the row's ``labels`` value (None: the row has none); ``ok`` is
    False for a bad value (counted)."""
    if given is None:
        return True, None
    if not isinstance(given, dict):
        rows.bad(f"'labels' must be an object of observation -> value, got {type(given).__name__}", where)
        return False, None
    try:
        return True, label_vector(given)
    except ValueError as exc:
        rows.bad(str(exc), where)
        return False, None


def _row_content(row: dict[str, Any], rid: str, where: str, base: Path, section: str, labels: str,
                 check_images: bool, rows: RowPolicy) -> _Row | None:
    """The image, text and file labels of a row of the split, or None when one is bad (counted)."""
    img = str(row["image"] or "").strip()
    if not img:
        rows.bad("blank image path", where)
        return None
    image = Path(img) if Path(img).is_absolute() else base / img
    text, findings, impression = _row_text(row, section)
    if not text:
        rows.bad("empty report", where)
        return None
    ok, vec = _file_labels(row.get("labels") if labels in ("auto", "file") else None, rows, where)
    if not ok:
        return None
    if check_images and not image.is_file():
        rows.bad(f"missing image {image}", where)
        return None
    return _Row(rid, image, text, findings, impression, vec)


def _fill_labels(kept: list[_Row], labels: str, labeler: Labeler | None) -> tuple[list[np.ndarray], int]:
    """One label vector per kept row: its own, else the labeler's (modes ``auto`` /
    ``labeler``; one call for all such rows), else blank; and how many rows the labeler read."""
    need = [i for i, row in enumerate(kept) if row.labels is None and labels in ("auto", "labeler")]
    matrix = run_labeler(labeler, [kept[i].text for i in need])
    computed = {i: matrix[j].astype(np.float32) for j, i in enumerate(need)}
    vectors = []
    for i, row in enumerate(kept):
        if row.labels is not None:
            vectors.append(row.labels)
        else:
            vectors.append(computed[i] if i in computed else blank_labels())
    return vectors, len(need)


def load_jsonl(
    path: str | Path,
    split: str,
    *,
    section: str = "longer",
    labels: str = "auto",
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    check_images: bool = True,
    policy: str = "skip",
    labeler: Labeler | None = None,
    skips: SkipReport | None = None,
) -> list[Record]:
    """Records of one split from your own JSONL / CSV file (format in the module docstring)."""
    check_split(split)
    check_choice("section", section, SECTIONS)
    check_choice("labels", labels, LABEL_MODES)
    fractions = check_fractions(split_fractions)
    path = _resolve_file(Path(path), split)
    base = path.parent
    rows = RowPolicy(policy, skips, path)
    source = _open_rows(path, rows)

    kept: list[_Row] = []
    seen: set[str] = set()
    for lineno, row in source:
        where = f"{path}:{lineno}"
        raw_id = str(row.get("id") or "").strip()
        rid = raw_id or f"{path.stem.removesuffix('.jsonl').removesuffix('.csv')}-{lineno}"
        if rid in seen:
            rows.bad(f"duplicate id {rid!r}", where)
            continue
        row_split = _row_split(row, raw_id, fractions, rows, where)
        if row_split is None:
            continue
        seen.add(rid)
        if row_split == split:
            kept_row = _row_content(row, rid, where, base, section, labels, check_images, rows)
            if kept_row is not None:
                kept.append(kept_row)

    vectors, n_labelled = _fill_labels(kept, labels, labeler)
    records = [Record(id=k.id, image=k.image, text=k.text, labels=vec, split=split, findings=k.findings,
                      impression=k.impression) for k, vec in zip(kept, vectors)]
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    if n_labelled:
        log.info("%s: labelled %d of %d %s records with the labeler (no labels in the file)", path, n_labelled,
                 len(records), split)
    return records
