"""The checkpoint folder's files: one reader (CheckpointInfo) that checks each file once."""

from __future__ import annotations

import shutil

import pytest
import yaml

from medvill.checkpoint_files import (
    FINETUNE_INFO,
    RUN_CONFIG,
    RUN_FILES,
    CheckpointInfo,
    read_run_config,
    training_root,
)
from medvill.config import ConfigError


def test_checkpoint_info_reads_task_init_trunk_and_preset(tiny_demo_dir):
    ft = CheckpointInfo.read(tiny_demo_dir / "finetune" / "classification-MedViLL-BAR")
    assert (ft.task, ft.architecture, ft.trunk, ft.preset) == ("classification", "MedViLLForClassification",
                                                               "medvill", "tiny")
    assert ft.init == str(tiny_demo_dir / "pretrain-bar")
    baseline = CheckpointInfo.read(tiny_demo_dir / "finetune" / "classification-CNN-Transformer")
    assert baseline.trunk == "cnn_transformer" and baseline.init == "cnn-transformer"
    pre = CheckpointInfo.read(tiny_demo_dir / "pretrain-bar")
    assert pre.task is None and pre.init is None and pre.architecture == "MedViLLForPretraining"
    assert {FINETUNE_INFO, RUN_CONFIG} <= set(RUN_FILES)


def test_damaged_sidecar_files_are_named(tiny_demo_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR", ckpt)
    (ckpt / FINETUNE_INFO).write_text('{"init": "scratch"}')
    with pytest.raises(ConfigError, match=r"finetune\.json: no 'task' string"):
        CheckpointInfo.read(ckpt)
    (ckpt / FINETUNE_INFO).write_text("{not json")
    with pytest.raises(ConfigError, match=r"finetune\.json: not valid JSON"):
        CheckpointInfo.read(ckpt)
    (ckpt / FINETUNE_INFO).write_text('{"task": "vqa", "init": "scratch"}')
    (ckpt / RUN_CONFIG).write_text("- a list\n- not a run config\n")
    with pytest.raises(ConfigError, match=r"run_config\.yaml: not a medvill run config"):
        CheckpointInfo.read(ckpt)
    (ckpt / RUN_CONFIG).write_bytes(b"preset: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run_config\.yaml.*not UTF-8"):
        read_run_config(ckpt)
    (ckpt / RUN_CONFIG).unlink()
    assert CheckpointInfo.read(ckpt).run_config is None and training_root(ckpt) is None


def test_training_root_is_found_from_the_checkpoints_parent_folders(tiny_demo_dir, tmp_path, monkeypatch):
    """``medvill demo`` records its data root relative to where it ran: a checkpoint read from
    elsewhere finds it again from its own parent folders; a root that is nowhere gives None."""
    out = tmp_path / "run"
    ckpt = out / "finetune" / "classification"
    shutil.copytree(tiny_demo_dir / "finetune" / "classification-MedViLL-BAR", ckpt)
    (out / "data" / "synth").mkdir(parents=True)
    run = yaml.safe_load((ckpt / RUN_CONFIG).read_text())
    run["data"]["root"] = "data/synth"
    (ckpt / RUN_CONFIG).write_text(yaml.safe_dump(run))
    monkeypatch.chdir(tmp_path)  # "data/synth" does not exist from here
    assert CheckpointInfo.read(ckpt).training_root() == str(out / "data" / "synth")
    monkeypatch.chdir(out)  # ... and does from here: as recorded
    assert training_root(ckpt) == "data/synth"
    run["data"]["root"] = "nowhere/at/all"
    (ckpt / RUN_CONFIG).write_text(yaml.safe_dump(run))
    assert training_root(ckpt) is None
