"""An output folder holds one run: never written over by accident, refused before any work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medvill import finetune as finetune_mod
from medvill import pipeline as pipeline_mod
from medvill.cli import app
from medvill.recipes.output import OutputExistsError, claim_output, describe_run


def _fake_finetuned(folder):
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_config.yaml"):
        (folder / name).write_text("x")
    (folder / "finetune.json").write_text(json.dumps({"task": "vqa", "init": "scratch"}))
    (folder / "answers.json").write_text("[]")
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "tracking" / "medvill").mkdir(parents=True)  # an experiment tracker's logs
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.fixture
def no_training(monkeypatch):
    """Any training or evaluation reached fails the test: refusals must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(pipeline_mod, "run_pretraining", boom)
    monkeypatch.setattr(finetune_mod, "run_finetuning", boom)
    monkeypatch.setattr(finetune_mod, "run_evaluation", boom)


def test_describe_run_names_what_a_folder_holds(tmp_path):
    assert describe_run(tmp_path / "absent") is None and describe_run(tmp_path) is None
    assert describe_run(_fake_finetuned(tmp_path / "ft")) == "a fine-tuned model"
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "model.safetensors").write_text("x")
    assert describe_run(tmp_path / "pre") == "a model"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text("{}")
    assert describe_run(tmp_path / "ev") == "an evaluation"
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    assert describe_run(tmp_path / "stopped") == "a stopped run"


def test_claim_output_refuses_keeps_resumes_and_overwrites(tmp_path):
    run = _fake_finetuned(tmp_path / "run")
    with pytest.raises(OutputExistsError, match=r"already holds a fine-tuned model .*answers\.json.*--overwrite"):
        claim_output(run)
    assert (run / "model.safetensors").read_text() == "x"  # refused: untouched
    assert claim_output(run, resume=True) == run and (run / "checkpoints").is_dir()
    claim_output(run, overwrite=True)  # the old run's files go, the user's stay
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert claim_output(tmp_path / "new") == tmp_path / "new"  # a new folder is fine
    (tmp_path / "file").write_text("x")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}, {"evaluation": True}):
        with pytest.raises(OutputExistsError, match="is a file"):
            claim_output(tmp_path / "file", **kwargs)


def test_an_evaluation_may_sit_beside_its_model_but_not_over_another_evaluation(tmp_path):
    run = _fake_finetuned(tmp_path / "run")
    assert claim_output(run, evaluation=True) == run
    (run / "metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="already holds an evaluation"):
        claim_output(run, evaluation=True)
    claim_output(run, evaluation=True, overwrite=True)
    assert not (run / "metrics.json").exists() and (run / "model.safetensors").exists()


def _flat(output: str) -> str:
    """The CLI's message without the error box's borders and line breaks (it wraps long paths)."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize("command", [
    ["pretrain", "--preset", "tiny"],
    ["finetune", "vqa", "--preset", "tiny"],
    ["evaluate", "vqa", "--checkpoint", "CKPT", "--preset", "tiny"],
])
def test_cli_refuses_a_run_folder_or_a_file_before_any_work(tmp_path, no_training, command):
    command = [str(tmp_path / "ckpt") if c == "CKPT" else c for c in command]
    run = _fake_finetuned(tmp_path / "run")
    (run / "metrics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = CliRunner().invoke(app, [*command, "--output", str(run)])
    assert result.exit_code == 2, result.output
    assert "already holds" in _flat(result.output) and "--overwrite" in _flat(result.output)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (tmp_path / "out.txt").write_text("keep")
    result = CliRunner().invoke(app, [*command, "--output", str(tmp_path / "out.txt")])
    assert result.exit_code == 2 and "is a file" in _flat(result.output), result.output
    assert (tmp_path / "out.txt").read_text() == "keep"


def test_cli_overwrite_leaves_a_folder_that_describes_one_run(tmp_path, synthetic_root):
    run = _fake_finetuned(tmp_path / "run")
    result = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--root", str(synthetic_root), "--max-steps", "2",
                                      "--output", str(run), "--overwrite", "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    assert not (run / "finetune.json").exists() and not (run / "answers.json").exists()  # no stale sidecars
    assert describe_run(run) == "a model" and (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "config.json").read_text())  # the new model, not the fake


def test_files_the_project_writes_follow_the_umask(tmp_path, synthetic_root):
    """Checkpoints used to be created 0600 (tempfile's mode); now as open() would: 0644 under 022."""
    import os
    import stat

    from medvill.config import load_config
    from medvill.data.synthetic import generate_synthetic
    from medvill.recipes.pretrain import run_pretraining

    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        run_pretraining(load_config("tiny", None, [f"data.root={synthetic_root}", "train.max_steps=1",
                                                   "train.progress=false"]), out)
        data = tmp_path / "synth"
        generate_synthetic(data, n=4, image_size=32, seed=0)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "run_config.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
