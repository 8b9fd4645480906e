"""MedViLL's own JSONL split files, for MIMIC-CXR and Open-I.

One JSON object per line::

    {"id": "s57495790", "split": "valid", "label": "'Lung Opacity'", "text": "<report>",
     "img": "data/preprocessed/mimic/valid/s57495790.jpg"}

(the Open-I files have no ``split`` key).  They come with the MedViLL repository
(github.com/SuperSupermoon/MedViLL, ``data/mimic`` and ``data/openi``); the MIMIC-CXR ones
hold MIMIC report text and need the PhysioNet licence.  Read by :func:`load_medvill_jsonl`,
directly or as the ``medvill`` layout of :func:`medvill.data.openi.load_openi`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import RowPolicy, check_split, clean_text, natural_key, normalize_split, read_jsonl_lines
from .label_values import parse_positive_labels
from .records import Record, SkipReport

log = logging.getLogger(__name__)

#: File names of each split, in the order they are looked for (``.gz`` works too).
MEDVILL_FILES = {"train": ("Train.jsonl", "train.jsonl"),
                 "validate": ("Valid.jsonl", "valid.jsonl", "Val.jsonl", "val.jsonl", "Validate.jsonl",
                              "validate.jsonl"),
                 "test": ("Test.jsonl", "test.jsonl")}
_KEYS = ("id", "label", "text", "img")


def _medvill_file(path_or_root: Path, split: str) -> Path:
    if path_or_root.is_file():
        return path_or_root
    if not path_or_root.is_dir():
        raise FileNotFoundError(f"MedViLL JSONL file or folder not found: {path_or_root}")
    present = {p.name: p for p in path_or_root.iterdir() if p.is_file()}
    for name in MEDVILL_FILES[split]:
        for cand in (name, name + ".gz"):
            if cand in present:
                return present[cand]
    raise FileNotFoundError(f"no {split} file in {path_or_root}; expected one of "
                            f"{', '.join(MEDVILL_FILES[split])}")


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


def _row_record(obj: dict[str, Any], split: str, where: str, rows: RowPolicy, seen: set[str], file_dir: Path,
                image_root: Path | None, check_images: bool) -> Record | None:
    """The record of one line, or None when it is of another split or bad (counted)."""
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        rows.bad(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", where)
        return None
    if "split" in obj:
        row_split = normalize_split(obj["split"])
        if row_split is None:
            rows.bad(f"unknown split value {obj['split']!r}", where)
            return None
        if row_split != split:
            return None
    rid = str(obj["id"]).strip()
    if not rid:
        rows.bad("blank id", where)
        return None
    if rid in seen:
        rows.bad(f"duplicate id {rid!r}", where)
        return None
    try:
        vec = parse_positive_labels(obj["label"])
    except ValueError as exc:
        rows.bad(str(exc), where)
        return None
    text = clean_text(obj["text"])
    if not text:
        rows.bad("empty report", where)
        return None
    image = _resolve_medvill_image(str(obj["img"]), file_dir, image_root)
    if check_images and not image.is_file():
        rows.bad(f"missing image {image}", where)
        return None
    return Record(id=rid, image=image, text=text, labels=vec, split=split)


def load_medvill_jsonl(
    path_or_root: str | Path,
    split: str,
    *,
    image_root: str | Path | None = None,
    check_images: bool = True,
    policy: str = "skip",
    skips: SkipReport | None = None,
) -> list[Record]:
    """MedViLL's own split files (MIMIC-CXR and Open-I; format in the module docstring).

    ``path_or_root`` is a folder with ``Train.jsonl`` / ``Valid.jsonl`` / ``Test.jsonl`` (the
    split picks the file; lower-case names and ``.gz`` work too) or one file, whose rows are
    kept when their ``split`` key (``valid`` = ``validate``) matches ``split`` or is absent.
    Labels: :func:`~medvill.data.label_values.parse_positive_labels` (listed = 1, unlisted = 0).
    Text: ``text`` as is (MedViLL already chose the section).  Image ``img``: absolute, else the
    first that exists of ``image_root/img``, ``image_root/<file name>``, ``<jsonl folder>/img``,
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
        record = _row_record(obj, split, f"{path}:{lineno}", rows, seen, path.parent, img_root, check_images)
        if record is not None:
            seen.add(record.id)
            records.append(record)
    records.sort(key=lambda r: natural_key(r.id))
    rows.finish(log)
    return records
