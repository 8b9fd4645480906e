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

This module writes the cache (:func:`prepare_cache`); the format it shares with the reader
(file names, record names, manifest rows, image markers, ``prepare.json``) is in
:mod:`medvill.data.prepare_format`, the per-image work of its worker processes in
:mod:`medvill.data.prepare_worker`, and reading a cache (:func:`load_prepared`,
:func:`training_input_settings`) in :mod:`medvill.data.prepare_read`; every name is importable
from here as before.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..workers import init_worker
from .choices import POLICIES
from .prepare_format import (
    FORMAT_VERSION,
    IMAGES,
    INFO,
    MANIFEST,
    TMP_MARK,
    labels_to_dict,
    manifest_row,
    read_prepare_info,
    safe_names,
)
from .prepare_read import load_prepared, training_input_settings
from .prepare_worker import process_chunk
from .records import Record, SkipReport
from .transforms import Preprocess, warn_once

if TYPE_CHECKING:  # rich is imported only when a progress bar is shown
    from rich.progress import Progress, Task

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "IMAGES", "INFO", "MANIFEST", "PrepareSettingsError", "PrepareSummary", "labels_to_dict",
           "load_prepared", "prepare_cache", "read_prepare_info", "safe_names", "training_input_settings"]


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


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    for stale in images.glob(f".*{TMP_MARK}*"):  # left by an interrupted run
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
                collect(process_chunk(chunk, preprocess, str(images), policy))
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent (torch, rich)
            # workers: Ctrl-C is handled by the parent, which stops the pool; a killed parent ends them
            pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx,
                                          initializer=init_worker, initargs=(None, True))
            try:
                futures = [pool.submit(process_chunk, c, preprocess, str(images), policy) for c in chunks]
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
        rows.append(manifest_row(record, f"{IMAGES}/{name}.png"))
    tmp = output / f".{MANIFEST}{TMP_MARK}{os.getpid()}"
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
