"""Writing files so that a crash never leaves half of one, with the user's permissions, and
the strict reading of JSON lines.

A leaf module (no medvill imports): checkpoints, tokenizers, training states and data sets
all write through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def umask_mode(base: int = 0o666) -> int:
    """``base`` under the process's umask: the mode ``open()`` would give a new file (0o644
    under the usual umask 022); temporary files are created 0600 and get this before they
    take their final name."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def not_utf8(path: str | Path, exc: UnicodeDecodeError) -> str:
    """The message for a file that is not UTF-8 text: ``"PATH: not UTF-8 text (byte 0xe9 at offset 11)"``."""
    return f"{path}: not UTF-8 text ({bad_byte(exc)})"


def bad_byte(exc: UnicodeDecodeError) -> str:
    """Where decoding failed: ``"byte 0xe9 at offset 11"``."""
    return f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"


def parse_json_lines(text: str, source: str | Path,
                     error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of JSON-lines ``text``; a line that is
    not valid JSON raises ``error`` naming ``source:line`` (the strict reader; loaders that
    count bad rows use :func:`read_jsonl_lines`)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{source}:{lineno}: not valid JSON ({exc.msg})") from None
        yield lineno, value
