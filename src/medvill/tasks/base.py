"""The task contract: a task turns a batch into a loss (and metrics); it owns no loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import gather_lists, shard_loader


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # detached scalars for logging


class Task(Protocol):
    name: str

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput: ...


@torch.no_grad()
def run_over(model: nn.Module, loader: DataLoader, output_fn: Callable[[torch.Tensor], torch.Tensor],
             target_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate ``model`` over a loader in eval mode: ``output_fn(logits)`` per batch and the
    batch's ``target_key``, concatenated and put back in data set order (by ``index``).

    Under several processes each scores a share of the batches and all receive the whole
    result (:mod:`medvill.distributed`), so every process computes the same metrics."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs, targets, index = [], [], []
    try:
        for batch in shard_loader(loader):
            logits = model(batch["text_ids"].to(device), batch["text_valid"].to(device),
                           images=batch["images"].to(device)).logits
            outputs.append(output_fn(logits.float()).cpu())
            targets.append(batch[target_key])
            index.append(batch["index"])
    finally:
        model.train(was)
    outputs, targets, index = gather_lists(outputs), gather_lists(targets), gather_lists(index)
    order = torch.cat(index).argsort()
    return torch.cat(outputs)[order], torch.cat(targets)[order]
