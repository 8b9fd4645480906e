"""The MedViLL network: visual tokens, backbone training, attention paths, checkpoints, BERT weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medvill.config import ConfigError, MaskScheme, preset_config
from medvill.modeling import MedViLLForPretraining, MedViLLModel, PreTrainedModel
from medvill.modeling.visual import sample_visual_tokens


def tiny_model_cfg(vocab=60):
    cfg = preset_config("tiny").model
    return dataclasses.replace(cfg, vocab_size=vocab, pad_token_id=0, unk_token_id=1, cls_token_id=2,
                               sep_token_id=3, mask_token_id=4)


def batch(b=3, t=9, vocab=60, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[-1, t - 3 :] = False
    ids[~valid] = 0
    return ids, valid, torch.randn(b, 3, size, size, generator=g)


def test_k_of_K_sampling_keeps_true_grid_locations():
    feats = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    picked, index = sample_visual_tokens(feats, 5, torch.Generator().manual_seed(0))
    assert picked.shape == (2, 5, 3) and index.shape == (2, 5)
    for b in range(2):
        assert torch.equal(index[b], index[b].sort().values) and len(set(index[b].tolist())) == 5
        assert torch.equal(picked[b], feats[b, index[b]])
    assert not torch.equal(index[0], index[1])  # independent per example
    with pytest.raises(ValueError):
        sample_visual_tokens(feats, 17)


def test_visual_tokens_use_location_embeddings_of_their_grid_cell():
    model = MedViLLModel(tiny_model_cfg()).eval()
    ids, valid, images = batch(b=1)
    feats = model.encode_image(images)
    assert feats.shape == (1, model.config.num_visual_tokens, model.visual.out_channels)
    out = model(ids, valid, MaskScheme.BI, visual_features=feats, num_visual_sampled=6,
                generator=torch.Generator().manual_seed(1))
    assert out.visual_index.shape == (1, 6)
    emb = model.embeddings
    grid = out.visual_index
    expected = emb.finish(emb.visual(feats.gather(1, grid[..., None].expand(-1, -1, feats.shape[-1])), grid))
    got = emb(feats.gather(1, grid[..., None].expand(-1, -1, feats.shape[-1])), grid, ids, False)[:, 1:7]
    assert torch.allclose(expected, got)


def test_backbone_is_trainable_and_receives_gradients():
    model = MedViLLForPretraining(tiny_model_cfg())
    backbone = list(model.medvill.visual.parameters())
    assert backbone and all(p.requires_grad for p in backbone)
    ids, valid, images = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    out = model(ids, valid, MaskScheme.BAR, images=images, mlm_labels=labels, is_matched=torch.tensor([1, 0, 1]))
    out.loss.backward()
    for name, p in model.medvill.visual.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sdpa_equals_explicit_softmax_attention():
    model = MedViLLModel(tiny_model_cfg()).eval()
    ids, valid, images = batch()
    for scheme in (MaskScheme.BI, MaskScheme.S2S, MaskScheme.BAR, MaskScheme.NON_CROSSING):
        a = model(ids, valid, scheme, images=images).last_hidden_state
        out = model(ids, valid, scheme, images=images, output_attentions=True)
        assert torch.allclose(a, out.last_hidden_state, atol=1e-5)
        probs = out.attentions[0]  # (B, H, S, S)
        mask = out.attention_mask
        real_rows = mask.any(-1)
        assert torch.all(probs.masked_select(~mask[:, None] & real_rows[:, None, :, None]) == 0)


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = MedViLLForPretraining(tiny_model_cfg()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MedViLLForPretraining.from_pretrained(tmp_path / "ckpt").eval()
    generic = PreTrainedModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(generic) is MedViLLForPretraining
    ids, valid, images = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    with torch.no_grad():
        for scheme in (MaskScheme.BAR, MaskScheme.NON_CROSSING):
            a = model(ids, valid, scheme, images=images, mlm_labels=labels)
            b = loaded(ids, valid, scheme, images=images, mlm_labels=labels)
            assert torch.equal(a.base.last_hidden_state, b.base.last_hidden_state)
            assert torch.equal(a.irm_logits, b.irm_logits) and torch.equal(a.mlm_loss, b.mlm_loss)
    # the MLM decoder stays tied to the word embeddings after loading
    assert loaded.mlm_head.decoder.weight.data_ptr() == loaded.medvill.embeddings.word_embeddings.weight.data_ptr()


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MedViLLModel.from_pretrained(tmp_path)
    model = MedViLLForPretraining(tiny_model_cfg())
    model.save_pretrained(tmp_path / "c")
    with pytest.raises(ConfigError, match="MedViLLForPretraining"):
        MedViLLModel.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MedViLLForPretraining.from_pretrained(tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_wrong_image_size_is_a_clear_error():
    model = MedViLLModel(tiny_model_cfg())
    ids, valid, _ = batch()
    with pytest.raises(ValueError, match="model.image_size"):
        model(ids, valid, MaskScheme.BI, images=torch.randn(3, 3, 32, 32))


@pytest.mark.parametrize("backbone,channels", [("resnet50", 2048), ("densenet121", 1024)])
def test_torchvision_backbones_give_a_grid_of_tokens(backbone, channels):
    cfg = dataclasses.replace(tiny_model_cfg(), backbone=backbone, backbone_pretrained=False)
    model = MedViLLModel(cfg).eval()
    assert model.visual.out_channels == channels
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 4, channels)  # 64 px / stride 32 = 2 x 2 grid


def test_offline_imagenet_weights_fail_with_a_clear_message(monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    cfg = dataclasses.replace(tiny_model_cfg(), backbone="resnet50", backbone_pretrained=True)
    with pytest.raises(RuntimeError, match="backbone_pretrained=false"):
        MedViLLModel(cfg)


def test_hub_downloads_are_pinned_to_a_revision(tmp_path, monkeypatch):
    """init_text from the hub downloads a fixed commit: the pinned one for bert-base-uncased,
    the one written after ``@`` otherwise; an unpinned name takes the hub's main."""
    import huggingface_hub

    from medvill.modeling.bert_init import HUB_REVISIONS, resolve_bert_dir

    asked = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for name in ("bert-base-uncased", "emilyalsentzer/Bio_ClinicalBERT@d5892b3", "someone/some-bert"):
        assert resolve_bert_dir(name) == tmp_path
    assert asked == [("bert-base-uncased", HUB_REVISIONS["bert-base-uncased"]),
                     ("emilyalsentzer/Bio_ClinicalBERT", "d5892b3"), ("someone/some-bert", None)]
    assert len(HUB_REVISIONS["bert-base-uncased"]) == 40
