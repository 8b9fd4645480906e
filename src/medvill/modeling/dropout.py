"""Dropout whose CPU mask costs a sixteenth of a random draw per element.

On the CPU, ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``: one double from
the Mersenne-Twister generator per element, on one thread.  In the base pre-training step on 2
cores that was 12 % of the step (1.2 s of 9.6 s: the attention probabilities alone are
4 x 12 x 435 x 435 values per layer; BENCHMARKS.md, "Train step").  Here the mask is cut from
64-bit random words, 16 bits per element: element ``i`` is dropped when its 16 bits, read as
an unsigned number, are below ``round(p * 65536)``.  That realises ``p`` to 1/65536 (0.1 gives
0.1000061); the kept values are scaled by ``65536 / (65536 - round(p * 65536))``, the exact
inverse of the realised keep probability, so the expectation is unchanged.  Same generator
(``torch``'s default CPU generator, so ``torch.manual_seed`` and saved RNG states reproduce
it), a quarter of the draws, and a boolean mask kept for the backward pass as torch keeps its
own.  On other devices (CUDA's fused Philox dropout is fast) it is ``F.dropout`` itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # the mask's resolution: 16 random bits per element


def drop_threshold(p: float) -> int:
    """How many of the 65,536 16-bit values drop an element (``round(p * 65536)``)."""
    return round(p * _LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, float]:
    """A boolean CPU mask of ``shape`` (True = keep) and the scale of the kept values."""
    drop = drop_threshold(p)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return bits >= drop - _LEVELS // 2, _LEVELS / (_LEVELS - drop)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the cheaper mask on the CPU (module docstring)."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    drop = drop_threshold(p)
    if x.device.type != "cpu" or drop >= _LEVELS:  # other devices; p so close to 1 that all drop
        return F.dropout(x, p, training)
    if drop == 0:  # p < 1/131072: no element drops at this resolution
        return x
    return _MaskedScale.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout` (same attribute ``p``, no parameters: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
