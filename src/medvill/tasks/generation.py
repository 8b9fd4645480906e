"""Radiology report generation (paper IV-D): MLM fine-tuning under the S2S mask.

Training predicts report tokens from the image and the tokens before them (S2S, all K
visual tokens): with the ``full`` objective (default) every token, the closing [SEP]
included, in one pass with a [MASK] query per position; with ``mlm`` (the paper's) a 15 %
sample of them, [SEP] included.  Model selection: perplexity of the validation reports
(lower is better).
Evaluation generates free-running (greedy or beam; :mod:`medvill.generation`) and reports
BLEU-4, clinical efficacy (our labeler on generated vs reference) and perplexity.  The test
images are decoded together, at most ``eval.decode_batch_size`` decoding rows (images x beams)
at a time (a report that ends leaves its batch; every report is the one its image gets alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import MaskScheme, RunConfig
from ..data.pairs import MLMSpec, ReportPairCollator, ReportPairDataset
from ..data.splits import load_split
from ..distributed import gather_lists, shard_loader
from ..generation import GenerationConfig, GenerativeModel, generate, reference_nll
from ..metrics import bleu4, clinical_efficacy
from ..modeling.baselines import TieNet
from ..modeling.heads import MedViLLForPretraining
from ..tokenization import MedTokenizer
from .base import StepOutput
from .common import loader, record_dataset
from .registry import (
    EvalContext,
    FitContext,
    FitPlan,
    ModelVariant,
    TaskSpec,
    register_task,
    scored,
    tienet_head,
)


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
                         cfg: GenerationConfig, max_rows: int | None = None) -> list[str]:
        """The loader's images' reports, in index order; ``max_rows`` caps the decoding rows
        (images x beams) of one :func:`generate` call (None: a loader batch at a time)."""
        generative = _generative(model)
        out: list[tuple[int, str]] = []
        device = next(model.parameters()).device
        for batch in loader:
            n = len(batch["images"])
            step = n if max_rows is None else max(1, max_rows // max(1, cfg.num_beams))
            for start in range(0, n, step):
                ids = generate(generative, batch["images"][start:start + step].to(device), cfg)
                index = batch["index"][start:start + step].tolist()
                out += [(int(i), tokenizer.decode(t)) for i, t in zip(index, ids, strict=True)]
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


# ============================================================================================
# the task's contract (tasks/registry.py)
# ============================================================================================

def fit_generation(task: GenerationTask, ctx: FitContext) -> FitPlan:
    """``full``: the unmasked reports (every token a target); ``mlm``: a masked sample, [SEP]
    included.  Validation: perplexity of the reference reports."""
    p, mcfg, tok, cfg = ctx.cfg.pretrain, ctx.model_config, ctx.tokenizer, ctx.cfg
    mlm = None if task.objective == "full" else MLMSpec(p.mlm_prob, p.mlm_mask_frac, p.mlm_random_frac)
    train_ds = ReportPairDataset(ctx.train, tok, mcfg.image_size, mcfg.max_text_len, mlm, seed=cfg.train.seed,
                               matching=False, mask_end=True)
    val_ds = ReportPairDataset(ctx.validation, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, seed=cfg.train.seed,
                             matching=False)
    train_loader = loader(train_ds, cfg, tok, train=True, collate=ReportPairCollator(tok.pad_id))
    val_loader = loader(val_ds, cfg, tok, train=False, collate=ReportPairCollator(tok.pad_id))
    return FitPlan(train_loader, lambda m: task.perplexity(m, val_loader))


def fit_tienet_generation(task: GenerationTask, ctx: FitContext) -> FitPlan:
    """TieNet's joint objective needs the observations too: the classification batches."""
    mcfg, tok = ctx.model_config, ctx.tokenizer
    train_loader = loader(record_dataset(ctx.train, tok, mcfg), ctx.cfg, tok, train=True)
    val_loader = loader(record_dataset(ctx.validation, tok, mcfg), ctx.cfg, tok, train=False)
    return FitPlan(train_loader, lambda m: task.perplexity(m, val_loader))


def evaluate_generation(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    """Free-running generation; BLEU-4, clinical efficacy, perplexity; bootstrap."""
    from ..labeler import label_reports

    task, model, tok, records, e = ctx.task, ctx.model, ctx.tokenizer, ctx.examples, ctx.cfg.eval
    mcfg = ctx.cfg.model
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, seed=ctx.seed, matching=False)
    loader_ = loader(ds, ctx.cfg, tok, train=False, collate=ReportPairCollator(tok.pad_id))
    gen_cfg = GenerationConfig(max_length=e.max_length or mcfg.max_text_len - 1, num_beams=e.num_beams,
                               length_penalty=e.length_penalty, no_repeat_ngram_size=e.no_repeat_ngram_size)
    hyps = task.generate_reports(model, loader_, tok, gen_cfg, max_rows=e.decode_batch_size)
    refs = [r.text for r in records]
    nll, n_tokens = task.reference_scores(model, loader_)
    scores = GenerationScores(hyps, refs, label_reports(hyps), label_reports(refs), nll, n_tokens)
    out = scored(len(records), scores.metrics, ctx.n_bootstrap, ctx.seed)
    out["examples"] = {"mean": float(len(records)), "std": 0.0, "n": ctx.n_bootstrap, "values": [],
                       "samples": [{"id": r.id, "generated": h, "reference": r.text} for r, h in
                                   zip(records[:5], hyps[:5], strict=False)]}
    return out


def _make_task(cfg: RunConfig | None, checkpoint: Path | None) -> GenerationTask:
    return GenerationTask(cfg.finetune.generation_objective if cfg is not None else "full")


def _tienet_task(cfg: RunConfig | None, checkpoint: Path | None) -> GenerationTask:
    from .tienet import TieNetGenerationTask

    return TieNetGenerationTask()


SPEC = register_task(TaskSpec(
    name="generation",
    medvill=ModelVariant(MedViLLForPretraining, _make_task, fit_generation),
    examples=load_split,
    evaluate=evaluate_generation,
    baselines={"tienet": ModelVariant(TieNet, _tienet_task, fit_tienet_generation, head=tienet_head)},
))
