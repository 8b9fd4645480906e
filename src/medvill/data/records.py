"""The one record type every data set is read into, and the medvill JSONL reader.

A :class:`Record` is an image path, the report text the model reads, and the 14 CheXpert
labels (float vector; 1 / 0 / -1, blank = nan).  Loaders for each data set (synthetic,
MIMIC-CXR, Open-I, your own files) produce records; everything downstream reads records.

Bad input: a line that is not valid JSON, or a record without an image or text key, is an
error naming the file and line.  A record whose image file is missing or whose report is
empty is skipped and counted (:class:`SkipReport`), never silently used.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import NUM_OBSERVATIONS, labels_to_vector
from .choices import SECTIONS

log = logging.getLogger(__name__)


@dataclass
class Record:
    id: str
    image: Path
    text: str
    labels: np.ndarray = field(default_factory=lambda: np.full(NUM_OBSERVATIONS, np.nan, dtype=np.float32))
    split: str = "train"
    findings: str = ""
    impression: str = ""


@dataclass
class SkipReport:
    """Rows left out of a data set, by reason, with the first few locations."""

    source: str
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    #: (where, reason) already counted: a row met again (a file read once per split) counts once
    _seen: set = field(default_factory=set, repr=False, compare=False)

    def add(self, reason: str, where: str) -> None:
        if (where, reason) in self._seen:
            return
        self._seen.add((where, reason))
        self.counts[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
        return f"skipped {self.total} rows of {self.source} ({parts}); first: {'; '.join(self.examples)}"


def choose_text(findings: str, impression: str, mode: str = "longer") -> str:
    """The report text the model reads: the longer of Findings and Impression (the paper's
    rule), or one section by name with the other as fallback, or both (``mode``: one of
    :data:`~medvill.data.choices.SECTIONS`)."""
    findings, impression = (findings or "").strip(), (impression or "").strip()
    if mode == "longer":
        return findings if len(findings) >= len(impression) else impression
    if mode == "findings":
        return findings or impression
    if mode == "impression":
        return impression or findings
    if mode == "both":
        return " ".join(t for t in (findings, impression) if t)
    raise ValueError(f"unknown text section mode {mode!r}; use {', '.join(SECTIONS[:-1])} or {SECTIONS[-1]}")


def read_jsonl_records(path: str | Path, split: str | None = None, text_mode: str = "longer",
                       skips: SkipReport | None = None) -> list[Record]:
    """Read medvill-format JSONL: one object per line with ``image`` (path relative to the
    file's folder, or absolute), text as ``text`` or ``findings``/``impression`` or
    ``report``, optional ``id``, ``labels`` ``{observation: 1|0|-1|null}`` and ``split``."""
    path = Path(path)
    base = path.parent
    skips = skips if skips is not None else SkipReport(str(path))
    records: list[Record] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if "image" not in obj:
                raise ValueError(f"{where}: the record has no 'image' key")
            findings, impression = str(obj.get("findings") or ""), str(obj.get("impression") or "")
            if obj.get("text"):
                text = str(obj["text"]).strip()
            elif findings or impression:
                text = choose_text(findings, impression, text_mode)
            else:
                text = str(obj.get("report") or "").strip()
            image = Path(obj["image"])
            image = image if image.is_absolute() else base / image
            if not text:
                skips.add("empty report", where)
                continue
            if not image.is_file():
                skips.add("missing image", where)
                continue
            try:
                labels = labels_to_vector(obj.get("labels") or {})
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            records.append(Record(
                id=str(obj.get("id", f"{path.stem}-{lineno}")), image=image, text=text, labels=labels,
                split=str(obj.get("split", split or "train")), findings=findings, impression=impression,
            ))
    if skips.total:
        log.warning(skips.summary())
    return records
