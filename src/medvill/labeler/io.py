"""Label report files with the CheXpert labeler (backs ``medvill label INPUT --output OUT.csv``).

Accepted inputs (``label_file``):

* a **CSV** with a header and a report column: ``text_column`` if given, else the first of
  ``Reports``, ``report``, ``reports``, ``text``, ``findings`` found (case-insensitive); the id
  is the row number (0-based, data rows only);
* a **header-less one-column CSV** such as the original labeler's ``sample_reports.csv``
  (every row is a report; recognised when the first row is not a known column name and every
  row has a single field);
* a **folder** of ``.txt`` files (searched recursively, one report per file, sorted by path);
  the id is the path relative to the folder (``p10/s1.txt``);
* a single **.txt** file (one report; the id is the file name);
* a **JSONL** file (``.jsonl`` / ``.ndjson``): one JSON object per line with a ``text`` or
  ``report`` field (or ``text_column``); the id is the ``id`` field, else the line number.
  Blank lines are skipped.

The output CSV has the layout of the original's ``labeled_reports.csv`` with an id column in
front: ``id, Reports, <14 observations in CheXpert order>``, values ``1.0`` / ``0.0`` /
``-1.0`` and empty for blank. An empty report is labelled like the original aggregator labels
a report without mentions (No Finding = 1.0, everything else blank) and counted in
``LabelFileSummary.empty``.

Bad input raises :class:`LabelInputError` (a ``ValueError``) naming the file, and the line
for JSONL: an unreadable or undecodable file, a line that is not valid JSON, a line without a text
field, a CSV without a detectable report column, an empty folder.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import parse_json_lines
from ..labels import CHEXPERT_OBSERVATIONS

REPORT_COLUMNS = ("reports", "report", "text", "findings")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class LabelInputError(ValueError):
    """A report file that cannot be labelled; the message names the file (and line)."""


@dataclass
class LabelFileSummary:
    """What ``label_file`` did: ``n`` reports labelled (``empty`` of them empty) in
    ``seconds``; ``positives`` counts the reports positive for each observation."""

    input: Path
    output: Path
    kind: str
    n: int
    empty: int
    seconds: float
    positives: dict[str, int] = field(default_factory=dict)

    @property
    def reports_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else math.inf


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LabelInputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _iter_txt_folder(folder: Path) -> Iterator[tuple[str, str]]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise LabelInputError(f"{folder}: folder has no .txt report files")
    for p in files:
        yield p.relative_to(folder).as_posix(), _read_text(p)


def _iter_jsonl(path: Path, text_column: str | None) -> Iterator[tuple[str, str]]:
    keys = (text_column,) if text_column else ("text", "report")
    for lineno, obj in parse_json_lines(_read_text(path), path, LabelInputError):
        if not isinstance(obj, dict):
            raise LabelInputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        key = next((k for k in keys if k in obj), None)
        if key is None:
            raise LabelInputError(f"{path}:{lineno}: no report field (looked for {', '.join(keys)})")
        value = obj[key]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise LabelInputError(f"{path}:{lineno}: field {key!r} is {type(value).__name__}, not text")
        rid = obj.get("id", lineno)
        yield str(rid), value


def _iter_csv(path: Path, text_column: str | None) -> Iterator[tuple[str, str]]:
    text = _read_text(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        rows = list(csv.reader(text.splitlines(keepends=True)))
    except csv.Error as exc:
        raise LabelInputError(f"{path}: malformed CSV ({exc})") from None
    rows = [r for r in rows if r]  # skip blank lines, as pandas does
    if not rows:
        return
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if text_column is not None:
        if text_column not in header and text_column.lower() not in lower:
            raise LabelInputError(f"{path}: no column {text_column!r} (columns: {', '.join(header)})")
        col = header.index(text_column) if text_column in header else lower.index(text_column.lower())
        body = rows[1:]
    else:
        found = next((lower.index(name) for name in REPORT_COLUMNS if name in lower), None)
        if found is not None:
            col, body = found, rows[1:]
        elif all(len(r) == 1 for r in rows):
            col, body = 0, rows  # a header-less one-column CSV (the original labeler's input)
        else:
            raise LabelInputError(
                f"{path}: no report column found (columns: {', '.join(header)}); "
                f"expected one of {', '.join(REPORT_COLUMNS)} or pass text_column"
            )
    for i, row in enumerate(body):
        yield str(i), row[col] if col < len(row) else ""


def read_reports(path: str | Path, text_column: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """``(kind, [(id, report), ...])`` from any input ``label_file`` accepts."""
    path = Path(path)
    if path.is_dir():
        return "txt-folder", list(_iter_txt_folder(path))
    if not path.exists():
        raise LabelInputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "txt", [(path.name, _read_text(path))]
    if suffix in JSONL_SUFFIXES:
        return "jsonl", list(_iter_jsonl(path, text_column))
    return "csv", list(_iter_csv(path, text_column))


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def label_file(input: str | Path, output: str | Path, text_column: str | None = None) -> LabelFileSummary:
    """Label every report of ``input`` and write ``output`` (CSV: id, Reports, 14 labels)."""
    from . import get_labeler

    src, dst = Path(input), Path(output)
    start = time.perf_counter()
    kind, items = read_reports(src, text_column)
    labeler = get_labeler()
    positives = dict.fromkeys(CHEXPERT_OBSERVATIONS, 0)
    empty = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dst.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "Reports", *CHEXPERT_OBSERVATIONS])
            for rid, report in items:
                if not report.strip():
                    empty += 1
                vec = labeler.label(report)
                for name, v in zip(CHEXPERT_OBSERVATIONS, vec, strict=True):
                    if v == 1.0:
                        positives[name] += 1
                writer.writerow([rid, report, *(_fmt(float(v)) for v in vec)])
    except OSError as exc:
        raise LabelInputError(f"{dst}: cannot write: {exc.strerror or exc}") from None
    return LabelFileSummary(
        input=src, output=dst, kind=kind, n=len(items), empty=empty,
        seconds=time.perf_counter() - start, positives=positives,
    )
