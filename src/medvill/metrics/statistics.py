"""The paper's protocol: 30 bootstrap resamples of the test set, mean (std), and
independent two-sample t-tests between models (scipy), significance level 0.05."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass
class Summary:
    mean: float
    std: float
    n: int  # number of bootstrap resamples
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}


def bootstrap(
    n_examples: int, metric_fn: Callable[[np.ndarray], dict[str, float]], n_resamples: int = 30, seed: int = 0
) -> dict[str, Summary]:
    """Resample the test set (indices with replacement, same size) ``n_resamples`` times and
    summarise each metric returned by ``metric_fn(indices)`` by its mean and sample std."""
    if n_examples < 1:
        raise ValueError("bootstrap needs at least one example")
    rng = np.random.default_rng(seed)
    runs: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = rng.integers(0, n_examples, size=n_examples)
        for key, value in metric_fn(idx).items():
            runs.setdefault(key, []).append(float(value))
    return {
        key: Summary(float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0, len(v), v)
        for key, v in runs.items()
    }


def ttest(a: list[float], b: list[float]) -> float:
    """p-value of the independent two-sample t-test (equal variances, as scipy's default)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a t-test needs at least two values per group")
    with warnings.catch_warnings():  # identical samples: scipy warns about precision and returns nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)
