"""The prepared-cache writer's worker: one chunk of records -> cached PNGs (each written
atomically, or reused when its marker matches), run in a worker process or in the caller's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .prepare_format import TMP_MARK, image_marker
from .transforms import PREPARED_KEY, Preprocess, to_uint8


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
    want = image_marker(settings, source, size)
    if dst.exists():
        have = _read_marker(dst)
        if have is not None and {k: have.get(k) for k in want} == want:
            return "reused", list(have.get("warnings") or [])
    pixels, warnings = preprocess.run(source)
    info = PngImagePlugin.PngInfo()
    info.add_text(PREPARED_KEY, json.dumps({**want, "warnings": warnings}, ensure_ascii=True))
    tmp = dst.with_name(f".{dst.name}{TMP_MARK}{os.getpid()}")
    try:
        Image.fromarray(to_uint8(pixels), mode="L").save(tmp, format="PNG", pnginfo=info, compress_level=3)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return "written", warnings


def process_chunk(chunk: list[tuple[int, str, str]], preprocess: Preprocess, images: str,
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
