"""Image-report retrieval in trials of 100 candidates (paper section IV).

A trial takes one query (a report for report-to-image, an image for image-to-report) and
100 candidates from the other modality: the query's true partner plus 99 others drawn
without replacement from the test pool.  A candidate is *positive* when its report's set of
positive CheXpert labels equals the query's (so the true partner always is).  Candidates
are ranked by descending score; ties are broken by the candidate's (random) position in the
trial, which is fixed by the seed, so ranks are deterministic.

* Hit@k = 1 if at least one positive is in the top k;
* Recall@k = positives in the top k / positives among the 100;
* Precision@k = positives in the top k / k;
* MRR = 1 / rank of the first positive (rank 1 = top).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
