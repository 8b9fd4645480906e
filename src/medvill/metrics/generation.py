"""Report generation metrics: BLEU-4, clinical efficacy and perplexity.

* BLEU-4: corpus BLEU (sacrebleu) of generated against reference reports, both lower-cased
  and tokenised by the same tokenizer (sacrebleu's ``13a``), on a 0-1 scale.
* Clinical efficacy: the labeler is run on the generated and on the reference report; per
  report and observation, "positive" = label 1 (uncertain and blank count as negative
  unless ``uncertain_as_positive``).  Reported as peers publish them, each under its own
  name: ``ce_precision`` / ``ce_recall`` / ``ce_f1`` micro-averaged over the 14 observations
  (the paper's CE; ``ce_f1_micro`` is the same F1), ``ce_f1_macro`` (mean of the 14
  per-observation F1; an observation positive in neither side's reports scores 0),
  ``ce_f1_example`` (F1 per report, averaged; a report with no positive on either side
  scores 1), ``ce_f1_micro_5`` (micro F1 over the 5 common observations: atelectasis,
  cardiomegaly, consolidation, edema, pleural effusion), and ``ce_accuracy`` over all
  report x observation cells.
* Perplexity: exp of the mean token-level cross-entropy of the reference reports under the
  model (teacher-forced *scoring* of the reference; generation itself is free-running).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sacrebleu
from sklearn.metrics import f1_score, precision_recall_fscore_support

from ..labels import CHEXPERT_OBSERVATIONS

#: the five observations most reports mention, over which peers also give a micro F1
COMMON_FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references must have the same length")
    hyps = [h.lower() for h in hypotheses]
    refs = [r.lower() for r in references]
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score / 100.0


def clinical_efficacy(
    generated_labels: np.ndarray, reference_labels: np.ndarray, uncertain_as_positive: bool = False
) -> dict[str, float]:
    """``(N, 14)`` label arrays with 1 / 0 / -1 / nan -> ce_accuracy, ce_precision, ce_recall,
    ce_f1 (= ce_f1_micro), ce_f1_macro, ce_f1_example and, with the 14 CheXpert columns,
    ce_f1_micro_5."""
    g = np.asarray(generated_labels, dtype=np.float64)
    r = np.asarray(reference_labels, dtype=np.float64)
    if g.shape != r.shape:
        raise ValueError(f"label arrays differ in shape: {g.shape} vs {r.shape}")
    pos = (lambda a: (a == 1) | (a == -1)) if uncertain_as_positive else (lambda a: a == 1)
    gp, rp = pos(g).astype(int), pos(r).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(rp.ravel(), gp.ravel(), average="binary",
                                                               zero_division=0)
    out = {"ce_accuracy": float((gp == rp).mean()), "ce_precision": float(precision), "ce_recall": float(recall),
           "ce_f1": float(f1), "ce_f1_micro": float(f1),
           "ce_f1_macro": float(f1_score(rp, gp, average="macro", zero_division=0)),
           # a report with no positive on either side agrees fully: 1
           "ce_f1_example": float(f1_score(rp, gp, average="samples", zero_division=1))}
    if g.shape[1] == len(CHEXPERT_OBSERVATIONS):
        five = [CHEXPERT_OBSERVATIONS.index(name) for name in COMMON_FIVE]
        out["ce_f1_micro_5"] = float(f1_score(rp[:, five].ravel(), gp[:, five].ravel(), zero_division=0))
    return out


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of scored tokens)."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(nll_sum / n_tokens)
