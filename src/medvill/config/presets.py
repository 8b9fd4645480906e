"""The presets a run starts from: ``tiny`` (tests), ``small`` (the demo) and ``base`` (the paper)."""

from __future__ import annotations

from typing import Any

from .checks import ConfigError
from .merge import merge_into
from .sections import RunConfig

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
    # * retrieval keeps the contrastive projections and their loss (finetune.retrieval_itc_weight):
    #   validation R2I MRR / Hit@5 0.635 / 0.80 -> 0.749 / 0.94, I2R 0.616 / 0.86 -> 0.774 / 0.92.
    # * the CNN runs channels_last (NHWC; now every preset's default) and AdamW is the fused kernel:
    #   the demo's VQA fine-tuning step 161 -> 133 ms, classification 153 -> 135 ms (best of 6 x 3
    #   steps, one thread, a busy machine; BENCHMARKS.md "The small step"); the demo command
    #   667 s -> 590 s.
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
        "finetune": {"image_only_prob": 0.5, "backbone_lr": 5e-4, "retrieval_itc_weight": 1.0},
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
