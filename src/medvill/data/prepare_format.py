"""The format of a prepared-image cache (the layout is in :mod:`medvill.data.prepare`): its file
names and format version, the cached images' names, the manifest rows, the marker each PNG
carries, and reading ``prepare.json``.  Shared by the writer (:func:`~medvill.data.prepare.prepare_cache`,
:mod:`medvill.data.prepare_worker`) and the reader (:mod:`medvill.data.prepare_read`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS
from .records import Record

FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
INFO = "prepare.json"
IMAGES = "images"
TMP_MARK = ".tmp-"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def _hashed(record_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._-")[:80] or "id"
    return f"{slug}-{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:12]}"


def safe_names(ids: Sequence[str]) -> list[str]:
    """File-system-safe, case-insensitively unique file stems for record ids (the rule is in
    :mod:`medvill.data.prepare`); deterministic for a given id sequence."""
    seen: set[str] = set()
    out = []
    for rid in ids:
        rid = str(rid)
        ok = _SAFE_NAME.fullmatch(rid) and not rid.endswith(".") and rid.split(".")[0].lower() not in _RESERVED
        name = rid if ok else _hashed(rid)
        if name.lower() in seen:
            base = _hashed(rid)
            name, k = base, 2
            while name.lower() in seen:
                name, k = f"{base}-{k}", k + 1
        seen.add(name.lower())
        out.append(name)
    return out


def labels_to_dict(labels: np.ndarray) -> dict[str, int | None]:
    """Label vector (nan = blank) -> ``{observation: 1|0|-1|None}`` over all 14 observations."""
    vec = np.asarray(labels, dtype=np.float32)
    if vec.shape != (NUM_OBSERVATIONS,):
        raise ValueError(f"expected {NUM_OBSERVATIONS} labels, got shape {vec.shape}")
    return {name: (None if np.isnan(v) else int(v)) for name, v in zip(CHEXPERT_OBSERVATIONS, vec)}


def manifest_row(record: Record, rel_image: str) -> dict[str, Any]:
    """The ``manifest.jsonl`` row of a record whose cached image is ``rel_image``."""
    return {
        "id": record.id, "image": rel_image, "source_image": str(record.image), "text": record.text,
        "findings": record.findings, "impression": record.impression,
        "labels": labels_to_dict(record.labels), "split": record.split,
    }


def image_marker(settings: dict, source: str, source_bytes: int) -> dict[str, Any]:
    """The ``medvill-prepared`` chunk of a cached PNG, less its warnings: what a rerun compares."""
    return {"format": FORMAT_VERSION, "settings": settings, "source": source, "source_bytes": source_bytes}


def read_prepare_info(output: str | Path) -> dict[str, Any]:
    """The ``prepare.json`` of a cache folder; a missing or invalid one is an error naming it."""
    path = Path(output) / INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {Path(output)} a folder written by medvill prepare?")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or "format_version" not in info:
        raise ValueError(f"{path}: not a medvill prepare.json (no format_version)")
    return info
