"""One summary of a run's image warnings instead of one console line per image.

The sanity checks of every image (:func:`medvill.data.decode.intensity_warnings`, decoder
notes) are logged once per file.  A fine-tuning run over a data set with many flagged images
(VQA-RAD's head and abdominal CTs have black backgrounds) would print hundreds of such lines;
inside :func:`collected_image_warnings` they are gathered instead, and at its end one warning
says how many images were flagged, by which checks, with the first few names, and the whole
list goes to a file in the run's output folder (``image_warnings.txt``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..checkpoint_files import IMAGE_WARNINGS

log = logging.getLogger(__name__)


class ImageWarnings:
    """The warnings of one run, per image (each image once)."""

    def __init__(self) -> None:
        self.by_image: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, path: str | Path, messages: list[str] | tuple[str, ...]) -> None:
        with self._lock:
            self.by_image.setdefault(str(path), list(messages))

    def checks(self) -> Counter[str]:
        """How many images each check flagged (the check's name: a message up to its first
        ``:`` or ``(``)."""
        return Counter(check_name(m) for messages in self.by_image.values() for m in set(messages))

    def summary(self, shown: int = 3, file: Path | None = None) -> str:
        n = len(self.by_image)
        checks = ", ".join(f"{name} {count}" for name, count in self.checks().most_common())
        first = ", ".join(Path(p).name for p in list(self.by_image)[:shown])
        more = f" and {n - shown} more" if n > shown else ""
        where = f"; the list is in {file}" if file is not None else ""
        return f"{n} image{'s' if n != 1 else ''} flagged by the image checks ({checks}): {first}{more}{where}"

    def write(self, path: Path) -> None:
        path.write_text("".join(f"{p}: {'; '.join(m)}\n" for p, m in self.by_image.items()), encoding="utf-8")


def check_name(message: str) -> str:
    return message.split(":")[0].split(" (")[0].strip()


_active: list[ImageWarnings] = []
_active_lock = threading.Lock()


def active() -> ImageWarnings | None:
    """The innermost collector of this process, if a run is collecting."""
    with _active_lock:
        return _active[-1] if _active else None


@contextmanager
def collected_image_warnings(output_dir: str | Path | None = None) -> Iterator[ImageWarnings]:
    """Gather the per-image warnings logged inside the block; at its end log one summary and,
    with ``output_dir``, write every image's warnings to ``output_dir/image_warnings.txt``."""
    collector = ImageWarnings()
    with _active_lock:
        _active.append(collector)
    try:
        yield collector
    finally:
        with _active_lock:
            _active.remove(collector)
        if collector.by_image:
            file = None
            if output_dir is not None and Path(output_dir).is_dir():
                file = Path(output_dir) / IMAGE_WARNINGS
                collector.write(file)
            log.warning("%s", collector.summary(file=file))
