from __future__ import annotations

import pytest

from medvill.config import ConfigError, MaskScheme, load_config, preset_config


def test_presets():
    base = preset_config("base")
    assert (base.model.backbone, base.model.image_size, base.model.hidden_size, base.model.num_hidden_layers) == (
        "resnet50", 512, 768, 12)
    assert base.model.num_visual_tokens == 256 and base.pretrain.visual_tokens_sampled == 180
    assert base.model.max_text_len == 253 and base.train.batch_size == 128 and base.train.lr == 1e-5
    assert base.init_text == "bert-base-uncased"
    for name in ("tiny", "small"):
        preset_config(name).validate()
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("huge")


def test_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\ntrain:\n  lr: 1e-4\n  max_steps: 7\npretrain:\n  mask: s2s\n")
    cfg = load_config("tiny", path, ["train.batch_size=3", "model.hidden_size=64", "init_text=null"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7 and cfg.train.batch_size == 3
    assert cfg.pretrain.mask is MaskScheme.S2S and cfg.model.hidden_size == 64 and cfg.init_text is None
    assert "mask: s2s" in cfg.to_yaml()


@pytest.mark.parametrize("override,match", [
    ("train.lrate=1", "unknown config key 'train.lrate'"),
    ("trian.lr=1", "unknown config key 'trian'"),
    ("train.batch_size=big", "train.batch_size: expected an integer"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("train.progress=maybe", "train.progress: expected true or false"),
    ("pretrain.mask=diagonal", "pretrain.mask: 'diagonal' is not one of"),
    ("model.backbone=vgg", "model.backbone"),
    ("model.hidden_size=31", "divisible"),
    ("pretrain.visual_tokens_sampled=999", "visual_tokens_sampled"),
    ("train", "expected KEY=VALUE"),
])
def test_bad_keys_and_types_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.warmup'"):
        load_config("tiny", path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", path)
    with pytest.raises(ConfigError, match="not found"):
        load_config("tiny", tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config("base", path)
        assert cfg.preset in ("small", "base")
