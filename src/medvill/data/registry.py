"""Resolve ``--dataset NAME --root DIR`` to records.

``synthetic`` with no root generates the built-in data set once into a cache folder
(``$MEDVILL_CACHE``, default ``~/.cache/medvill``) keyed by size, image size and seed.
Loaders for MIMIC-CXR, Open-I, VQA-RAD and your own files plug in here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .records import Record, SkipReport, read_jsonl_records

log = logging.getLogger(__name__)

DATASETS = ("synthetic",)
SPLITS = ("train", "validate", "test")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDVILL_CACHE") or Path.home() / ".cache" / "medvill")


def synthetic_root(n: int, image_size: int, seed: int) -> Path:
    """The cached synthetic data set for these settings, generated on first use."""
    from .synthetic import generate_synthetic

    root = cache_dir() / "synthetic" / f"v1-n{n}-px{image_size}-seed{seed}"
    if not (root / "meta.json").is_file():
        log.info("generating synthetic data (n=%d, %d px, seed %d) into %s", n, image_size, seed, root)
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            generate_synthetic(root, n=n, image_size=image_size, seed=seed)
        except FileExistsError:
            if not (root / "meta.json").is_file():  # another process is writing it, or a stale folder
                raise
    return root


def load_records(dataset: str, root: str | Path | None, split: str, *, image_size: int = 128,
                 synthetic_n: int = 2000, synthetic_seed: int = 0) -> list[Record]:
    """Records of one split of a data set."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if dataset == "synthetic":
        base = Path(root) if root else synthetic_root(synthetic_n, image_size, synthetic_seed)
        path = base / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {base} a medvill synthetic data folder (medvill synth)?")
        return read_jsonl_records(path, split=split, skips=SkipReport(str(path)))
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
