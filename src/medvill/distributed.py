"""Evaluation under several processes: each process scores a share of the batches and every
process receives all of them.

Outside a distributed run (no ``torch.distributed`` process group) both functions do nothing.
Inside one, every process must call them the same number of times (the training loop calls
its validation function on every process).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_loader(loader: DataLoader) -> DataLoader:
    """The batches ``rank, rank + world, ...`` of ``loader`` (same batch composition as the
    full loader, so results put back together by example index are the same)."""
    rank, world = rank_and_world()
    if world == 1:
        return loader
    if loader.batch_sampler is None:
        raise ValueError("shard_loader needs a loader that batches (a batch_size or batch_sampler), "
                         "not one built with batch_size=None")
    batches = [b for i, b in enumerate(loader.batch_sampler) if i % world == rank]
    return DataLoader(loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def gather_lists(items: list[Any]) -> list[Any]:
    """Every process's ``items`` (e.g. per-batch CPU tensors), concatenated in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return items
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
