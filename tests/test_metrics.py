"""Metric functions against hand-computed cases and scikit-learn / scipy / sacrebleu."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvill.metrics import (
    bleu4,
    bootstrap,
    build_trials,
    classification_metrics,
    clinical_efficacy,
    perplexity,
    ranking_metrics,
    retrieval_metrics,
    ttest,
    vqa_accuracy,
)


def test_classification_micro_auroc_and_f1():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.3], [0.1, 0.7]])
    m = classification_metrics(y, p, names=("a", "b"))
    assert m["auroc_micro"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    # by hand: predictions >= .5 -> tp = 3 (0.9, 0.6, 0.6), fp = 1 (0.7), fn = 1 (0.3): F1 = 6 / 8
    assert m["f1_micro"] == pytest.approx(0.75)
    assert m["auroc/a"] == pytest.approx(1.0)
    assert m["auroc/b"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        classification_metrics(y, p[:, :1], names=("a",))


def test_ranking_metrics_by_hand():
    positive = np.array([False, True, False, False, False, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    m = ranking_metrics(scores, positive, k=5)
    assert m == {"hit@5": 1.0, "recall@5": 0.5, "precision@5": 0.2, "mrr": 0.5}
    # ties: broken by position, deterministically
    tied = ranking_metrics(np.zeros(8), positive, k=5)
    assert tied["mrr"] == 0.5 and tied["recall@5"] == 0.5
    miss = ranking_metrics(-scores, positive, k=1)
    assert miss["hit@1"] == 0.0 and miss["mrr"] == pytest.approx(1 / 2)  # reversed: index 6 ranks 2nd
    with pytest.raises(ValueError, match="no positive"):
        ranking_metrics(scores, np.zeros(8, dtype=bool))


def test_trials_have_100_candidates_with_the_true_partner_and_label_set_positives():
    rng = np.random.default_rng(0)
    sets = [frozenset(np.flatnonzero(rng.random(3) < 0.4).tolist()) for _ in range(250)]
    trials = build_trials(sets, n_candidates=100, seed=1)
    assert len(trials) == 250
    for t in trials[:50]:
        assert len(t.candidates) == 100 and len(set(t.candidates.tolist())) == 100
        assert t.query in t.candidates
        assert t.positive[list(t.candidates).index(t.query)]
        assert all(t.positive[i] == (sets[c] == sets[t.query]) for i, c in enumerate(t.candidates))
    again = build_trials(sets, n_candidates=100, seed=1)
    assert all(np.array_equal(a.candidates, b.candidates) for a, b in zip(trials, again))
    with pytest.raises(ValueError, match="only 50"):
        build_trials(sets[:50])
    # a perfect scorer reaches MRR 1 and Hit@5 1
    perfect = [ranking_metrics(t.positive.astype(float), t.positive) for t in trials]
    assert retrieval_metrics(perfect)["mrr"] == 1.0


def test_vqa_accuracy_by_type():
    m = vqa_accuracy(["yes", "Left ", "no", "heart"], ["yes", "left", "yes", "lung"],
                     ["CLOSED", "OPEN", "CLOSED ", "OPEN"])
    assert m == {"accuracy": 0.5, "closed_accuracy": 0.5, "open_accuracy": 0.5}
    with pytest.raises(ValueError, match="answer type"):
        vqa_accuracy(["a"], ["a"], ["MAYBE"])


def test_bleu_is_case_insensitive_and_tokenised_alike():
    ref = ["No pleural effusion. The heart is normal in size."]
    assert bleu4(["no pleural effusion . the heart is normal in size ."], ref) == pytest.approx(1.0)
    assert bleu4(["NO PLEURAL EFFUSION. THE HEART IS NORMAL IN SIZE."], ref) == pytest.approx(1.0)
    assert bleu4(["the lungs are clear"], ref) < 0.1


def test_clinical_efficacy_by_hand():
    nan = np.nan
    gen = np.array([[1, 0, nan], [1, -1, 1]])
    ref = np.array([[1, 1, 0], [0, -1, 1]])
    m = clinical_efficacy(gen, ref)
    # positives (== 1): gen {(0,0), (1,0), (1,2)}, ref {(0,0), (0,1), (1,2)}: tp 2, fp 1, fn 1
    assert m["ce_precision"] == pytest.approx(2 / 3) and m["ce_recall"] == pytest.approx(2 / 3)
    assert m["ce_f1"] == pytest.approx(2 / 3) and m["ce_accuracy"] == pytest.approx(4 / 6)
    assert clinical_efficacy(gen, ref, uncertain_as_positive=True)["ce_recall"] == pytest.approx(3 / 4)


def test_perplexity():
    assert perplexity(2 * math.log(4.0), 2) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_bootstrap_and_ttest():
    values = np.arange(100, dtype=float)
    out = bootstrap(100, lambda idx: {"mean": values[idx].mean()}, n_resamples=30, seed=0)
    s = out["mean"]
    assert s.n == 30 and len(s.values) == 30
    assert abs(s.mean - 49.5) < 3 and 1 < s.std < 6
    assert bootstrap(100, lambda idx: {"mean": values[idx].mean()}, 30, 0)["mean"].values == s.values
    from scipy import stats

    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 9.0]
    assert ttest(a, b) == pytest.approx(stats.ttest_ind(a, b).pvalue)
    assert ttest([1.0, 1.1, 0.9] * 10, [5.0, 5.1, 4.9] * 10) < 0.05
