"""Image-report retrieval (paper IV-B): a matching head on CLS, ranked in 100-candidate trials,
and, beside the paper's protocol, the two its peers report.

Training: binary matching loss on matched pairs and label-aware mismatched pairs (a report
whose positive label set differs), 1:1, reports unmasked; model selection on the AUROC of
the matching scores of fixed validation pairs (``match_auroc``).

Evaluation (:func:`evaluate_retrieval`) runs each protocol of ``eval.retrieval_protocol``
(comma-separated; the metrics of all of them land in one ``metrics.json``, side by side).
The metrics are defined exactly in :mod:`medvill.metrics.retrieval`; each is bootstrapped over
the queries (a trial, or an image and its report).

* ``trials`` (the default, the paper's): trials from :func:`medvill.metrics.build_trials`;
  report-to-image (R2I: a report query, 100 candidate images) and image-to-report (I2R).
  Metrics per direction: ``r2i_hit@5``, ``r2i_recall@5``, ``r2i_precision@5``, ``r2i_mrr`` and
  the same with ``i2r_``; ``trials`` (counts).
* ``5x200`` (ConVIRT, GLoRIA, MedCLIP, BenchX): up to 200 studies for each of Atelectasis,
  Cardiomegaly, Consolidation, Edema and Pleural Effusion, each eligible for exactly that one
  (:func:`medvill.metrics.retrieval.select_5x200`); every image queries the pool's reports and
  every report its images; a candidate is relevant when it is of the query's class.
  ``5x200_i2r_hit@1``, ``hit@5``, ``hit@10``, ``precision@5``, ``precision@10`` and the same
  with ``5x200_r2i_``; ``5x200`` (pool size, studies per class, cost).
* ``full_pool``: every image queries all the test pool's reports, every report all its images.
  ``pool_i2r_hit@1``, ``hit@5``, ``hit@10``, ``mrr`` (relevant = the true partner),
  ``pool_i2r_label_hit@1``, ... ``label_mrr`` (relevant = the same positive label set, as in the
  trials), ``pool_i2r_stage1_recall`` (the true partner among stage 1's top k) and the same with
  ``pool_r2i_``; ``pool`` (pool size, cost).

The pool protocols rank in two stages (:func:`rank_pool`).  Stage 1 orders the pool by a dot
product of embeddings computed once per image and once per report (:class:`UnimodalEmbeddings`):
for MedViLL, the model's own matching head under the Non-crossing mask, where CLS sees only the
image and CLS_L only the report, so the score of a pair factorises into an image part and a
report part; stage 2 re-ranks stage 1's top ``eval.rerank_k`` candidates with the fusion
matching head under the mask the model was fine-tuned with (:class:`PairScorer`).
``eval.rerank_k=0`` is exhaustive: the fusion head scores every pair and there is no stage 1.
The cost (fusion pair scores, seconds) is in the ``5x200`` / ``pool`` entries.

Each image's CNN features are computed once per evaluation, whatever the protocols, and every
(image, report) score at most once per protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from ..config import MaskScheme, RunConfig
from ..data.pairs import ReportPairCollator, ReportPairDataset, encode_reports, pad_stack
from ..data.records import Record
from ..data.splits import load_split
from ..data.transforms import load_image
from ..labels import positive_set
from ..metrics import Trial, build_trials, ranking_metrics
from ..metrics.retrieval import (
    PER_CLASS_5X200,
    Selection5x200,
    group_ids,
    pool_ranking_metrics,
    rerank_top,
    select_5x200,
    stage1_order,
)
from ..modeling.contrastive import label_aware_itc_loss
from ..modeling.heads import MedViLLForRetrieval
from ..modeling.medvill import MedViLLModel
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

log = logging.getLogger(__name__)


class RetrievalTask:
    """``itc_weight`` > 0 (``finetune.retrieval_itc_weight``): the model keeps contrastive
    projections and the loss adds their label-aware contrastive loss on the batch's images and
    their own reports (as in pre-training) to the matching loss."""

    name = "retrieval"
    select_metric = "match_auroc"

    def __init__(self, itc_weight: float = 0.0, itc_temperature: float = 0.1):
        self.itc_weight, self.itc_temperature = itc_weight, itc_temperature

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        if not self.itc_weight:
            logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["is_matched"].float())
            return StepOutput(loss=loss, metrics={"match_bce": loss.item()})
        # through forward (a DDP-wrapped model exposes nothing else): one CNN pass for both losses
        out = model(batch["text_ids"], batch["text_valid"], images=batch["images"], report_ids=batch["report_ids"],
                    report_valid=batch["report_valid"])
        bce = F.binary_cross_entropy_with_logits(out.logits.float(), batch["is_matched"].float())
        image, report = out.contrastive
        itc = label_aware_itc_loss(image @ report.T / self.itc_temperature, batch["label_group"])
        return StepOutput(loss=bce + self.itc_weight * itc, metrics={"match_bce": bce.item(), "itc_loss": itc.item()})

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
        self._unimodal: UnimodalEmbeddings | None = None

    @property
    def unimodal(self) -> UnimodalEmbeddings:
        """The records' per-image and per-report embeddings (computed once, on first use): stage
        1 of pool retrieval, and a contrastive model's own term in :meth:`scores`."""
        if self._unimodal is None:
            self._unimodal = UnimodalEmbeddings(self)
        return self._unimodal

    @torch.no_grad()
    def scores(self, pairs: list[tuple[int, int]], by_length: bool = False) -> np.ndarray:
        """The fusion score of each (image, report) pair, plus cosine / temperature of the
        contrastive projections for a model that has them; each new pair is scored once, in
        batches of ``batch_size`` in the order given, or with ``by_length`` in order of report
        length (less padding, and the batches, so the scores to the last bit, depend only on the
        set of new pairs)."""
        todo = [p for p in dict.fromkeys(pairs) if p not in self.cache]
        if by_length:
            todo.sort(key=lambda p: (len(self.text_ids[p[1]]), p))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            ids, valid = self.reports([j for _, j in chunk])
            feats = self.features[torch.tensor([i for i, _ in chunk], device=self.device)]
            out = self.model(ids, valid, visual_features=feats).logits.float().cpu().tolist()
            self.cache.update(zip(chunk, out, strict=True))
        scores = np.array([self.cache[p] for p in pairs])
        if getattr(self.model, "contrastive_dim", 0) and pairs:  # + cosine / temperature of the projections
            emb = self.unimodal
            emb.compute()
            assert emb.images is not None and emb.reports is not None
            rows, cols = (torch.as_tensor(c) for c in zip(*pairs, strict=True))
            cosine = (emb.images[rows] * emb.reports[cols]).sum(-1).numpy()
            scores = scores + cosine / self.model.itc_temperature
        return scores

    def reports(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reports' token ids, padded, and their validity mask: ``(B, T)`` each, on the device."""
        ids = pad_stack([self.text_ids[j] for j in indices], self.pad_id).to(self.device)
        lengths = torch.tensor([len(self.text_ids[j]) for j in indices], device=self.device)
        return ids, torch.arange(ids.shape[1], device=self.device)[None] < lengths[:, None]


class UnimodalEmbeddings:
    """Stage 1 of pool retrieval: one embedding per image and one per report of a
    :class:`PairScorer`'s records (computed on first use, then kept), compared by dot product.
    ``kind`` says which, by what the model has:

    * ``itc``: a model with contrastive projections (``contrastive_embeddings``, as
      :class:`~medvill.modeling.heads.MedViLLForPretraining` with ``contrastive_dim``) uses
      them: cosine similarity, as they were trained.
    * ``non_crossing`` (MedViLL's trunk, the retrieval model): the model's own matching head
      under the Non-crossing mask.  There CLS sees only the image and CLS_L only the report,
      so the pair's summary is ``pooled(CLS) * pooled(CLS_L)`` with each factor computed from
      one modality alone, and the head's logit ``w . (a_i * b_j) + bias`` is a weighted dot
      product of an image embedding ``a_i`` (an image-only pass) and a report embedding ``b_j``
      (a report-only pass).  Both are centred on the records' mean: centring the query removes
      ``w . (mean(a) * b_j)``, a term of the candidate alone that would rank the same few
      candidates high for every query (centring the candidates shifts a query's scores by a
      constant).  Measured on the synthetic test split (small preset, a retrieval model
      fine-tuned from a 600-step pre-training, 200 pairs, chance 0.16): share of true partners
      in the top 32, I2R / R2I, 0.32 / 0.27 centred, 0.19 / 0.17 not, 0.06 / 0.05 for the
      cosine of the pooled summaries.
    * ``pooled_cosine`` (the CNN & Transformer baseline, whose fusion does not factorise):
      cosine similarity of its image and text encoders' pooled outputs, centred.

    A retrieval model fine-tuned with ``finetune.retrieval_itc_weight`` > 0 keeps the
    pre-training's projections and gets ``itc``; one fine-tuned as the paper does (matching
    only) gets ``non_crossing``.
    """

    def __init__(self, scorer: PairScorer):
        self.scorer = scorer
        self.kind = ("itc" if getattr(scorer.model, "contrastive_dim", 0)
                     else "non_crossing" if isinstance(scorer.model.body, MedViLLModel) else "pooled_cosine")
        self.images: torch.Tensor | None = None  # (N, E)
        self.reports: torch.Tensor | None = None  # (N, E)
        self.seconds = 0.0

    @torch.no_grad()
    def summaries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw per-item vectors of :attr:`kind`, ``(images (N, E), reports (N, E))``: the
        contrastive embeddings, the pooled Non-crossing CLS and CLS_L, or the baseline's pooled
        image and text outputs."""
        sc = self.scorer
        model, body = sc.model, sc.model.body
        images, reports = [], []
        for start in range(0, len(sc.text_ids), sc.batch_size):
            rows = list(range(start, min(start + sc.batch_size, len(sc.text_ids))))
            feats = sc.features[start : rows[-1] + 1]  # (B, K, C)
            ids, valid = sc.reports(rows)
            if self.kind == "itc":
                embed: Callable[..., tuple[torch.Tensor, torch.Tensor]] = model.contrastive_embeddings
                image, report = embed(ids, valid, feats)
            elif isinstance(body, MedViLLModel):
                sep = torch.full((len(rows), 1), body.config.sep_token_id, device=sc.device)
                out = body(sep, torch.ones_like(sep, dtype=torch.bool), MaskScheme.NON_CROSSING, visual_features=feats)
                image = body.pooler(out.last_hidden_state[:, out.layout.cls_index])  # CLS: the image alone
                out = body(ids, valid, MaskScheme.NON_CROSSING, visual_features=feats[:, :0])  # no visual token
                report = body.pooler(out.last_hidden_state[:, out.layout.cls_l_index])  # CLS_L: the report alone
            else:
                both = body(ids, valid, visual_features=feats)
                image, report = both.image_pooled, both.text_pooled
            images.append(image.float().cpu())
            reports.append(report.float().cpu())
        return torch.cat(images), torch.cat(reports)

    @torch.no_grad()
    def compute(self) -> None:
        if self.images is not None:
            return
        t = time.perf_counter()
        images, reports = self.summaries()
        if self.kind == "non_crossing":
            weight = self.scorer.model.irm_head.weight[0].detach().float().cpu()  # (D,)
            images, reports = (images - images.mean(0)) * weight, reports - reports.mean(0)
        elif self.kind == "pooled_cosine":
            images, reports = (F.normalize(x - x.mean(0), dim=-1) for x in (images, reports))
        self.images, self.reports = images, reports
        self.seconds = time.perf_counter() - t

    def similarity(self, images: np.ndarray, reports: np.ndarray) -> np.ndarray:
        """Stage-1 scores ``(len(images), len(reports))`` of the given record indices."""
        self.compute()
        assert self.images is not None and self.reports is not None
        img, rep = self.images[torch.as_tensor(images)], self.reports[torch.as_tensor(reports)]
        return (img @ rep.T).numpy()


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


#: per-query metrics of one chunk of a ranking: ``(queries (B,), final order (B, M), stage-1
#: order (B, M) or None when exhaustive, k) -> {name: (B,)}``; indices are local to the pool
Measure = Callable[[np.ndarray, np.ndarray, np.ndarray | None, int], dict[str, np.ndarray]]


@dataclass
class PoolRanking:
    """What :func:`rank_pool` measured: per-query arrays ``{"i2r_NAME" | "r2i_NAME": (M,)}`` and
    the cost.  ``k``: candidates the fusion head re-ranked per query (the pool size when
    ``exhaustive``); ``pair_scores``: distinct (image, report) pairs it scored, both
    directions together; seconds of stage 1 (the embeddings of all the scorer's records, however
    many the pool has, then similarities and ordering) and stage 2 (fusion scores)."""

    metrics: dict[str, np.ndarray]
    pool_size: int
    k: int
    exhaustive: bool
    pair_scores: int
    stage1_seconds: float
    stage2_seconds: float
    stage1: str | None = None  # UnimodalEmbeddings.kind; None when exhaustive

    @property
    def seconds(self) -> float:
        return self.stage1_seconds + self.stage2_seconds

    def cost(self) -> dict[str, Any]:
        return {"rerank_k": self.k, "exhaustive": self.exhaustive, "stage1": self.stage1,
                "pair_scores": self.pair_scores, "exhaustive_pair_scores": self.pool_size**2,
                "stage1_seconds": self.stage1_seconds, "stage2_seconds": self.stage2_seconds, "seconds": self.seconds}


def rank_pool(scorer: PairScorer, pool: np.ndarray, rerank_k: int, seed: int, measure: Measure,
              stage1: UnimodalEmbeddings | None = None, chunk: int = 256) -> PoolRanking:
    """Rank ``pool`` (indices into the scorer's records, each an image and its report) in both
    directions, every item a query against the whole pool, in two stages: stage 1 orders the
    candidates by ``stage1`` similarity, stage 2 re-orders its top ``rerank_k`` by the fusion
    score (:func:`~medvill.metrics.retrieval.rerank_top`).  ``rerank_k`` 0: exhaustive, the
    fusion head scores every pair (no stage 1).  Ties break on a random permutation of the pool
    (``seed``).  ``measure`` turns each chunk of rankings into per-query metrics.  The scorer's
    pair cache is emptied first, so the cost is this ranking's own."""
    pool = np.asarray(pool, dtype=np.int64)
    m = len(pool)
    exhaustive = rerank_k == 0
    k = m if exhaustive else min(rerank_k, m)
    tiebreak = np.random.default_rng(seed).permutation(m)
    scorer.cache.clear()
    s1 = s2 = 0.0
    if not exhaustive:
        stage1 = stage1 or scorer.unimodal
        stage1.compute()
        s1 = stage1.seconds
    parts: dict[str, list[np.ndarray]] = {}
    for direction in ("i2r", "r2i"):
        for start in range(0, m, chunk):
            queries = np.arange(start, min(start + chunk, m))
            t = time.perf_counter()
            first: np.ndarray | None = None
            if exhaustive:
                base = np.broadcast_to(np.arange(m), (len(queries), m))
            else:
                assert stage1 is not None
                sim = (stage1.similarity(pool[queries], pool) if direction == "i2r"
                       else stage1.similarity(pool, pool[queries]).T)  # (B, M): queries x candidates
                base = first = stage1_order(sim, tiebreak)
            s1 += time.perf_counter() - t
            query_ids = np.repeat(pool[queries], k).tolist()
            candidate_ids = pool[base[:, :k]].ravel().tolist()
            pairs = list(zip(query_ids, candidate_ids, strict=True) if direction == "i2r"
                         else zip(candidate_ids, query_ids, strict=True))  # (image, report)
            t = time.perf_counter()
            scores = scorer.scores(pairs, by_length=True).reshape(len(queries), k)
            s2 += time.perf_counter() - t
            for name, values in measure(queries, rerank_top(base, scores, tiebreak), first, k).items():
                parts.setdefault(f"{direction}_{name}", []).append(values)
    metrics = {name: np.concatenate(values) for name, values in parts.items()}
    kind = None if exhaustive or stage1 is None else stage1.kind
    return PoolRanking(metrics, m, k, exhaustive, len(scorer.cache), s1, s2, kind)


def _bootstrapped(table: dict[str, np.ndarray], n: int, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    """Every per-query array of ``table`` averaged, over ``ctx.n_bootstrap`` resamples of the
    ``n`` queries (the same resample for every metric)."""

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        return {name: float(values[idx].mean()) for name, values in table.items()}

    return scored(n, metric_fn, ctx.n_bootstrap, ctx.seed)


def _info(count: int, ctx: EvalContext, **extra: Any) -> dict[str, Any]:
    """An information entry (no bootstrap values: not a table column)."""
    return {"mean": float(count), "std": 0.0, "n": ctx.n_bootstrap, "values": [], "full": float(count), **extra}


def trials_protocol(ctx: EvalContext, scorer: PairScorer, trials: list[Trial]) -> dict[str, dict[str, Any]]:
    """The paper's trials, both directions; bootstrap over trials."""
    scorer.cache.clear()
    per_trial = retrieval_trials_metrics(scorer, trials)
    names = list(per_trial["r2i"][0])
    table = {f"{d}_{k}": np.array([t[k] for t in per_trial[d]]) for d in ("r2i", "i2r") for k in names}
    out = _bootstrapped(table, len(trials), ctx)
    out["trials"] = _info(len(trials), ctx, cnn_passes=scorer.cnn_passes, pair_scores=len(scorer.cache))
    return out


def chexpert_5x200_protocol(ctx: EvalContext, scorer: PairScorer, selection: Selection5x200,
                            stage1: UnimodalEmbeddings) -> dict[str, dict[str, Any]]:
    """CheXpert 5x200: label-conditioned retrieval over the selected pool; bootstrap over its items."""
    classes = selection.classes

    def measure(queries: np.ndarray, order: np.ndarray, first: np.ndarray | None, k: int) -> dict[str, np.ndarray]:
        return pool_ranking_metrics(order, classes[queries], classes, hits=(1, 5, 10), precisions=(5, 10))

    ranking = rank_pool(scorer, selection.indices, ctx.cfg.eval.rerank_k, ctx.cfg.eval.seed, measure, stage1)
    out = _bootstrapped({f"5x200_{k}": v for k, v in ranking.metrics.items()}, ranking.pool_size, ctx)
    out["5x200"] = _info(ranking.pool_size, ctx, per_class=selection.selected, eligible=selection.eligible,
                         skipped=selection.skipped, **ranking.cost())
    return out


def full_pool_protocol(ctx: EvalContext, scorer: PairScorer, stage1: UnimodalEmbeddings) -> dict[str, dict[str, Any]]:
    """Every item of the test pool a query against the whole pool; bootstrap over the items."""
    n = len(ctx.examples)
    groups = group_ids([positive_set(r.labels) for r in ctx.examples])
    partner = np.arange(n)

    def measure(queries: np.ndarray, order: np.ndarray, first: np.ndarray | None, k: int) -> dict[str, np.ndarray]:
        out = pool_ranking_metrics(order, queries, partner, hits=(1, 5, 10), mrr=True)
        label = pool_ranking_metrics(order, groups[queries], groups, hits=(1, 5, 10), mrr=True)
        out.update({f"label_{name}": v for name, v in label.items()})
        # exhaustive: every pair reaches the fusion head
        out["stage1_recall"] = (np.ones(len(queries)) if first is None
                                else (first[:, :k] == queries[:, None]).any(axis=1).astype(np.float64))
        return out

    ranking = rank_pool(scorer, partner, ctx.cfg.eval.rerank_k, ctx.cfg.eval.seed, measure, stage1)
    out = _bootstrapped({f"pool_{k}": v for k, v in ranking.metrics.items()}, n, ctx)
    out["pool"] = _info(n, ctx, **ranking.cost())
    return out


# ============================================================================================
# the task's contract (tasks/registry.py)
# ============================================================================================

def fit_retrieval(task: RetrievalTask, ctx: FitContext) -> FitPlan:
    """Matched and label-aware mismatched pairs, reports unmasked; the validation pairs are
    fixed; validation scores matching AUROC."""
    mcfg, tok, cfg = ctx.model_config, ctx.tokenizer, ctx.cfg

    def pairs(records: list[Record], train: bool) -> DataLoader:
        ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, seed=cfg.train.seed,
                               contrastive=train and task.itc_weight > 0)
        return loader(ds, cfg, tok, train=train, collate=ReportPairCollator(tok.pad_id))

    train_loader, val_loader = pairs(ctx.train, True), pairs(ctx.validation, False)
    return FitPlan(train_loader, lambda m: task.match_auroc(m, val_loader))


def evaluate_retrieval(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    """Each protocol of ``cfg.eval.retrieval_protocol`` in turn, one metrics dictionary (see
    the module docstring).  Trials and the 5x200 selection are drawn before any model work,
    so a pool too small for them fails at once; the CNN features and the stage-1 embeddings
    are shared by the protocols."""
    e, model, records = ctx.cfg.eval, ctx.model, ctx.examples
    assert isinstance(model, MedViLLForRetrieval)  # from_pretrained on the task's class loads only that class
    protocols = e.retrieval_protocols
    trials = make_trials(records, e.n_candidates, e.seed, e.max_queries) if "trials" in protocols else None
    selection = None
    if "5x200" in protocols:
        selection = select_5x200(np.stack([r.labels for r in records]), seed=e.seed)
        short = {name: n for name, n in selection.selected.items() if n < PER_CLASS_5X200}
        if short:
            log.warning("5x200: the evaluated split has fewer than 200 eligible studies for %s: using what there "
                        "is (a class with none is skipped)", short)
    scorer = PairScorer(model, records, ctx.tokenizer, model.config.image_size, model.config.max_text_len,
                        batch_size=max(ctx.cfg.train.batch_size, 8))
    stage1 = scorer.unimodal
    out: dict[str, dict[str, Any]] = {}
    for name in protocols:
        if name == "trials":
            assert trials is not None
            out.update(trials_protocol(ctx, scorer, trials))
        elif name == "5x200":
            assert selection is not None
            out.update(chexpert_5x200_protocol(ctx, scorer, selection, stage1))
        else:
            out.update(full_pool_protocol(ctx, scorer, stage1))
    return out


def _make_task(cfg: RunConfig | None, checkpoint: Path | None) -> RetrievalTask:
    if cfg is None:  # evaluation: the checkpoint's model says how it scores
        return RetrievalTask()
    return RetrievalTask(cfg.finetune.retrieval_itc_weight, cfg.pretrain.itc_temperature)


def _contrastive_head(task: RetrievalTask, cfg: RunConfig, train: list) -> dict[str, Any]:
    """The contrastive projections' size and temperature are pre-training's (``pretrain.itc_*``),
    so that a pre-trained model's projections carry over."""
    if not task.itc_weight:
        return {}
    return {"contrastive_dim": cfg.pretrain.itc_dim, "itc_temperature": cfg.pretrain.itc_temperature}


def _baseline_task(cfg: RunConfig | None, checkpoint: Path | None) -> RetrievalTask:
    return RetrievalTask()  # the CNN & Transformer trunk has no Non-crossing report pass: matching only


MEDVILL = ModelVariant(MedViLLForRetrieval, _make_task, fit_retrieval, head=_contrastive_head)
SPEC = register_task(TaskSpec(
    name="retrieval",
    medvill=MEDVILL,
    examples=load_split,
    evaluate=evaluate_retrieval,
    baselines={"cnn-transformer": on_cnn_transformer(ModelVariant(MedViLLForRetrieval, _baseline_task,
                                                                  fit_retrieval))},
))
