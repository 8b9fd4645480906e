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
    ("eval.retrieval_protocol=,", "--set 'eval.retrieval_protocol=,': the value is not valid YAML"),
    ("train.report_to=[tensorboard", "the value is not valid YAML"),
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


@pytest.mark.parametrize("override, message", [
    ("train.warmup_steps=-3", "train.warmup_steps must be >= 0, got -3"),
    ("train.lr=0", "train.lr must be > 0, got 0"),
    ("train.lr=.nan", "train.lr must be > 0, got nan"),
    ("train.lr=.inf", "train.lr must be > 0, got inf"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("pretrain.mlm_prob=1.5", "pretrain.mlm_prob must be > 0 and <= 1, got 1.5"),
    ("pretrain.s2s_prob=-0.1", "pretrain.s2s_prob must be >= 0 and <= 1"),
    ("pretrain.mlm_mask_frac=0.95", "mlm_mask_frac \\+ pretrain.mlm_random_frac must be <= 1"),
    ("model.hidden_dropout_prob=1", "model.hidden_dropout_prob must be >= 0 and < 1"),
    ("model.num_attention_heads=0", "model.num_attention_heads must be >= 1, got 0"),
    ("eval.n_candidates=1", "eval.n_candidates must be >= 2"),
    ("finetune.image_only_prob=2", "finetune.image_only_prob must be >= 0 and <= 1"),
])
def test_every_numeric_key_is_range_checked_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", None, [override])


def test_every_numeric_key_has_a_range():
    """A new numeric config key must get a range in RANGES (the check is by table)."""
    import dataclasses

    from medvill.config import RANGES, RunConfig

    cfg = RunConfig()
    numeric = {f"{section.name}.{f.name}" for section in dataclasses.fields(cfg)
               if dataclasses.is_dataclass(getattr(cfg, section.name))
               for f in dataclasses.fields(getattr(cfg, section.name))
               if isinstance(getattr(getattr(cfg, section.name), f.name), (int, float))
               and not isinstance(getattr(getattr(cfg, section.name), f.name), bool)
               and not f.name.endswith("_token_id")}
    assert numeric <= set(RANGES), sorted(numeric - set(RANGES))
    for preset in ("tiny", "small", "base"):
        load_config(preset)  # the presets themselves pass


def test_a_model_config_with_zero_heads_is_a_named_error():
    from medvill.config import ModelConfig

    with pytest.raises(ConfigError, match="model.num_attention_heads must be >= 1"):
        ModelConfig(num_attention_heads=0).validate()


def test_a_yaml_config_with_a_duplicate_key_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  batch_size: 4\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: duplicate key 'lr' on lines 2 and 4"):
        load_config("tiny", path)
    path.write_text("train:\n  lr: 1.0e-3\nmodel:\n  hidden_size: 32\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'train' on lines 1 and 5"):
        load_config("tiny", path)
    path.write_bytes(b"train:\n  lr: 1.0e-3 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: not UTF-8 text"):
        load_config("tiny", path)
