"""Radiology report generation (paper IV-D): MLM fine-tuning under the S2S mask.

Training predicts report tokens from the image and the tokens before them (S2S, all K
visual tokens): with the ``full`` objective (default) every token, the closing [SEP]
included, in one pass with a [MASK] query per position; with ``mlm`` (the paper's) a 15 %
sample of them, [SEP] included.  Model selection: perplexity of the validation reports
(lower is better).
Evaluation generates free-running (greedy or beam; :mod:`medvill.generation`) and reports
BLEU-4, clinical efficacy (our labeler on generated vs reference) and perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import MaskScheme
from ..distributed import gather_lists, shard_loader
from ..generation import GenerationConfig, GenerativeModel, generate, reference_nll
from ..metrics import bleu4, clinical_efficacy
from ..modeling.baselines import TieNet
from ..modeling.heads import MedViLLForPretraining
from ..tokenization import MedTokenizer
from .base import StepOutput


class GenerationTask:
    name = "generation"
    select_metric = "perplexity"
    select_mode = "min"

    def __init__(self, objective: str = "full"):
        if objective not in ("full", "mlm"):
            raise ValueError(f"unknown generation objective {objective!r} (full | mlm)")
        self.objective = objective

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        if self.objective == "full":  # the batch holds the unmasked reports
            out = model(text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=MaskScheme.S2S,
                        images=batch["images"], matching=False, all_tokens=True)
        else:
            out = model(text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=MaskScheme.S2S,
                        images=batch["images"], mlm_labels=batch["mlm_labels"], matching=False)
        return StepOutput(loss=out.mlm_loss,
                          metrics={"mlm_loss": out.mlm_loss.item(), "mlm_acc": out.mlm_accuracy.item()})

    @torch.no_grad()
    def perplexity(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Validation perplexity of the reference reports (unmasked ``text_ids`` of ``loader``)."""
        nll, n = self.reference_scores(model, loader)
        return {"perplexity": float(np.exp(nll.sum() / n.sum()))}

    @torch.no_grad()
    def reference_scores(self, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        generative = _generative(model)
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        nlls, counts, index = [], [], []
        for batch in shard_loader(loader):  # a share per process, gathered below
            nll, n = reference_nll(generative, batch["images"].to(device), batch["text_ids"].to(device),
                                   batch["text_valid"].to(device))
            nlls.append(nll.cpu())
            counts.append(n.cpu())
            index.append(batch["index"])
        model.train(was)
        nlls, counts, index = gather_lists(nlls), gather_lists(counts), gather_lists(index)
        order = torch.cat(index).argsort()
        return torch.cat(nlls)[order].numpy(), torch.cat(counts)[order].numpy()

    @torch.no_grad()
    def generate_reports(self, model: nn.Module, loader: DataLoader, tokenizer: MedTokenizer,
                         cfg: GenerationConfig) -> list[str]:
        generative = _generative(model)
        out: list[tuple[int, str]] = []
        device = next(model.parameters()).device
        for batch in loader:
            ids = generate(generative, batch["images"].to(device), cfg)
            out += [(int(i), tokenizer.decode(t)) for i, t in zip(batch["index"].tolist(), ids, strict=True)]
        return [text for _, text in sorted(out)]


def _generative(model: nn.Module) -> GenerativeModel:
    """``model`` as a model :mod:`medvill.generation` decodes (MedViLL's pre-training model or TieNet)."""
    if not isinstance(model, (MedViLLForPretraining, TieNet)):
        raise TypeError(f"report generation needs a MedViLLForPretraining or TieNet model, not {type(model).__name__}")
    return model


@dataclass
class GenerationScores:
    """Per-example quantities from which every metric of a resample is computed."""

    hypotheses: list[str]
    references: list[str]
    generated_labels: np.ndarray
    reference_labels: np.ndarray
    nll: np.ndarray
    n_tokens: np.ndarray

    def metrics(self, idx: np.ndarray) -> dict[str, float]:
        out = {"bleu4": bleu4([self.hypotheses[i] for i in idx], [self.references[i] for i in idx]),
               "perplexity": float(np.exp(self.nll[idx].sum() / self.n_tokens[idx].sum()))}
        out.update(clinical_efficacy(self.generated_labels[idx], self.reference_labels[idx]))
        return out
