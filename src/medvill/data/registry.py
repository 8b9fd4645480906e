"""Resolve ``--dataset NAME --root DIR`` to records (image-report pairs) or VQA items.

| name        | what ``--root`` points at                                                        |
|-------------|----------------------------------------------------------------------------------|
| `synthetic` | a folder written by ``medvill synth``; no root: generated once into a cache       |
| `mimic`     | a MIMIC-CXR-JPG copy (metadata / split / chexpert CSVs, ``files/``) + reports     |
| `openi`     | Open-I / IU X-ray: NLM XML reports (folder or ``NLMCXR_reports.tgz``) + PNGs, the |
|             | Kaggle CSV pair, R2Gen ``annotation.json`` or the MedViLL split JSONL files       |
| `jsonl`     | your own JSONL or CSV of image path + report (+ labels, split)                    |
| `vqa_rad`   | VQA-RAD (MEVF ``trainset.json``/``testset.json`` + ``images/``, or the official  |
|             | public JSON): questions, read with :func:`load_vqa`                              |

A root that holds a ``prepare.json`` is a cache written by ``medvill prepare``: its records
are read from there (already cropped and resized), whatever data set it was made from.
The synthetic cache lives in ``$MEDVILL_CACHE`` (default ``~/.cache/medvill``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .choices import SPLITS as SPLITS  # re-exported: the CLI imports it from here
from .common import check_split
from .records import Record, SkipReport, read_jsonl_records

if TYPE_CHECKING:  # vqa_rad is imported on first use
    from .vqa_rad import VQAItem

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "mimic", "openi", "jsonl", "vqa_rad")


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


def is_prepared(root: str | Path | None) -> bool:
    return root is not None and (Path(root) / "prepare.json").is_file()


def _check(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    check_split(split)


def load_records(dataset: str, root: str | Path | None, split: str, *, image_size: int = 128,
                 synthetic_n: int = 2000, synthetic_seed: int = 0, policy: str = "skip",
                 section: str = "longer", skips: SkipReport | None = None) -> list[Record]:
    """Image-report records of one split of a data set (see the module docstring).  ``skips``:
    a report to count the bad rows in (shared across calls, e.g. by ``medvill prepare``)."""
    _check(dataset, split)
    if root is not None and is_prepared(root):
        from .prepare import load_prepared

        return load_prepared(root, split)
    if dataset == "synthetic":
        base = Path(root) if root else synthetic_root(synthetic_n, image_size, synthetic_seed)
        path = base / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {base} a medvill synthetic data folder (medvill synth)?")
        return read_jsonl_records(path, split=split, skips=skips if skips is not None else SkipReport(str(path)))
    if root is None:
        raise ValueError(f"--dataset {dataset} needs --root: the folder of your copy of the data set")
    skips = skips if skips is not None else SkipReport(f"{dataset} {split} at {root}")
    if dataset == "mimic":
        from .mimic_cxr import load_mimic_cxr

        return load_mimic_cxr(root, split, policy=policy, section=section, skips=skips)
    if dataset == "openi":
        from .openi import load_openi

        return load_openi(root, split, policy=policy, section=section, skips=skips)
    if dataset == "jsonl":
        from .jsonl import load_jsonl

        return load_jsonl(root, split, policy=policy, section=section, skips=skips)
    raise ValueError("vqa_rad holds questions about images, not image-report pairs: use it with the VQA task")


def load_vqa(dataset: str, root: str | Path | None, split: str, *, organ: str = "ALL", image_size: int = 128,
             synthetic_n: int = 2000, synthetic_seed: int = 0, policy: str = "skip",
             validate_by: str = "image") -> list[VQAItem]:
    """VQA items of one split: ``vqa_rad`` or the synthetic data set's questions."""
    from .vqa_rad import load_vqa_rad

    _check(dataset, split)
    if dataset == "synthetic":
        root = root or synthetic_root(synthetic_n, image_size, synthetic_seed)
    elif dataset != "vqa_rad":
        raise ValueError(f"--dataset {dataset} has no questions; VQA reads vqa_rad or synthetic")
    if root is None:
        raise ValueError("--dataset vqa_rad needs --root: the VQA-RAD folder")
    return load_vqa_rad(root, split, organ=organ, policy=policy, validate_by=validate_by)
