"""Helpers shared by the data set loaders (MIMIC-CXR, Open-I, VQA-RAD, your own files).

* **Bad-row policy** (:class:`RowPolicy`): ``policy="error"`` raises :class:`DataError` on the
  first bad row, with a message that starts with where it is (``file:line``, or
  ``file:key``); ``policy="skip"`` leaves the row out and counts it in a
  :class:`~medvill.data.records.SkipReport` (reason + location); :meth:`RowPolicy.finish` logs
  the one-line summary at the end.  Missing files and missing columns are always errors.
* **Text files and CSVs** (:func:`open_text`, :func:`read_csv`, :func:`find_file`): ``.gz``
  is read transparently; CSV rows come with the line number they start on; a row with the
  wrong number of fields (e.g. a truncated last line) is a bad row.
* **Splits** (:func:`normalize_split`, :func:`hash_split`): split names are ``train``,
  ``validate`` and ``test`` (:data:`medvill.data.choices.SPLITS`); the deterministic hash
  split is documented at :func:`hash_split`.
* **Labeler** (:func:`run_labeler`): the labeler hook (``labeler=None`` means
  ``medvill.labeler.label_reports``).  CheXpert values 1 / 0 / -1 / blank (nan) are parsed
  in :mod:`medvill.data.label_values` (:func:`parse_label_value` and :func:`blank_labels`
  are importable from here too).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..fileio import parse_json_lines as parse_json_lines
from ..labels import NUM_OBSERVATIONS
from .choices import POLICIES, SPLITS
from .label_values import LABEL_VALUES
from .label_values import blank_labels as blank_labels
from .label_values import parse_label_value as parse_label_value
from .records import SkipReport

log = logging.getLogger(__name__)

#: A labeler maps N report texts to an (N, 14) float array of 1 / 0 / -1 / nan.
Labeler = Callable[[Sequence[str]], np.ndarray]

_SPLIT_SYNONYMS = {
    "train": "train", "training": "train", "trn": "train",
    "validate": "validate", "validation": "validate", "valid": "validate", "val": "validate", "dev": "validate",
    "test": "test", "testing": "test", "tst": "test",
}


class DataError(ValueError):
    """A data file is malformed: the message names the file and the line, key or column."""


# ---------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------


def check_split(split: str) -> str:
    """``split`` must be one of train / validate / test (exactly)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def normalize_split(value: Any) -> str | None:
    """A split name as written in a data file -> ``train`` / ``validate`` / ``test``.

    Case and surrounding whitespace are ignored; ``valid``, ``val``, ``validation`` and
    ``dev`` mean ``validate``.  Returns ``None`` for anything else (blank included).
    """
    if value is None:
        return None
    return _SPLIT_SYNONYMS.get(str(value).strip().lower())


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(x) for x in fractions)
    if len(fr) != 3 or any(not math.isfinite(x) or x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1 "
                         f"(train, validate, test); got {tuple(fractions)!r}")
    return fr


# ---------------------------------------------------------------------------------------
# bad rows
# ---------------------------------------------------------------------------------------


class RowPolicy:
    """What to do with a bad row: raise (``"error"``) or skip and count (``"skip"``)."""

    def __init__(self, policy: str, skips: SkipReport | None, source: str | Path):
        self.policy = check_choice("policy", policy, POLICIES)
        self.skips = skips if skips is not None else SkipReport(str(source))
        self._start = self.skips.total

    def bad(self, reason: str, where: str) -> None:
        """Report a bad row at ``where`` (``file:line``): raise or count it."""
        if self.policy == "error":
            raise DataError(f"{where}: {reason}")
        self.skips.add(reason, where)

    def exclude(self, reason: str, where: str) -> None:
        """Count an item the data set itself leaves out (e.g. an Open-I report with no image or
        only lateral images): counted under either policy, never an error."""
        self.skips.add(reason, where)

    @property
    def skipped(self) -> int:
        """Rows skipped through this policy object (the report may be shared)."""
        return self.skips.total - self._start

    def finish(self, logger: logging.Logger | None = None) -> None:
        """Log the one-line skip summary, if anything was skipped."""
        if self.skipped:
            (logger or log).warning(self.skips.summary())


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


def open_text(path: str | Path, errors: str = "strict") -> TextIO:
    """Open a text file for reading (UTF-8, BOM tolerated); ``*.gz`` is decompressed.
    Row readers pass ``errors="surrogateescape"`` and check each row with
    :func:`undecodable`, so one bad byte costs one row, not the file."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors=errors, newline="")
    return path.open(encoding="utf-8-sig", errors=errors, newline="")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def undecodable(text: str) -> str | None:
    """For text read with ``errors="surrogateescape"``: None when it was valid UTF-8, else
    a description of the first bad byte (``"byte 0xe9 at column 5 is not UTF-8"``)."""
    bad = _ESCAPED_BYTE.search(text)
    if bad is None:
        return None
    return f"byte 0x{ord(bad.group()) - 0xDC00:02x} at column {bad.start() + 1} is not UTF-8 text"


def read_text(path: str | Path) -> str:
    with open_text(path) as fh:
        return fh.read()


def find_file(folder: str | Path, names: Sequence[str], what: str = "file") -> Path:
    """The first of ``folder/name`` (and ``folder/name.gz``) that exists; otherwise a
    :class:`FileNotFoundError` naming every path tried."""
    folder = Path(folder)
    tried = []
    for name in names:
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand in tried:
                continue
            tried.append(cand)
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"{what} not found; looked for {', '.join(str(p) for p in tried)}")


def find_optional(folder: str | Path, names: Sequence[str]) -> Path | None:
    try:
        return find_file(folder, names)
    except FileNotFoundError:
        return None


def read_csv(path: str | Path, required: Sequence[str], rows: RowPolicy,
             optional: Sequence[str] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file as ``(line number, {column: value})``, selecting columns by name
    (all columns, or with ``optional`` given only ``required`` plus those of ``optional``
    that the file has).

    The line number is the physical line the row starts on (header = line 1).  A missing
    required column raises :class:`DataError` naming the file and the column(s); a row with
    more or fewer fields than the header (e.g. a truncated line) is a bad row for ``rows``.
    Blank lines are ignored.  Values are stripped of surrounding whitespace.
    """
    path = Path(path)
    with open_text(path, errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header with columns {', '.join(required)}") from None
        except csv.Error as exc:
            raise DataError(f"{path}:1: cannot parse the CSV header ({exc})") from None
        header = [h.strip() for h in header]
        if (problem := undecodable(",".join(header))) is not None:
            raise DataError(f"{path}:1: the CSV header is not UTF-8 text ({problem})")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(c) for c in missing)} (header has {', '.join(header)})")
        index: dict[str, int] = {}
        for i, name in enumerate(header):
            index.setdefault(name, i)
        if optional is not None:
            index = {name: index[name] for name in (*required, *optional) if name in index}
        end = reader.line_num
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                end = reader.line_num
                rows.bad(f"cannot parse the CSV row ({exc})", f"{path}:{start}")
                continue
            end = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                rows.bad(f"expected {len(header)} fields, got {len(fields)} (truncated or malformed row)",
                         f"{path}:{start}")
                continue
            if (problem := undecodable("".join(fields))) is not None:
                rows.bad(problem, f"{path}:{start}")
                continue
            yield start, {name: fields[i].strip() for name, i in index.items()}


def read_jsonl_lines(path: str | Path, rows: RowPolicy) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON-lines file (``.gz`` allowed) as ``(line number, object)``; a line that
    is not a JSON object is a bad row; blank lines are ignored."""
    import json

    path = Path(path)
    with open_text(path, errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if (problem := undecodable(line)) is not None:
                rows.bad(problem, f"{path}:{lineno}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.bad(f"not valid JSON ({exc.msg})", f"{path}:{lineno}")
                continue
            if not isinstance(obj, dict):
                rows.bad(f"expected a JSON object, got {type(obj).__name__}", f"{path}:{lineno}")
                continue
            yield lineno, obj


# ---------------------------------------------------------------------------------------
# splits, sorting, text
# ---------------------------------------------------------------------------------------


def hash_unit(key: str, salt: str = "") -> float:
    """A number in [0, 1) from SHA-256 of ``salt + key`` (first 64 bits): stable across runs,
    machines and Python versions (unlike ``hash()``)."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "") -> str:
    """Deterministic split of an item with no official split.

    ``u = hash_unit(key, salt)`` (SHA-256 of ``salt + key`` as a number in [0, 1)); the item
    is ``train`` if ``u < f_train``, ``validate`` if ``u < f_train + f_validate``, else
    ``test``.  An item's split depends only on its own key, so adding or removing other
    items never moves it.
    """
    f_train, f_val, _ = check_fractions(fractions)
    u = hash_unit(str(key), salt)
    if u < f_train:
        return "train"
    return "validate" if u < f_train + f_val else "test"


_NATURAL = re.compile(r"(\d+)")


def natural_key(value: Any) -> tuple:
    """Sort key that orders ``"2" < "10"`` and ``"s9" < "s10"`` (digits compared as numbers)."""
    parts = _NATURAL.split(str(value))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def clean_text(text: str | None) -> str:
    """Collapse all whitespace (line breaks included) to single spaces and strip."""
    return " ".join(str(text or "").split())


# ---------------------------------------------------------------------------------------
# labeler
# ---------------------------------------------------------------------------------------


def default_labeler() -> Labeler:
    """``medvill.labeler.label_reports``, imported on first use."""
    try:
        from ..labeler import label_reports
    except ImportError as exc:
        raise ImportError(f"labels from report text need medvill.labeler.label_reports, which cannot be "
                          f"imported ({exc}); pass labeler=... or use the data set's own labels") from exc
    return label_reports


def run_labeler(labeler: Labeler | None, texts: Sequence[str]) -> np.ndarray:
    """Label ``texts`` in one call; checks the result is (N, 14) of 1 / 0 / -1 / nan."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, NUM_OBSERVATIONS), dtype=np.float32)
    fn = labeler if labeler is not None else default_labeler()
    out = np.asarray(fn(texts), dtype=np.float32)
    if out.shape != (len(texts), NUM_OBSERVATIONS):
        raise ValueError(f"the labeler returned shape {out.shape}, expected ({len(texts)}, {NUM_OBSERVATIONS})")
    ok = np.isnan(out) | np.isin(out, LABEL_VALUES)
    if not ok.all():
        bad = sorted({float(v) for v in out[~ok]})[:5]
        raise ValueError(f"the labeler returned values {bad}; expected 1, 0, -1 or nan")
    return out
