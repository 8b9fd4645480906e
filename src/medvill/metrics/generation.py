"""Report generation metrics: BLEU-4, clinical efficacy and perplexity.

* BLEU-4: corpus BLEU (sacrebleu) of generated against reference reports, both lower-cased
  and tokenised by the same tokenizer (sacrebleu's ``13a``), on a 0-1 scale.
* Clinical efficacy: the labeler is run on the generated and on the reference report; per
  report and observation, "positive" = label 1 (uncertain and blank count as negative
  unless ``uncertain_as_positive``).  Micro-averaged precision, recall and F1 over the 14
  observations; accuracy over all report x observation cells.
* Perplexity: exp of the mean token-level cross-entropy of the reference reports under the
  model (teacher-forced *scoring* of the reference; generation itself is free-running).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sacrebleu


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references must have the same length")
    hyps = [h.lower() for h in hypotheses]
    refs = [r.lower() for r in references]
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score / 100.0


def clinical_efficacy(
    generated_labels: np.ndarray, reference_labels: np.ndarray, uncertain_as_positive: bool = False
) -> dict[str, float]:
    """``(N, 14)`` label arrays with 1 / 0 / -1 / nan -> ce_accuracy, ce_precision, ce_recall, ce_f1."""
    g = np.asarray(generated_labels, dtype=np.float64)
    r = np.asarray(reference_labels, dtype=np.float64)
    if g.shape != r.shape:
        raise ValueError(f"label arrays differ in shape: {g.shape} vs {r.shape}")
    pos = (lambda a: (a == 1) | (a == -1)) if uncertain_as_positive else (lambda a: a == 1)
    gp, rp = pos(g), pos(r)
    tp = float((gp & rp).sum())
    fp = float((gp & ~rp).sum())
    fn = float((~gp & rp).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"ce_accuracy": float((gp == rp).mean()), "ce_precision": precision, "ce_recall": recall, "ce_f1": f1}


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of scored tokens)."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(nll_sum / n_tokens)
