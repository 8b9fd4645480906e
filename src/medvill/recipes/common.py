"""What pre-training and fine-tuning from scratch share: the tokenizer and the model
configuration of a new model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ModelConfig, RunConfig
from ..modeling.bert_init import bert_model_config
from ..tokenization import MedTokenizer


def build_tokenizer(cfg: RunConfig, texts: list[str], bert_dir: Path | None = None) -> MedTokenizer:
    """The init checkpoint's vocabulary, a given vocabulary, or one trained on ``texts``."""
    if bert_dir is not None:
        return MedTokenizer.from_vocab(bert_dir / "vocab.txt", lowercase=cfg.tokenizer.lowercase)
    if cfg.tokenizer.vocab:
        path = Path(cfg.tokenizer.vocab)
        if path.is_dir():
            return MedTokenizer.from_pretrained(path)
        return MedTokenizer.from_vocab(path, cfg.tokenizer.lowercase)
    return MedTokenizer.train(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.lowercase)


def model_config_for(cfg: RunConfig, tokenizer: MedTokenizer, bert_dir: Path | None = None) -> ModelConfig:
    """The run's model config with the tokenizer's ids (and a BERT init's dimensions)."""
    base = bert_model_config(bert_dir, cfg.model) if bert_dir is not None else cfg.model
    return dataclasses.replace(
        base, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id, unk_token_id=tokenizer.unk_id,
        cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id, mask_token_id=tokenizer.mask_id,
    )
