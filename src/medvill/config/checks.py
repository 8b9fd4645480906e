"""The checks every configuration section shares: the error type, the choices and the numeric ranges.

:class:`ConfigError` is what every configuration mistake raises; :class:`MaskScheme`,
:data:`BACKBONES` and :data:`ATTN_IMPLEMENTATIONS` are the allowed values of the keys that
name one of a few choices; :data:`RANGES` holds the range of every numeric key, which
:func:`check_ranges` applies to one section.
"""

from __future__ import annotations

import enum
import math
from typing import Any


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


class MaskScheme(str, enum.Enum):
    """The five self-attention mask schemes of MedViLL (paper section III-C)."""

    BI = "bi"
    S2S = "s2s"
    BAR = "bar"
    BI_S2S = "bi_s2s"
    NON_CROSSING = "non_crossing"


BACKBONES = ("resnet50", "resnet101", "densenet121", "small_cnn")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex")
#: experiment trackers ``train.report_to`` may name (several: a list or a comma-separated string)
TRACKERS = ("tensorboard", "wandb", "mlflow")


def name_list(value: str | list[str]) -> tuple[str, ...]:
    """The names of a key that takes one or several (``a,b`` or a YAML list), stripped and
    lower-cased, in the order given; an empty item (``a,``) stays, for the key's check to refuse."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(n).strip().lower() for n in items)


#: the range of every numeric key: (low, high, low inclusive, high inclusive); None = unbounded.
#: Checked by :meth:`RunConfig.validate`, so a wrong value stops a run before any work, by name.
_GE0, _GE1, _GT0 = (0, None, True, True), (1, None, True, True), (0, None, False, True)
_PROB, _DROPOUT = (0, 1, True, True), (0, 1, True, False)
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "model.vocab_size": _GE1, "model.hidden_size": _GE1, "model.num_hidden_layers": _GE1,
    "model.num_attention_heads": _GE1, "model.intermediate_size": _GE1, "model.hidden_dropout_prob": _DROPOUT,
    "model.attention_probs_dropout_prob": _DROPOUT, "model.max_position_embeddings": _GE1,
    "model.type_vocab_size": _GE1, "model.layer_norm_eps": _GT0, "model.mlm_layer_norm_eps": _GT0,
    "model.initializer_range": _GT0,
    "model.image_size": _GE1, "model.small_cnn_channels": (2, None, True, True),
    "model.max_text_len": (2, None, True, True),
    "tokenizer.vocab_size": _GE1, "tokenizer.min_frequency": _GE1,
    "data.synthetic_n": _GE1, "data.synthetic_seed": _GE0, "data.num_workers": _GE0,
    "pretrain.s2s_prob": _PROB, "pretrain.mlm_prob": (0, 1, False, True), "pretrain.mlm_mask_frac": _PROB,
    "pretrain.mlm_random_frac": _PROB, "pretrain.irm_weight": _GE0, "pretrain.visual_tokens_sampled": _GE1,
    "pretrain.itc_weight": _GE0, "pretrain.itc_dim": _GE1, "pretrain.itc_temperature": _GT0,
    "train.batch_size": _GE1, "train.max_steps": _GE0, "train.lr": _GT0, "train.backbone_lr": _GE0,
    "train.weight_decay": _GE0, "train.warmup_steps": _GE0, "train.grad_clip": _GE0, "train.grad_accum": _GE1,
    "train.seed": _GE0, "train.log_every": _GE1, "train.save_every": _GE0, "train.eval_every": _GE0,
    "train.early_stopping_patience": _GE0, "train.length_grouping": _GE0, "train.checkpoint_every": _GE0,
    "train.keep_checkpoints": _GE0,
    "finetune.backbone_lr": _GE0, "finetune.image_only_prob": _PROB, "finetune.retrieval_itc_weight": _GE0,
    "eval.n_candidates": (2, None, True, True), "eval.max_queries": _GE1, "eval.seed": _GE0, "eval.num_beams": _GE1,
    "eval.max_length": _GE1, "eval.length_penalty": (None, None, True, True), "eval.no_repeat_ngram_size": _GE0,
    "eval.rerank_k": _GE0, "eval.decode_batch_size": _GE1,
    "baseline.tienet_loss_weight": _PROB, "baseline.tienet_hops": _GE1,
}


def check_ranges(obj: Any, section: str) -> None:
    """Every numeric key of ``section`` in :data:`RANGES` finite and within its range (``None``
    passes where the key allows it), else a :class:`ConfigError` naming the key, the value and
    the range."""
    for key, (low, high, low_in, high_in) in RANGES.items():
        if not key.startswith(section + "."):
            continue
        value = getattr(obj, key.split(".", 1)[1])
        if value is None or isinstance(value, bool):
            continue
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value < low if low_in else value <= low))
        bad = bad or (high is not None and (value > high if high_in else value >= high))
        if bad:
            lo = "" if low is None else f"{'>=' if low_in else '>'} {low:g}"
            hi = "" if high is None else f"{'<=' if high_in else '<'} {high:g}"
            want = " and ".join(x for x in (lo, hi) if x) or "finite"
            raise ConfigError(f"{key} must be {want}, got {value!r}")

