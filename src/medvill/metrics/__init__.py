"""Metrics of the paper's four tasks and its statistical protocol (bootstrap, t-test)."""

from .classification import classification_metrics
from .generation import bleu4, clinical_efficacy, perplexity
from .retrieval import Trial, build_trials, ranking_metrics, retrieval_metrics
from .statistics import Summary, bootstrap, ttest
from .vqa import vqa_accuracy

__all__ = [
    "Summary", "Trial", "bleu4", "bootstrap", "build_trials", "classification_metrics", "clinical_efficacy",
    "perplexity", "ranking_metrics", "retrieval_metrics", "ttest", "vqa_accuracy",
]
