"""The examples of a split of the run's data set, checked readable, and their loaders: what
every recipe (pre-training, fine-tuning, evaluation) and every task reads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from .pairs import LengthGroupedSampler, ReportPairDataset
from .records import Record
from .registry import load_records
from .task_data import ImageTextDataset

log = logging.getLogger(__name__)


def load_split(cfg: RunConfig, split: str) -> list[Record]:
    """The records of a split whose images can be read (:func:`readable`)."""
    d = cfg.data
    records = load_records(d.dataset, d.root, split, image_size=cfg.model.image_size, synthetic_n=d.synthetic_n,
                           synthetic_seed=d.synthetic_seed, policy=d.policy, section=d.section)
    return readable(records, cfg, split)


def load_vqa_split(cfg: RunConfig, split: str) -> list:
    """The VQA items (:class:`~medvill.data.vqa_rad.VQAItem`) of a split of the run's data set
    whose images can be read (:func:`readable`)."""
    from .registry import load_vqa

    d = cfg.data
    items = load_vqa(d.dataset, d.root, split, organ=d.vqa_organ, image_size=cfg.model.image_size,
                     synthetic_n=d.synthetic_n, synthetic_seed=d.synthetic_seed, policy=d.policy,
                     validate_by=d.vqa_validate_by)
    return readable(items, cfg, split)


def readable(items: list, cfg: RunConfig, split: str) -> list:
    """Check every image of ``items`` before any training step: each is decoded and
    preprocessed once (into the in-memory pixel cache, which the first epoch then reads, so
    the check costs nothing where the images fit in it).  An unreadable image (zero bytes,
    truncated, not an image, a decompression bomb) is a bad row: ``data.policy=skip`` drops its
    items and logs the count with an example; ``error`` stops the run before it starts, naming
    the file.  Images of a ``medvill prepare`` cache were checked by prepare and are not
    checked again."""
    from .common import DataError
    from .registry import is_prepared
    from .transforms import PIXEL_CACHE, Preprocess

    if not items or is_prepared(cfg.data.root):
        return items
    pre = Preprocess(image_size=cfg.model.image_size)
    slice_pre = Preprocess(image_size=cfg.model.image_size, cross_sectional=True)  # CT / MR (e.g. VQA-RAD)
    bad: dict[Path, str] = {}
    seen: set[Path] = set()
    for item in items:
        path = Path(item.image)
        if path in seen:
            continue
        seen.add(path)
        try:
            PIXEL_CACHE.get(path, slice_pre if getattr(item, "cross_sectional", False) else pre)
        except (OSError, ValueError) as exc:
            bad[path] = str(exc)
    if not bad:
        return items
    first, reason = next(iter(bad.items()))
    if cfg.data.policy == "error":
        raise DataError(f"{len(bad)} unreadable image{'s' if len(bad) > 1 else ''} in the {split} split, "
                        f"e.g. {reason}; fix or remove {'them' if len(bad) > 1 else 'it'}, or set data.policy=skip")
    kept = [it for it in items if Path(it.image) not in bad]
    log.warning("%s split: skipped %d item(s) of %d unreadable image(s), e.g. %s", split, len(items) - len(kept),
                len(bad), reason)
    return kept


def data_loader(dataset: ReportPairDataset | ImageTextDataset, cfg: RunConfig,
                collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]], train: bool) -> DataLoader:
    """The loader of a training (shuffled, seeded, full batches) or evaluation (every item
    once) split.  With ``train.length_grouping`` > 0 the batches hold reports of similar
    length (:class:`~medvill.data.pairs.LengthGroupedSampler`); evaluation then visits the
    items shortest first (every evaluation puts its results back in data set order)."""
    t = cfg.train
    lengths = [len(ids) for ids in dataset.text_ids]
    common: dict[str, Any] = dict(batch_size=t.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)
    if train:
        drop_last = len(dataset) >= t.batch_size
        if t.length_grouping:
            return DataLoader(dataset, sampler=LengthGroupedSampler(lengths, t.batch_size, t.length_grouping, t.seed),
                              drop_last=drop_last, **common)
        return DataLoader(dataset, shuffle=True, drop_last=drop_last, generator=torch.Generator().manual_seed(t.seed),
                          **common)
    if t.length_grouping:
        return DataLoader(dataset, sampler=sorted(range(len(dataset)), key=lengths.__getitem__), **common)
    return DataLoader(dataset, shuffle=False, **common)
