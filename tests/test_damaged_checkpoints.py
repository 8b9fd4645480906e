"""A damaged checkpoint is a named error (the file in the message), never a traceback: in
from_pretrained, the tokenizer, Pipeline and every command that reads a checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import ConfigError
from medvill.inference import Pipeline
from medvill.modeling import PreTrainedModel
from medvill.tokenization import MedTokenizer


def _config(d):
    return json.loads((d / "config.json").read_text())


def _with_model(d, **changes):
    meta = _config(d)
    meta["model"].update(changes)
    (d / "config.json").write_text(json.dumps(meta))


DAMAGE = {
    "truncated weights": ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000])),
    "empty weights": ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes(b"")),
    "config without model": ("config.json", lambda d: (d / "config.json").write_text(
        json.dumps({k: v for k, v in _config(d).items() if k != "model"}))),
    "config with a wrong type": ("config.json", lambda d: (d / "config.json").write_text(
        json.dumps({**_config(d), "model": [1, 2]}))),
    "config that is a list": ("config.json", lambda d: (d / "config.json").write_text("[1]")),
    "zero attention heads": ("config.json", lambda d: _with_model(d, num_attention_heads=0)),
    "config not UTF-8": ("config.json", lambda d: (d / "config.json").write_bytes(b"\xff\xfe{")),
    "corrupt tokenizer.json": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text("{garbage")),
}


def _damaged_copy(src, dest, damage):
    file, fn = DAMAGE[damage]
    shutil.copytree(src, dest)
    fn(dest)
    return dest, file


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_loading_a_damaged_checkpoint_names_the_file(tiny_demo_dir, tmp_path, synthetic_root, damage):
    d, file = _damaged_copy(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR", tmp_path / "ckpt", damage)
    image = next((synthetic_root / "images").glob("*.png"))
    with pytest.raises(ValueError, match=rf"{d}/{file}"):  # ConfigError / TokenizerFileError
        PreTrainedModel.from_pretrained(d)
        MedTokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match=rf"{d}/{file}"):
        Pipeline.from_pretrained(d, device="cpu").answer(image, ["is it normal?"])


@pytest.mark.parametrize("damage", ["truncated weights", "zero attention heads", "corrupt tokenizer.json"])
def test_commands_report_a_damaged_checkpoint_by_name(tiny_demo_dir, synthetic_root, tmp_path, damage):
    vqa, file = _damaged_copy(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR", tmp_path / "vqa", damage)
    gen, _ = _damaged_copy(tiny_demo_dir / "finetune" / "generation-MedViLL-BAR", tmp_path / "gen", damage)
    image = next((synthetic_root / "images").glob("*.png"))
    commands = [
        ["generate", str(image), "--checkpoint", str(gen)],
        ["evaluate", "vqa", "--checkpoint", str(vqa), "--root", str(synthetic_root), "--preset", "tiny",
         "--output", str(tmp_path / "ev")],
        ["finetune", "vqa", "--init", str(vqa), "--root", str(synthetic_root), "--preset", "tiny", "--max-steps", "1",
         "--output", str(tmp_path / "ft")],
        ["serve", "--checkpoint", str(vqa), "--port", "1"],  # fails while loading, before any port is opened
    ]
    for command in commands:
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command[0], result.output, result.exception)
        assert file in result.output.replace("\n", ""), (command[0], result.output)


@pytest.mark.parametrize("file, data, message", [
    ("answers.json", b"", "not valid JSON"),
    ("answers.json", b"[1, 2]", "every answer must be a string"),
    ("answers.json", b"{\xff", "not UTF-8"),
    ("preprocess.json", b"[1]", "expected a JSON object"),
    ("finetune.json", b"\xff", "not UTF-8"),
])
def test_damaged_sidecar_files_are_named(tiny_demo_dir, tmp_path, synthetic_root, file, data, message):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR", d)
    (d / file).write_bytes(data)
    image = next((synthetic_root / "images").glob("*.png"))
    with pytest.raises(ConfigError, match=rf"{d}/{file}: .*{message}"):
        Pipeline.from_pretrained(d, device="cpu").answer(image, ["is it normal?"])
