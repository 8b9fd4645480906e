"""The prepared-image cache training reads: every record's X-ray preprocessed once
(:class:`~medvill.data.transforms.Preprocess`: margins cut, keep-aspect resize, padded square)
and stored as an 8-bit PNG, plus a manifest of the records.

Layout of a cache folder ``OUTPUT``::

    OUTPUT/prepare.json      settings, counts, source description, format version, status
    OUTPUT/manifest.jsonl    one record per line, input order, skipped records left out
    OUTPUT/images/<name>.png one 8-bit grayscale PNG per record (image_size^2, zlib level 3)

``manifest.jsonl`` rows: ``id``, ``image`` (the cached PNG, relative to ``OUTPUT``),
``source_image`` (the original file, as given), ``text``, ``findings``, ``impression``,
``labels`` (all 14 CheXpert observations, ``1 | 0 | -1 | null``) and ``split``.  It is also
valid medvill JSONL (:func:`medvill.data.records.read_jsonl_records` reads it), but
:func:`load_prepared` is exact: the records it returns equal the input records except for
``image``.

``<name>`` is the record id when it is already a safe file name (``[A-Za-z0-9][A-Za-z0-9._-]*``,
at most 100 characters, not a Windows device name), otherwise a sanitised prefix plus 12 hex
digits of the id's SHA-1; names are unique ignoring case (a later clash gets the hash, then
``-2``, ``-3``, ... in input order).

Each PNG carries a ``medvill-prepared`` text chunk (format, preprocessing settings, source path
and size, the warnings it raised), so that (a) a rerun can tell an image it may reuse, and
(b) :class:`Preprocess` / :func:`~medvill.data.transforms.load_image` use a cached image as it
is instead of cropping it again.

Resuming: every file is written to a temporary name and moved into place with
``os.replace``, so an interrupted run (Ctrl-C, kill) leaves only complete files.
``prepare.json`` is written first (status ``"incomplete"``) and rewritten at the end
(``"complete"``); ``manifest.jsonl`` is (re)written completely at the end.  A rerun into the
same folder reuses every image whose marker matches (same settings, same source path and
size) and processes the rest; different settings are an error (choose another folder or
``overwrite=True``).  Two runs must not write into the same folder at the same time.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, PngImagePlugin

from ..labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS, labels_to_vector
from ..workers import init_worker
from .choices import POLICIES
from .records import Record, SkipReport
from .transforms import PREPARED_KEY, Preprocess, to_uint8, warn_once

if TYPE_CHECKING:  # rich is imported only when a progress bar is shown
    from rich.progress import Progress, Task

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
INFO = "prepare.json"
IMAGES = "images"
_TMP_MARK = ".tmp-"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class PrepareSettingsError(ValueError):
    """The output folder holds a cache made with other settings (or is not a cache)."""


@dataclass
class PrepareSummary:
    """What :func:`prepare_cache` did.

    ``n_total`` = ``n_written + n_reused + n_skipped``.  ``skipped``: ``(id, reason)`` for every
    skipped record.  ``seconds``: wall time of the whole call.  ``images_per_second``: newly
    written images per second of wall time (reused images excluded; 0 when none written).
    ``warned``: ``(id, message)`` for every record whose image raised sanity warnings.
    ``output``: the cache folder.
    """

    n_total: int
    n_written: int
    n_reused: int
    n_skipped: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    warned: list[tuple[str, str]] = field(default_factory=list)
    output: Path | None = None
    #: rows the data set's loader left out before any image was read (bad CSV/JSON rows,
    #: missing images, empty reports, ...), by reason
    loader_skipped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        s = (f"{self.n_total} records -> {self.output}: {self.n_written} written, {self.n_reused} reused, "
             f"{self.n_skipped} skipped in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)")
        if self.loader_skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.loader_skipped.items(), key=lambda kv: -kv[1]))
            s += f"; {sum(self.loader_skipped.values())} rows skipped by the loader ({reasons})"
        if self.warned:
            s += f"; {len(self.warned)} images with intensity warnings"
        return s


# ============================================================================================
# names and manifest rows
# ============================================================================================

def _hashed(record_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._-")[:80] or "id"
    return f"{slug}-{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:12]}"


def safe_names(ids: Sequence[str]) -> list[str]:
    """File-system-safe, case-insensitively unique file stems for record ids (see the module
    docstring); deterministic for a given id sequence."""
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


def _manifest_row(record: Record, rel_image: str) -> dict[str, Any]:
    return {
        "id": record.id, "image": rel_image, "source_image": str(record.image), "text": record.text,
        "findings": record.findings, "impression": record.impression,
        "labels": labels_to_dict(record.labels), "split": record.split,
    }


# ============================================================================================
# the worker
# ============================================================================================

def _marker(settings: dict, source: str, source_bytes: int) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "settings": settings, "source": source, "source_bytes": source_bytes}


def _read_marker(path: Path) -> dict | None:
    try:
        with Image.open(path) as im:
            text = im.info.get(PREPARED_KEY)
        return json.loads(text) if isinstance(text, str) else None
    except Exception:  # noqa: BLE001 - unreadable -> not reusable, write it again
        return None


def _process_one(source: str, dst: Path, preprocess: Preprocess, settings: dict) -> tuple[str, list[str]]:
    """Write (or reuse) one cached image; returns ("written" | "reused", warnings)."""
    try:
        size = os.stat(source).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {source}") from None
    want = _marker(settings, source, size)
    if dst.exists():
        have = _read_marker(dst)
        if have is not None and {k: have.get(k) for k in want} == want:
            return "reused", list(have.get("warnings") or [])
    pixels, warnings = preprocess.run(source)
    info = PngImagePlugin.PngInfo()
    info.add_text(PREPARED_KEY, json.dumps({**want, "warnings": warnings}, ensure_ascii=True))
    tmp = dst.with_name(f".{dst.name}{_TMP_MARK}{os.getpid()}")
    try:
        Image.fromarray(to_uint8(pixels), mode="L").save(tmp, format="PNG", pnginfo=info, compress_level=3)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return "written", warnings


def _process_chunk(chunk: list[tuple[int, str, str]], preprocess: Preprocess, images: str,
                   policy: str) -> list[tuple[int, str, Any]]:
    """Run in a worker: ``(index, source, name)`` items -> ``(index, status, detail)`` with status
    written/reused (detail: warnings), skipped (detail: reason) or error (detail: (kind, message))."""
    settings = preprocess.settings()
    out: list[tuple[int, str, Any]] = []
    for index, source, name in chunk:
        try:
            status, warnings = _process_one(source, Path(images) / f"{name}.png", preprocess, settings)
            out.append((index, status, warnings))
        except Exception as exc:  # noqa: BLE001 - reported per record, never a crash mid-run
            msg = str(exc) if source in str(exc) else f"{source}: {type(exc).__name__}: {exc}"
            if policy == "error":
                kind = "missing" if isinstance(exc, FileNotFoundError) else (
                    "value" if isinstance(exc, ValueError) else "other")
                out.append((index, "error", (kind, msg)))
                return out
            out.append((index, "skipped", msg))
    return out




# ============================================================================================
# prepare_cache
# ============================================================================================

def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def _check_output(output: Path, settings: dict, overwrite: bool) -> None:
    """Refuse a folder with other settings or foreign content; clear our files on overwrite."""
    if not output.exists():
        return
    if not output.is_dir():
        raise PrepareSettingsError(f"{output} exists and is not a folder; choose another --output")
    if (output / INFO).is_file():
        info = read_prepare_info(output)
        same = info.get("format_version") == FORMAT_VERSION and info.get("settings") == settings
        if same and not overwrite:
            return
        if not overwrite:
            old = info.get("settings") or {}
            diff = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                             if old.get(k) != settings.get(k))
            if info.get("format_version") != FORMAT_VERSION:
                diff = (f"format version {info.get('format_version')!r} -> {FORMAT_VERSION}"
                        + (f", {diff}" if diff else ""))
            raise PrepareSettingsError(
                f"{output} already holds prepared images made with other settings ({diff}); "
                f"choose another output folder, or pass --overwrite (overwrite=True) to replace them")
        log.info("overwriting the prepared images in %s", output)
        shutil.rmtree(output / IMAGES, ignore_errors=True)
        for name in (MANIFEST, INFO):
            (output / name).unlink(missing_ok=True)
        return
    if any(output.iterdir()):
        raise PrepareSettingsError(
            f"{output} is not empty and is not a medvill prepared-image cache (no {INFO}); "
            "choose a new or empty output folder")


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _describe_source(records: Sequence[Record]) -> str:
    parents = sorted({str(Path(r.image).parent) for r in records})
    if not parents:
        return "no records"
    try:
        root = os.path.commonpath(parents)
    except ValueError:  # different drives
        root = parents[0]
    splits = Counter(r.split for r in records)
    return f"{len(records)} records under {root} ({', '.join(f'{n} {s}' for s, n in sorted(splits.items()))})"


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s", style="progress.data.speed")

    return Progress(TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def prepare_cache(records: Sequence[Record], output: str | Path, preprocess: Preprocess | None = None, *,
                  workers: int | None = None, policy: str = "skip", progress: bool = True,
                  overwrite: bool = False, source: str | None = None,
                  chunksize: int | None = None, loader_skips: SkipReport | None = None) -> PrepareSummary:
    """Preprocess every record's image once into ``output`` (layout, naming and resume rules in
    the module docstring) and return a :class:`PrepareSummary`.

    ``preprocess``: the settings (default ``Preprocess()``: 512 px, margins cut, DICOM windows).
    ``workers``: processes (None = the CPUs this process may use); ``1`` runs in this process.
    ``policy``: ``"skip"`` - a missing or unreadable image is skipped, counted, listed in the
    summary and in ``prepare.json``, and warned about once at the end; ``"error"`` - the first
    one stops the run with ``FileNotFoundError`` / ``ValueError`` naming the file (images
    written so far stay and are reused by a rerun).  ``overwrite``: replace a cache made with
    other settings instead of refusing.  ``source``: a description for ``prepare.json``
    (default: the records' common folder and split counts).  ``chunksize``: images per task
    sent to a worker (default: about 32 tasks per worker, 1..16 images each).
    Intensity warnings of each image are logged once (from this process) and listed in
    ``summary.warned``.  The progress bar (rich) counts reused images too.

    Workers are started with the ``spawn`` method (no fork of a parent that holds torch or rich
    threads), so a script calling this must do so under ``if __name__ == "__main__":``.  Worker
    processes ignore Ctrl-C; the parent stops handing out work and waits for the images in
    progress (each is written atomically).
    """
    start = time.perf_counter()
    preprocess = preprocess if preprocess is not None else Preprocess()
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    records = list(records)
    for r in records:
        labels_to_dict(r.labels)  # shape check before any work
    output = Path(output)
    settings = preprocess.settings()
    _check_output(output, settings, overwrite)
    images = output / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob(f".*{_TMP_MARK}*"):  # left by an interrupted run
        stale.unlink(missing_ok=True)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "status": "incomplete", "settings": settings,
        "source": source if source is not None else _describe_source(records),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json_atomic(output / INFO, info)

    names = safe_names([r.id for r in records])
    tasks = [(i, str(r.image), name) for i, (r, name) in enumerate(zip(records, names))]
    if chunksize is None:
        chunksize = max(1, min(16, len(tasks) // (workers * 32)))
    chunks = [tasks[i:i + chunksize] for i in range(0, len(tasks), chunksize)]
    status: dict[int, tuple[str, Any]] = {}
    bar = _progress(progress and bool(tasks))

    def collect(results: list[tuple[int, str, Any]]) -> None:
        for index, state, detail in results:
            if state == "error":
                kind, msg = detail
                raise (FileNotFoundError if kind == "missing" else ValueError if kind == "value" else RuntimeError)(msg)
            status[index] = (state, detail)
            if state in ("written", "reused"):
                warn_once(records[index].image, detail)
        if bar is not None:
            bar.update(task_id, advance=len(results))

    if bar is not None:
        bar.start()
        task_id = bar.add_task("prepare", total=len(tasks))
    try:
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                collect(_process_chunk(chunk, preprocess, str(images), policy))
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent (torch, rich)
            # workers: Ctrl-C is handled by the parent, which stops the pool; a killed parent ends them
            pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx,
                                          initializer=init_worker, initargs=(None, True))
            try:
                futures = [pool.submit(_process_chunk, c, preprocess, str(images), policy) for c in chunks]
                for fut in cf.as_completed(futures):
                    collect(fut.result())
            finally:  # on error or Ctrl-C: drop queued chunks, let running ones finish their file
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.stop()

    rows, skipped, warned = [], [], []
    counts: Counter[str] = Counter()
    for i, (record, name) in enumerate(zip(records, names)):
        state, detail = status[i]
        counts[state] += 1
        if state == "skipped":
            skipped.append((record.id, detail))
            continue
        if detail:
            warned.append((record.id, "; ".join(detail)))
        rows.append(_manifest_row(record, f"{IMAGES}/{name}.png"))
    tmp = output / f".{MANIFEST}{_TMP_MARK}{os.getpid()}"
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, output / MANIFEST)

    seconds = time.perf_counter() - start
    summary = PrepareSummary(
        output=output, n_total=len(records), n_written=counts["written"], n_reused=counts["reused"],
        n_skipped=counts["skipped"], skipped=skipped, seconds=seconds,
        images_per_second=counts["written"] / seconds if counts["written"] and seconds > 0 else 0.0, warned=warned,
        loader_skipped=dict(loader_skips.counts) if loader_skips is not None else {},
    )
    info.update({
        "status": "complete", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"total": summary.n_total, "written": summary.n_written, "reused": summary.n_reused,
                   "skipped": summary.n_skipped, "in_manifest": len(rows), "warned": len(warned)},
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "skipped": [{"id": rid, "reason": reason} for rid, reason in skipped],
        "loader_skipped": {"total": loader_skips.total if loader_skips is not None else 0,
                           "reasons": summary.loader_skipped,
                           "first": list(loader_skips.examples) if loader_skips is not None else []},
        "seconds": round(seconds, 3),
    })
    _write_json_atomic(output / INFO, info)
    if skipped:
        first = "; ".join(f"{rid}: {reason}" for rid, reason in skipped[:5])
        log.warning("skipped %d of %d images (listed in %s); first: %s",
                    len(skipped), len(records), output / INFO, first)
    return summary


# ============================================================================================
# reading the cache
# ============================================================================================

def load_prepared(output: str | Path, split: str | None = None) -> list[Record]:
    """The records of a complete cache (all, or one ``split``), in the order they were given to
    :func:`prepare_cache`, with ``image`` pointing at the cached PNG (absolute path).

    An unfinished cache, a malformed manifest line (named by file and line) or a missing cached
    image is an error.
    """
    output = Path(output).absolute()
    info = read_prepare_info(output)
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{output / INFO}: format version {info.get('format_version')!r}, this medvill reads "
                         f"{FORMAT_VERSION}; prepare the images again")
    if info.get("status") != "complete":
        raise ValueError(f"{output} is an unfinished prepared-image cache (interrupted?); rerun medvill prepare "
                         "with the same --output to finish it")
    path = output / MANIFEST
    records: list[Record] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
                if split is not None and row["split"] != split:
                    continue
                image = output / row["image"]
                labels = labels_to_vector(row.get("labels") or {})
                record = Record(id=str(row["id"]), image=image, text=row["text"], labels=labels,
                                split=row["split"], findings=row.get("findings", ""),
                                impression=row.get("impression", ""))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{where}: invalid manifest row ({type(exc).__name__}: {exc})") from None
            if not image.is_file():
                raise FileNotFoundError(f"{where}: cached image {image} is missing; rerun medvill prepare "
                                        "with the same --output to restore it")
            records.append(record)
    return records


# ============================================================================================
# what a model was trained on
# ============================================================================================

def training_input_settings(root: str | Path | None, image_size: int) -> dict[str, Any]:
    """How training read its images, JSON-ready, so that inference can do the same:
    ``{"image_size": N, "cache": SETTINGS | None}``.  ``cache`` holds the :class:`Preprocess`
    settings of the prepared-image cache at ``root`` (training then read those cached images
    and only resized them to ``image_size``), or None when training read the original files
    with the default :class:`Preprocess` at ``image_size``."""
    cache = None
    if root is not None and (Path(root) / INFO).is_file():
        cache = read_prepare_info(root).get("settings")
    return {"format": 1, "image_size": int(image_size), "cache": cache}
