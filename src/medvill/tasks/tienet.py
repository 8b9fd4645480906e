"""TieNet's two tasks: its joint objective for training, MedViLL's protocol for everything else.

Training (both tasks): ``alpha * BCE + (1 - alpha) * generation CE`` from one forward pass
over an image, its report (teacher-forced) and its 14 observations
(:class:`medvill.modeling.baselines.TieNet`), so the batches are the classification ones
(``images``, ``text_ids``, ``text_valid``, ``targets``).

* classification: validation selects on micro AUROC; predictions and metrics are
  :class:`ClassificationTask`'s (the report is an input, as for MedViLL);
* generation: validation selects on the perplexity of the reference reports; evaluation
  decodes free-running and scores BLEU-4, clinical efficacy and perplexity exactly as for
  MedViLL (:class:`GenerationTask`, :func:`medvill.generation.generate`).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StepOutput
from .classification import ClassificationTask
from .generation import GenerationTask


def joint_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    out = model(batch["text_ids"], batch["text_valid"], images=batch["images"], targets=batch["targets"])
    return StepOutput(loss=out.loss, metrics={"bce": out.classification_loss.item(),
                                              "gen_ce": out.generation_loss.item()})


class TieNetClassificationTask(ClassificationTask):
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        return joint_step(model, batch)


class TieNetGenerationTask(GenerationTask):
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        return joint_step(model, batch)
