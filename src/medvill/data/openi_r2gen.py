"""IU X-ray (Open-I) in R2Gen's ``annotation.json``: layout (c) of :mod:`medvill.data.openi`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .common import (
    DataError,
    Labeler,
    RowPolicy,
    check_choice,
    check_split,
    clean_text,
    find_optional,
    natural_key,
    normalize_split,
)
from .label_values import blank_label_rows
from .openi_loaders import first_dir, label_texts
from .records import Record, SkipReport

log = logging.getLogger("medvill.data.openi")  # the logger of every Open-I module

R2GEN_NAMES = ("annotation.json", "r2gen_annotation.json")


def _read_r2gen(path_or_root: Path) -> tuple[Path, dict[str, Any]]:
    """The annotation file (``path_or_root``, or found in that folder) and its JSON object."""
    p = path_or_root
    if p.is_dir():
        found = find_optional(p, R2GEN_NAMES)
        if found is None:
            raise FileNotFoundError(f"R2Gen annotation not found in {p}; expected {' or '.join(R2GEN_NAMES)}")
        p = found
    if not p.is_file():
        raise FileNotFoundError(f"R2Gen annotation not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected an object of split name -> list of records")
    return p, data


def _r2gen_item(rec: Any, key: str, split: str, where: str, rows: RowPolicy, seen: set[str], image_dir: Path,
                image_index: int, check_images: bool) -> tuple[str, Path, str] | None:
    """``(id, image, text)`` of one record under ``key``, or None when it is of another split
    or bad (counted)."""
    if not isinstance(rec, dict):
        rows.bad("not a JSON object", where)
        return None
    missing = [k for k in ("id", "report", "image_path") if k not in rec]
    if missing:
        rows.bad(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", where)
        return None
    key_split = normalize_split(key)
    rec_split = normalize_split(rec.get("split")) if rec.get("split") is not None else None
    if key_split and rec_split and key_split != rec_split:
        rows.bad(f"split field {rec['split']!r} contradicts key {key!r}", where)
        return None
    eff = key_split or rec_split
    if eff is None:
        rows.bad(f"no split: key {key!r} is no split name and the record has no split field", where)
        return None
    if eff != split:
        return None
    rid = str(rec["id"]).strip()
    if not rid or rid in seen:
        rows.bad(f"blank or duplicate id {rid!r}", where)
        return None
    paths = rec["image_path"] if isinstance(rec["image_path"], list) else [rec["image_path"]]
    if len(paths) <= image_index:
        rows.bad(f"image_path has {len(paths)} entries, no index {image_index}", where)
        return None
    text = clean_text(rec["report"])
    if not text:
        rows.bad("empty report", where)
        return None
    image = image_dir / str(paths[image_index])
    if check_images and not image.is_file():
        rows.bad(f"missing image {image}", where)
        return None
    return rid, image, text


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
    """IU X-ray in R2Gen's ``annotation.json`` (layout (c) of :mod:`medvill.data.openi`).

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
    p, data = _read_r2gen(Path(path_or_root))
    image_dir = Path(images) if images is not None else first_dir(p.parent / "images", p.parent)
    rows = RowPolicy(policy, skips, p)
    chosen: list[tuple[str, Path, str]] = []
    seen: set[str] = set()
    for key, items in data.items():
        if not isinstance(items, list):
            raise DataError(f"{p}: key {key!r} is not a list of records")
        for j, rec in enumerate(items):
            item = _r2gen_item(rec, key, split, f"{p}:{key!r}[{j}]", rows, seen, image_dir, image_index,
                               check_images)
            if item is not None:
                seen.add(item[0])
                chosen.append(item)
    chosen.sort(key=lambda c: natural_key(c[0]))
    matrix = label_texts([c[2] for c in chosen], labeler) if labels == "labeler" else blank_label_rows(len(chosen))
    records = [Record(id=rid, image=image, text=text, labels=matrix[i].copy(), split=split)
               for i, (rid, image, text) in enumerate(chosen)]
    rows.finish(log)
    return records
