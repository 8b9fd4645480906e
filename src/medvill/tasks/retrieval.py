"""Image-report retrieval (paper IV-B): a matching head on CLS, ranked in 100-candidate trials.

Training: binary matching loss on matched pairs and label-aware mismatched pairs (a report
whose positive label set differs), 1:1, reports unmasked; model selection on the AUROC of
the matching scores of fixed validation pairs (``match_auroc``).

Evaluation (:func:`retrieval_trials_metrics`): trials from :func:`medvill.metrics.build_trials`;
report-to-image (R2I: a report query, 100 candidate images) and image-to-report (I2R).  Each
image's CNN features are computed once per evaluation and every (image, report) score at
most once, however many trials share it.  Metrics per direction: ``r2i_hit@5``,
``r2i_recall@5``, ``r2i_precision@5``, ``r2i_mrr`` and the same with ``i2r_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data.pairs import ReportPairCollator, ReportPairDataset, encode_reports, pad_stack
from ..data.records import Record
from ..data.splits import load_split
from ..data.transforms import load_image
from ..labels import positive_set
from ..metrics import Trial, build_trials, ranking_metrics
from ..modeling.heads import MedViLLForRetrieval
from ..tokenization import MedTokenizer
from .base import StepOutput, run_over
from .common import loader
from .registry import (
    EvalContext,
    FitContext,
    FitPlan,
    ModelVariant,
    TaskSpec,
    on_cnn_transformer,
    register_task,
    scored,
)


class RetrievalTask:
    name = "retrieval"
    select_metric = "match_auroc"

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["is_matched"].float())
        return StepOutput(loss=loss, metrics={"match_bce": loss.item()})

    def match_auroc(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        scores, labels = run_over(model, loader, lambda logits: logits, "is_matched")
        y, s = labels.numpy(), scores.numpy()
        auc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
        return {"match_auroc": auc, "match_accuracy": float(((s > 0) == (y == 1)).mean())}


class PairScorer:
    """Scores (image i, report j) pairs of a test pool, caching CNN features and scores."""

    def __init__(self, model: MedViLLForRetrieval, records: list[Record], tokenizer: MedTokenizer, image_size: int,
                 max_text_len: int, batch_size: int = 64):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.text_ids = encode_reports(tokenizer, [r.text for r in records], max_text_len)
        assert tokenizer.pad_id is not None  # MedTokenizer's constructor checks its special tokens
        self.pad_id: int = tokenizer.pad_id
        self.batch_size = batch_size
        feats = []
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                imgs = torch.stack([load_image(r.image, image_size) for r in records[start : start + batch_size]])
                feats.append(model.body.encode_image(imgs.to(self.device)))  # once per image
        self.features = torch.cat(feats)  # (N, K, C)
        self.cache: dict[tuple[int, int], float] = {}
        self.cnn_passes = len(records)

    @torch.no_grad()
    def scores(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        todo = [p for p in dict.fromkeys(pairs) if p not in self.cache]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            ids = pad_stack([self.text_ids[j] for _, j in chunk], self.pad_id).to(self.device)
            lengths = torch.tensor([len(self.text_ids[j]) for _, j in chunk], device=self.device)
            valid = torch.arange(ids.shape[1], device=self.device)[None] < lengths[:, None]
            feats = self.features[torch.tensor([i for i, _ in chunk], device=self.device)]
            out = self.model(ids, valid, visual_features=feats).logits.float().cpu().tolist()
            self.cache.update(zip(chunk, out, strict=True))
        return np.array([self.cache[p] for p in pairs])


def retrieval_trials_metrics(scorer: PairScorer, trials: list[Trial], k: int = 5) -> dict[str, list[dict[str, float]]]:
    """Per-trial metrics of both directions: ``{"r2i": [...], "i2r": [...]}``."""
    out: dict[str, list[dict[str, float]]] = {"r2i": [], "i2r": []}
    for t in trials:
        r2i = scorer.scores([(int(c), t.query) for c in t.candidates])  # report query, candidate images
        i2r = scorer.scores([(t.query, int(c)) for c in t.candidates])  # image query, candidate reports
        out["r2i"].append(ranking_metrics(r2i, t.positive, k))
        out["i2r"].append(ranking_metrics(i2r, t.positive, k))
    return out


def make_trials(records: list[Record], n_candidates: int, seed: int, max_queries: int | None) -> list[Trial]:
    sets = [positive_set(r.labels) for r in records]
    queries = None
    if max_queries is not None and max_queries < len(records):
        queries = sorted(np.random.default_rng(seed + 1).choice(len(records), size=max_queries, replace=False))
    return build_trials(sets, n_candidates=n_candidates, seed=seed, queries=queries)


# ============================================================================================
# the task's contract (tasks/registry.py)
# ============================================================================================

def fit_retrieval(task: RetrievalTask, ctx: FitContext) -> FitPlan:
    """Matched and label-aware mismatched pairs, reports unmasked; the validation pairs are
    fixed; validation scores matching AUROC."""
    mcfg, tok, cfg = ctx.model_config, ctx.tokenizer, ctx.cfg

    def pairs(records: list[Record], train: bool) -> DataLoader:
        ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, seed=cfg.train.seed)
        return loader(ds, cfg, tok, train=train, collate=ReportPairCollator(tok.pad_id))

    train_loader, val_loader = pairs(ctx.train, True), pairs(ctx.validation, False)
    return FitPlan(train_loader, lambda m: task.match_auroc(m, val_loader))


def evaluate_retrieval(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    """Trials of ``cfg.eval.n_candidates`` candidates, both directions; bootstrap over trials."""
    e, model, records = ctx.cfg.eval, ctx.model, ctx.examples
    assert isinstance(model, MedViLLForRetrieval)  # from_pretrained on the task's class loads only that class
    trials = make_trials(records, e.n_candidates, e.seed, e.max_queries)
    scorer = PairScorer(model, records, ctx.tokenizer, model.config.image_size, model.config.max_text_len,
                        batch_size=max(ctx.cfg.train.batch_size, 8))
    per_trial = retrieval_trials_metrics(scorer, trials)
    names = list(per_trial["r2i"][0])
    table = {f"{d}_{k}": np.array([t[k] for t in per_trial[d]]) for d in ("r2i", "i2r") for k in names}

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        return {name: float(values[idx].mean()) for name, values in table.items()}

    out = scored(len(trials), metric_fn, ctx.n_bootstrap, ctx.seed)
    out["trials"] = {"mean": float(len(trials)), "std": 0.0, "n": ctx.n_bootstrap, "values": [],
                     "full": float(len(trials)), "cnn_passes": scorer.cnn_passes, "pair_scores": len(scorer.cache)}
    return out


def _make_task(cfg: RunConfig | None, checkpoint: Path | None) -> RetrievalTask:
    return RetrievalTask()


MEDVILL = ModelVariant(MedViLLForRetrieval, _make_task, fit_retrieval)
SPEC = register_task(TaskSpec(
    name="retrieval",
    medvill=MEDVILL,
    examples=load_split,
    evaluate=evaluate_retrieval,
    baselines={"cnn-transformer": on_cnn_transformer(MEDVILL)},
))
