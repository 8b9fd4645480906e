"""Image-report retrieval metrics: the paper's trials and two protocols of its peers.

**Trials** (paper section IV; ``eval.retrieval_protocol=trials``, the default).  A trial takes
one query (a report for report-to-image, an image for image-to-report) and 100 candidates
from the other modality: the query's true partner plus 99 others drawn without replacement
from the test pool.  A candidate is *positive* when its report's set of positive CheXpert
labels equals the query's (so the true partner always is).  Candidates are ranked by
descending score; ties are broken by the candidate's (random) position in the trial, which is
fixed by the seed, so ranks are deterministic.

* Hit@k = 1 if at least one positive is in the top k;
* Recall@k = positives in the top k / positives among the 100;
* Precision@k = positives in the top k / k;
* MRR = 1 / rank of the first positive (rank 1 = top).

**CheXpert 5x200** (ConVIRT, GLoRIA, MedCLIP, BenchX; ``5x200``).  The pool is up to 200
studies for each of the five observations :data:`CHEXPERT_5X200`, drawn without replacement
(seeded, each class on its own) from the studies eligible for exactly one class
(:func:`eligible_5x200`, the peers' rule: positive for that observation and negative or not
mentioned for every other observation but No Finding; an uncertain label anywhere else rules a
study out).  Every image queries the pool's reports (I2R) and every report the pool's images
(R2I).  A candidate is *relevant* when it belongs to the query's class (label-conditioned; the
true partner always is).  With the pool ranked best first:

* Hit@k = 1 if at least one relevant candidate is in the top k (k = 1, 5, 10);
* Precision@k = relevant candidates in the top k / k (k = 5, 10).

**Full pool** (``full_pool``).  Every image queries all the test pool's reports and every
report all its images.  Metrics over the whole ranking, in two relevance flavours: the true
partner only (``hit@k``, ``mrr``) and, as in the trials, every candidate whose positive label
set equals the query's (``label_hit@k``, ``label_mrr``):

* Hit@k = 1 if a relevant candidate is in the top k (k = 1, 5, 10);
* MRR = 1 / rank of the first relevant candidate over the whole pool;
* stage-1 recall = 1 if the true partner is among stage 1's top k (below).

**Two-stage ranking** (both pool protocols, :func:`stage1_order`, :func:`rerank_top`): stage 1
orders the pool by a cheap similarity, stage 2 re-orders its top k by the fusion model's
matching score; candidates beyond the top k keep their stage-1 order after them.  Ties break
on a fixed random permutation of the pool (``tiebreak``), in both stages.  Exhaustive ranking
(every pair scored) is the same with k = pool size.  Each metric is averaged over the queries
of a direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS


@dataclass(frozen=True)
class Trial:
    query: int  # index of the query pair in the test pool
    candidates: np.ndarray  # (C,) pool indices; contains ``query`` (the true partner)
    positive: np.ndarray  # (C,) bool


def build_trials(
    label_sets: Sequence[frozenset[int]], n_candidates: int = 100, seed: int = 0, queries: Sequence[int] | None = None
) -> list[Trial]:
    """One trial per query (default: every pair of the pool)."""
    n = len(label_sets)
    if n < n_candidates:
        raise ValueError(f"a trial needs {n_candidates} candidates but the test pool has only {n} pairs")
    rng = np.random.default_rng(seed)
    trials = []
    for q in range(n) if queries is None else queries:
        others = rng.choice(n - 1, size=n_candidates - 1, replace=False)
        others = others + (others >= q)  # skip the query itself
        cand = np.concatenate([[q], others])
        rng.shuffle(cand)
        positive = np.array([label_sets[c] == label_sets[q] for c in cand])
        trials.append(Trial(query=int(q), candidates=cand, positive=positive))
    return trials


def ranking_metrics(scores: np.ndarray, positive: np.ndarray, k: int = 5) -> dict[str, float]:
    """Metrics of one trial from its candidate scores (higher = better match)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape:
        raise ValueError("scores and positive must have the same shape")
    if not positive.any():
        raise ValueError("a trial has no positive candidate (the true partner must be one)")
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score desc, then position
    ranked = positive[order]
    top = ranked[:k]
    first = int(np.argmax(ranked)) + 1
    return {
        f"hit@{k}": float(top.any()),
        f"recall@{k}": float(top.sum() / positive.sum()),
        f"precision@{k}": float(top.sum() / k),
        "mrr": 1.0 / first,
    }


def retrieval_metrics(per_trial: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of the per-trial metrics."""
    if not per_trial:
        raise ValueError("no trials")
    return {key: float(np.mean([t[key] for t in per_trial])) for key in per_trial[0]}


# ============================================================================================
# CheXpert 5x200
# ============================================================================================

#: the five observations of the 5x200 protocol (CheXpert's competition tasks), in the peers' order
CHEXPERT_5X200: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
PER_CLASS_5X200 = 200


def eligible_5x200(labels: np.ndarray) -> np.ndarray:
    """``(N, 14)`` label vectors (1 / 0 / -1, blank = nan) -> ``(N,)``: the index in
    :data:`CHEXPERT_5X200` of the one class each study is eligible for, -1 for none.

    The peers' rule: a study belongs to class c when c is positive (1) and every other
    observation except No Finding is negative (0) or not mentioned (blank); a second positive
    or an uncertain (-1) label anywhere else makes it ineligible."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[1] != len(CHEXPERT_OBSERVATIONS):
        raise ValueError(f"labels must be (N, {len(CHEXPERT_OBSERVATIONS)}), got {labels.shape}")
    clear = np.isnan(labels) | (labels == 0)  # (N, 14): negative or not mentioned
    clear[:, CHEXPERT_OBSERVATIONS.index("No Finding")] = True  # not part of the rule
    out = np.full(len(labels), -1, dtype=np.int64)
    for c, name in enumerate(CHEXPERT_5X200):
        j = CHEXPERT_OBSERVATIONS.index(name)
        others = np.delete(clear, j, axis=1).all(axis=1)
        out[(labels[:, j] == 1) & others] = c
    return out


@dataclass(frozen=True)
class Selection5x200:
    """The 5x200 pool: ``indices`` into the test pool (grouped by class), each one's ``classes``
    (index in :data:`CHEXPERT_5X200`), and per class name the studies ``selected`` and
    ``eligible``; ``skipped``: the classes with none."""

    indices: np.ndarray  # (M,)
    classes: np.ndarray  # (M,)
    selected: dict[str, int] = field(default_factory=dict)
    eligible: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        return [name for name, n in self.selected.items() if n == 0]


def select_5x200(labels: np.ndarray, per_class: int = PER_CLASS_5X200, seed: int = 0) -> Selection5x200:
    """Up to ``per_class`` eligible studies of each class, drawn without replacement; class c
    draws with its own generator (``seed``, c), so one class's count never changes another's
    draw.  A class with fewer eligible studies takes them all; a class with none is skipped
    (and counted).  Fewer than two classes left is an error: every candidate would be
    relevant to every query."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    cls = eligible_5x200(labels)
    indices, classes = [], []
    selected, eligible = {}, {}
    for c, name in enumerate(CHEXPERT_5X200):
        pool = np.flatnonzero(cls == c)
        take = np.random.default_rng((seed, c)).choice(pool, size=min(per_class, len(pool)), replace=False)
        indices.append(np.sort(take))
        classes.append(np.full(len(take), c, dtype=np.int64))
        selected[name], eligible[name] = len(take), len(pool)
    if sum(n > 0 for n in selected.values()) < 2:
        raise ValueError("5x200 needs eligible studies of at least two of "
                         f"{', '.join(CHEXPERT_5X200)} (positive for that one observation, negative or not "
                         f"mentioned for the others); the test pool has {eligible}")
    return Selection5x200(np.concatenate(indices), np.concatenate(classes), selected, eligible)


# ============================================================================================
# ranking a pool: two stages, then metrics
# ============================================================================================

def stage1_order(similarity: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """``(Q, N)`` similarities -> ``(Q, N)`` candidate indices, most similar first; equal
    similarities in the order of ``tiebreak`` (``(N,)``, e.g. a random permutation)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    ties = np.broadcast_to(np.asarray(tiebreak), similarity.shape)
    return np.lexsort((ties, -similarity), axis=-1)


def rerank_top(order: np.ndarray, scores: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Stage 2: the first k candidates of each row of ``order`` (``(Q, N)``) re-ordered by
    ``scores`` (``(Q, k)``: the score of ``order[:, :k]``), highest first, ties in the order of
    ``tiebreak``; the candidates after the top k keep their place."""
    order, scores = np.asarray(order), np.asarray(scores, dtype=np.float64)
    k = scores.shape[1]
    if scores.shape[0] != order.shape[0] or k > order.shape[1]:
        raise ValueError(f"scores {scores.shape} do not cover the top of order {order.shape}")
    top = order[:, :k]
    ranked = np.take_along_axis(top, np.lexsort((np.asarray(tiebreak)[top], -scores), axis=-1), axis=1)
    return np.concatenate([ranked, order[:, k:]], axis=1)


def pool_ranking_metrics(order: np.ndarray, query_groups: np.ndarray, candidate_groups: np.ndarray,
                         hits: Sequence[int] = (1, 5, 10), precisions: Sequence[int] = (),
                         mrr: bool = False) -> dict[str, np.ndarray]:
    """Per-query metrics (each a ``(Q,)`` array) of rankings of a pool.

    ``order`` ``(Q, N)``: candidate indices, best first; a candidate is relevant to query q when
    ``candidate_groups[c] == query_groups[q]`` (the true partner: groups = pool indices; a
    class or a label set otherwise).  ``hit@k``, ``precision@k`` (relevant in the top k / k) and
    ``mrr`` (1 / rank of the first relevant) as in the module docstring.  Every query needs a
    relevant candidate in the pool."""
    order = np.asarray(order)
    relevant = np.asarray(candidate_groups)[order] == np.asarray(query_groups)[:, None]  # (Q, N)
    if not relevant.any(axis=1).all():
        raise ValueError("a query has no relevant candidate in the pool")
    out = {f"hit@{k}": relevant[:, :k].any(axis=1).astype(np.float64) for k in hits}
    out.update({f"precision@{k}": relevant[:, :k].sum(axis=1) / k for k in precisions})
    if mrr:
        out["mrr"] = 1.0 / (np.argmax(relevant, axis=1) + 1)
    return out


def group_ids(keys: Sequence[object]) -> np.ndarray:
    """``(N,)`` ints, equal where the (hashable) keys are equal, e.g. positive label sets."""
    ids: dict[object, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
