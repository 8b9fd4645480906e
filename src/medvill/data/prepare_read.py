"""Reading a prepared-image cache (:func:`load_prepared`) and what a model was trained on
(:func:`training_input_settings`); the cache is written by :func:`medvill.data.prepare.prepare_cache`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..labels import labels_to_vector
from .prepare_format import FORMAT_VERSION, INFO, MANIFEST, read_prepare_info
from .records import Record


def load_prepared(output: str | Path, split: str | None = None) -> list[Record]:
    """The records of a complete cache (all, or one ``split``), in the order they were given to
    :func:`~medvill.data.prepare.prepare_cache`, with ``image`` pointing at the cached PNG (absolute path).

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
