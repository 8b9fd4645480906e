"""Pre-training task: masked language modelling + image-report matching (paper III-B)."""

from __future__ import annotations

import random

import torch
from torch import nn

from ..config import MaskScheme, PretrainConfig
from ..modeling.masks import resolve_scheme
from .base import StepOutput


class PretrainTask:
    """``loss = MLM + irm_weight * IRM`` under the configured mask scheme.

    Bi&S2S draws S2S (probability ``s2s_prob``) or Bi once per mini-batch.  The draw and the
    k-of-K visual sampling depend only on ``(seed, step)``, so every process of a
    distributed run makes the same choice and a resumed run repeats it.
    """

    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed

    def scheme_for_step(self, step: int) -> MaskScheme:
        return resolve_scheme(self.cfg.mask, self.cfg.s2s_prob, random.Random(self.seed * 1_000_003 + step))

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        scheme = self.scheme_for_step(step)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        out = model(
            text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=scheme, images=batch["images"],
            mlm_labels=batch["mlm_labels"], is_matched=batch["is_matched"],
            num_visual_sampled=self.cfg.visual_tokens_sampled, generator=gen,
        )
        loss = out.mlm_loss + self.cfg.irm_weight * out.irm_loss
        return StepOutput(loss=loss, metrics={
            "mlm_loss": out.mlm_loss.item(), "irm_loss": out.irm_loss.item(),
            "mlm_acc": out.mlm_accuracy.item(), "irm_acc": out.irm_accuracy.item(),
            "s2s_batch": float(scheme == MaskScheme.S2S),
        })
