"""Exact resume: training-state checkpoints, --resume auto, damaged checkpoints skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvill.config import ConfigError, load_config
from medvill.recipes.pretrain import run_pretraining
from medvill.train.checkpoint import MANIFEST, find_resume_checkpoint, list_checkpoints, verify_checkpoint


def tiny(root, *extra):
    return load_config("tiny", None, [
        f"data.root={root}", "train.progress=false", "train.deterministic=true", "train.log_every=3",
        "pretrain.mask=bi_s2s", "model.hidden_dropout_prob=0.1", *extra])


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def log_lines(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "elapsed_s"} for e in lines]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    run_pretraining(tiny(synthetic_root, "train.max_steps=12", "train.checkpoint_every=2", "train.keep_checkpoints=3"),
                    out)
    return out


def test_checkpoints_are_complete_and_pruned(uninterrupted):
    ckpts = list_checkpoints(uninterrupted / "checkpoints")
    assert [p.name for p in ckpts] == ["step-00000006", "step-00000008", "step-00000010"]  # keep 3; none at the end
    meta = verify_checkpoint(ckpts[-1])
    assert meta["loop"]["step"] == 10 and meta["fingerprint"] == {"batch_size": 8, "grad_accum": 1, "seed": 0}
    manifest = json.loads((ckpts[-1] / MANIFEST).read_text())
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng-0.pt", "trainer_state.json"} <= set(
        manifest["files"])
    assert not list((uninterrupted / "checkpoints").glob(".*"))  # no temporary folder left behind


def test_resume_auto_skips_damaged_checkpoints_and_matches(uninterrupted, synthetic_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "step-00000010"
    raw = bytearray((newest / "optimizer.pt").read_bytes())  # same size, one byte changed
    raw[len(raw) // 2] ^= 0xFF
    (newest / "optimizer.pt").write_bytes(bytes(raw))
    half = out / "checkpoints" / "step-00000011"  # a write that never got its manifest
    shutil.copytree(out / "checkpoints" / "step-00000008", half)
    (half / MANIFEST).unlink()
    (out / "checkpoints" / ".step-00000012.tmp").mkdir()
    # a stale log line from after the checkpoint must not survive the resume
    (out / "metrics.jsonl").write_text('{"step": 9, "loss": 123.0}\n')

    said: list[str] = []
    found = find_resume_checkpoint(out, "auto", say=said.append)
    assert found == out / "checkpoints" / "step-00000008"
    assert any("step-00000011" in m and "manifest.json is missing" in m for m in said)
    assert any("step-00000010" in m and "SHA-256" in m for m in said)
    assert any(".step-00000012.tmp" in m for m in said)
    with pytest.raises(ConfigError, match="SHA-256"):
        find_resume_checkpoint(out, str(newest))

    run = run_pretraining(tiny(synthetic_root, "train.max_steps=12", "train.checkpoint_every=2",
                               "train.keep_checkpoints=3", "train.resume=auto"), out)
    assert run.result.resumed_from == str(out / "checkpoints" / "step-00000008")
    assert same_weights(out, uninterrupted)
    assert log_lines(out) == log_lines(uninterrupted)
    assert [h["step"] for h in run.result.history] == [3, 6, 9, 12]


def test_a_checkpoint_whose_files_match_the_manifest_but_do_not_load_is_skipped(uninterrupted, tmp_path):
    """An optimizer file written broken (manifest updated to match) is damaged, not a traceback."""
    import hashlib

    out = tmp_path / "run"
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "step-00000010"
    for name, data in (("optimizer.pt", b"not a torch file"),
                       ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")):
        ckpt = out / "checkpoints" / ("step-00000010" if name == "optimizer.pt" else "step-00000008")
        (ckpt / name).write_bytes(data)
        manifest = json.loads((ckpt / MANIFEST).read_text())
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (ckpt / MANIFEST).write_text(json.dumps(manifest))
    said: list[str] = []
    assert find_resume_checkpoint(out, "auto", say=said.append) == out / "checkpoints" / "step-00000006"
    assert any("step-00000010" in m and "optimizer.pt cannot be loaded" in m for m in said)
    assert any("step-00000008" in m and "model.safetensors cannot be loaded" in m for m in said)
    with pytest.raises(ConfigError, match=r"step-00000010/optimizer\.pt cannot be loaded"):
        find_resume_checkpoint(out, str(newest))


def test_resume_needs_the_same_batch_settings(uninterrupted, synthetic_root, tmp_path):
    ckpt = list_checkpoints(uninterrupted / "checkpoints")[-1]
    with pytest.raises(ConfigError, match="train.batch_size: 8 in the checkpoint, 4 now"):
        run_pretraining(tiny(synthetic_root, "train.max_steps=12", "train.batch_size=4", f"train.resume={ckpt}"),
                        tmp_path / "other")


def test_resume_auto_without_checkpoints_starts_fresh(synthetic_root, tmp_path):
    run = run_pretraining(tiny(synthetic_root, "train.max_steps=2", "train.resume=auto"), tmp_path / "fresh")
    assert run.result.resumed_from is None and run.result.steps == 2


def _pretrain_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    sets = ["train.checkpoint_every=10", "train.deterministic=true", "train.progress=false", "train.log_every=5",
            "pretrain.mask=bi_s2s", "model.hidden_dropout_prob=0.1"]
    cmd = [sys.executable, "-m", "medvill", "pretrain", "--output", str(out), "--preset", "tiny", "--dataset",
           "synthetic", "--root", str(root), "--max-steps", "60"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + list(extra)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise_identical(synthetic_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_pretrain_cmd(synthetic_root, ref), env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_pretrain_cmd(synthetic_root, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step-00000010" / MANIFEST
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert first.exists() and not (out / "config.json").exists()  # killed after a checkpoint, before the end
    steps_before = [e["step"] for e in log_lines(out)]
    assert steps_before and steps_before[-1] < 60

    done = subprocess.run(_pretrain_cmd(synthetic_root, out, "--resume", "auto"), env=env, check=True,
                          capture_output=True, text=True, timeout=600)
    assert "resuming from" in done.stdout
    assert same_weights(out, ref)  # bitwise
    steps = [e["step"] for e in log_lines(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no step logged twice
    assert log_lines(out) == log_lines(ref)


def test_finetuning_resumes_with_its_model_selection(synthetic_root, tmp_path):
    from medvill.recipes.finetune import run_finetuning

    sets = ["train.max_steps=8", "train.eval_every=2", "train.checkpoint_every=4", "train.log_every=2"]
    full = run_finetuning("classification", tiny(synthetic_root, *sets), "scratch", tmp_path / "full")
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints", out / "checkpoints")
    run = run_finetuning("classification", tiny(synthetic_root, *sets, "train.resume=auto"), "scratch", out)
    assert run.result.resumed_from.endswith("step-00000004")
    same = json.dumps(run.result.selection) == json.dumps(full.result.selection)  # NaN-safe (undefined AUROCs)
    assert same  # the validations before and after the checkpoint, the best one
    assert [e["step"] for e in run.result.selection["evaluations"]] == [2, 4, 6, 8]
    assert same_weights(out, tmp_path / "full")  # the model selected on validation
    assert log_lines(out) == log_lines(tmp_path / "full")
