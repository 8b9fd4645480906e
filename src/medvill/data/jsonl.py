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
  extracted when it has those headers (:func:`medvill.data.mimic_cxr.extract_sections`) and
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
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS
from .common import (
    DataError,
    Labeler,
    RowPolicy,
    blank_labels,
    check_choice,
    check_fractions,
    check_split,
    clean_text,
    hash_split,
    natural_key,
    normalize_split,
    open_text,
    parse_label_value,
    read_csv,
    read_jsonl_lines,
    run_labeler,
)
from .mimic_cxr import extract_sections
from .records import Record, SkipReport, choose_text

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_path", "img")
TEXT_KEYS = ("text", "findings", "impression", "report")
SECTIONS = ("longer", "findings", "impression", "both")
LABEL_MODES = ("auto", "file", "labeler", "none")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


def _labels_from(mapping: dict[str, Any]) -> np.ndarray:
    vec = blank_labels()
    for name, value in mapping.items():
        if name not in _OBS_INDEX:
            raise ValueError(f"unknown CheXpert observation {name!r}")
        try:
            vec[_OBS_INDEX[name]] = parse_label_value(value)
        except ValueError:
            raise ValueError(f"label {name!r} has value {value!r}; expected 1, 0, -1 or blank") from None
    return vec


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
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        source = _csv_rows(path, rows)
    elif name.endswith((".jsonl", ".json", ".ndjson")):
        source = _jsonl_rows(path, rows)
    else:
        raise ValueError(f"{path}: expected a .jsonl or .csv file (optionally .gz)")

    kept: list[tuple[str, Path, str, str, str, np.ndarray | None]] = []
    seen: set[str] = set()
    for lineno, row in source:
        where = f"{path}:{lineno}"
        raw_id = str(row.get("id") or "").strip()
        rid = raw_id or f"{path.stem.removesuffix('.jsonl').removesuffix('.csv')}-{lineno}"
        if rid in seen:
            rows.bad(f"duplicate id {rid!r}", where)
            continue
        raw_split = str(row.get("split") or "").strip()
        if raw_split:
            row_split = normalize_split(raw_split)
            if row_split is None:
                rows.bad(f"unknown split value {raw_split!r} (expected train, validate or test)", where)
                continue
        else:
            row_split = hash_split(raw_id or str(row["image"]), fractions)
        seen.add(rid)
        if row_split != split:
            continue
        img = str(row["image"] or "").strip()
        if not img:
            rows.bad("blank image path", where)
            continue
        image = Path(img) if Path(img).is_absolute() else base / img
        text, findings, impression = _row_text(row, section)
        if not text:
            rows.bad("empty report", where)
            continue
        vec: np.ndarray | None = None
        given = row.get("labels")
        if given is not None and labels in ("auto", "file"):
            if not isinstance(given, dict):
                rows.bad(f"'labels' must be an object of observation -> value, got {type(given).__name__}", where)
                continue
            try:
                vec = _labels_from(given)
            except ValueError as exc:
                rows.bad(str(exc), where)
                continue
        if check_images and not image.is_file():
            rows.bad(f"missing image {image}", where)
            continue
        kept.append((rid, image, text, findings, impression, vec))

    need = [i for i, k in enumerate(kept) if k[5] is None and labels in ("auto", "labeler")]
    matrix = run_labeler(labeler, [kept[i][2] for i in need])
    computed = {i: matrix[j] for j, i in enumerate(need)}
    records = []
    for i, (rid, image, text, findings, impression, vec) in enumerate(kept):
        if vec is None:
            vec = computed[i].astype(np.float32) if i in computed else blank_labels()
        records.append(Record(id=rid, image=image, text=text, labels=vec, split=split, findings=findings,
                              impression=impression))
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    if need:
        log.info("%s: labelled %d of %d %s records with the labeler (no labels in the file)", path, len(need),
                 len(records), split)
    return records
