"""Pre-training end to end on the synthetic data: losses fall, the CNN trains, checkpoints load."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import MaskScheme, load_config
from medvill.modeling import MedViLLForPretraining, PreTrainedModel
from medvill.pipeline import run_pretraining
from medvill.tokenization import MedTokenizer

SCHEMES = [s.value for s in MaskScheme]


def tiny_run_cfg(root, mask, steps, **train):
    overrides = [f"data.root={root}", f"pretrain.mask={mask}", f"train.max_steps={steps}", "train.progress=false"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config("tiny", None, overrides)


def mean(history, key, part):
    vals = [h[key] for h in history]
    n = max(1, len(vals) // 4)
    chunk = vals[:n] if part == "first" else vals[-n:]
    return sum(chunk) / len(chunk)


@pytest.mark.parametrize("mask", SCHEMES)
def test_tiny_pretraining_lowers_mlm_and_irm_loss(synthetic_root, tmp_path, mask):
    cfg = tiny_run_cfg(synthetic_root, mask, 160, log_every=4, batch_size=16)
    run = run_pretraining(cfg, tmp_path / "ckpt")
    h = run.result.history
    assert run.result.steps == 160 and len(h) == 40
    first_mlm, last_mlm = mean(h, "mlm_loss", "first"), mean(h, "mlm_loss", "last")
    first_irm, last_irm = mean(h, "irm_loss", "first"), mean(h, "irm_loss", "last")
    assert last_mlm < 0.7 * first_mlm, (first_mlm, last_mlm)
    assert last_irm < first_irm - 0.05, (first_irm, last_irm)
    if mask == "bi_s2s":
        share = sum(x["s2s_batch"] for x in h) / len(h)
        assert 0.5 < share < 0.95


def test_backbone_weights_change_and_artifacts_are_written(synthetic_root, tmp_path):
    cfg = tiny_run_cfg(synthetic_root, "bar", 3, log_every=1)
    out = tmp_path / "ckpt"
    torch.manual_seed(cfg.train.seed)
    init_dir = tmp_path / "init"
    run_pretraining(tiny_run_cfg(synthetic_root, "bar", 0), init_dir)
    run_pretraining(cfg, out)
    before = PreTrainedModel.from_pretrained(init_dir)
    after = PreTrainedModel.from_pretrained(out)
    b, a = dict(before.medvill.visual.named_parameters()), dict(after.medvill.visual.named_parameters())
    assert all(not torch.equal(b[k], a[k]) for k in b), "a backbone parameter did not train"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "run_config.yaml", "metrics.jsonl"} <= names
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all("mlm_loss" in e and "irm_loss" in e for e in log)
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["pretrain"]["mask"] == "bar" and saved["model"]["vocab_size"] == after.config.vocab_size
    tok = MedTokenizer.from_pretrained(out)
    assert tok.vocab_size == after.config.vocab_size


@pytest.mark.parametrize("mask", SCHEMES)
def test_cli_pretrain_writes_a_loadable_checkpoint(synthetic_root, tmp_path, mask):
    out = tmp_path / mask
    result = CliRunner().invoke(app, [
        "pretrain", "--dataset", "synthetic", "--root", str(synthetic_root), "--preset", "tiny", "--mask", mask,
        "--max-steps", "2", "--output", str(out), "--set", "train.log_every=1",
    ])
    assert result.exit_code == 0, result.output
    model = MedViLLForPretraining.from_pretrained(out)
    assert model.config.backbone == "small_cnn"


def test_cli_rejects_a_bad_config_key(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--output", str(tmp_path / "x"),
                                      "--set", "train.learning_rate=1"])
    assert result.exit_code == 2
    assert "train.learning_rate" in result.output
