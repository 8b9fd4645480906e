"""The task contract: a task turns a batch into a loss (and metrics); it owns no loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # detached scalars for logging


class Task(Protocol):
    name: str

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput: ...
