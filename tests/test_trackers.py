"""Experiment trackers (train.report_to): TensorBoard gets what metrics.jsonl gets, read back offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _optional import optional_import
from rich.console import Console

from medvill.config import ConfigError, dataclass_from_dict, load_config
from medvill.config.sections import RunConfig
from medvill.recipes.finetune import run_finetuning
from medvill.recipes.pretrain import run_pretraining
from medvill.train import tracking
from medvill.train.checkpoint import list_checkpoints

QUIET = Console(quiet=True)


def tiny(root, *extra):
    return load_config("tiny", None, [f"data.root={root}", "train.progress=false", "train.report_to=tensorboard",
                                      *extra])


@pytest.fixture
def event_accumulator():
    module = optional_import("tensorboard.backend.event_processing.event_accumulator",
                             reason="tensorboard (medvill[track]) not installed")
    return module.EventAccumulator


def read_scalars(accumulator_cls, folder: Path) -> dict[str, list[tuple[int, float]]]:
    ea = accumulator_cls(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def log_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(lines: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the trackers must hold: every number of metrics.jsonl under train/ or validate/, at its step."""
    out: dict[str, list[tuple[int, float]]] = {}
    for e in lines:
        prefix = "validate" if e.get("split") == "validate" else "train"
        for k, v in e.items():
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(f"{prefix}/{k}", []).append((e["step"], v))
    return out


def assert_same(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]) -> None:
    assert set(got) == set(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        for (_, g), (_, w) in zip(got[tag], points):
            assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-6, abs=1e-7), tag


def test_finetune_logs_losses_learning_rates_validation_and_config_to_tensorboard(
        synthetic_root, tmp_path, event_accumulator):
    out = tmp_path / "cls"
    cfg = tiny(synthetic_root, "train.max_steps=4", "train.log_every=2", "train.eval_every=2",
               "train.backbone_lr=5e-4")
    run_finetuning("classification", cfg, "scratch", out, console=QUIET)
    lines = log_lines(out)
    run_dir = out / tracking.TRACKING_DIR / tracking.PROJECT
    got = read_scalars(event_accumulator, run_dir)
    assert_same(got, expected_scalars(lines))
    assert [s for s, _ in got["train/loss"]] == [2, 4]
    assert [s for s, _ in got["validate/auroc_micro"]] == [2, 4]
    # lr is the transformer's (train.lr's schedule); the CNN backbone has its own (train.backbone_lr)
    assert got["train/lr"] == got["train/lr/transformer"]
    (_, lr), (_, backbone_lr) = got["train/lr/transformer"][0], got["train/lr/backbone"][0]
    assert lr > 0 and backbone_lr / lr == pytest.approx(5e-4 / cfg.train.lr, rel=1e-6)

    # the resolved run configuration: hyperparameters (a session of their own) and the YAML as text
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions = [p for p in run_dir.iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))]
    assert len(sessions) == 1
    ea = event_accumulator(str(sessions[0]))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.report_to"].string_value == "tensorboard"
    assert hparams["train.max_steps"].number_value == 4
    assert hparams["model.hidden_size"].number_value == cfg.model.hidden_size
    assert hparams["train.resume"].string_value == "null"
    ea = event_accumulator(str(run_dir), size_guidance={"tensors": 0})
    ea.Reload()
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to: tensorboard" in text and "backbone_lr: 0.0005" in text


def test_a_resumed_run_logs_from_its_checkpoint_step(synthetic_root, tmp_path, event_accumulator):
    out = tmp_path / "pre"
    common = ("train.max_steps=5", "train.log_every=1", "train.deterministic=true", "train.keep_checkpoints=0")
    run_pretraining(tiny(synthetic_root, *common, "train.checkpoint_every=2"), out, console=QUIET)
    first = log_lines(out)
    # continue from step 2 in the same folder: steps 3..5 are trained (and logged) again
    step2 = next(p for p in list_checkpoints(out / "checkpoints") if p.name.endswith("00002"))
    run = run_pretraining(tiny(synthetic_root, *common, f"train.resume={step2}"), out, console=QUIET)
    assert run.result.resumed_from == str(step2)
    lines = log_lines(out)
    assert [e["step"] for e in lines] == [1, 2, 3, 4, 5]
    assert [e["loss"] for e in lines] == pytest.approx([e["loss"] for e in first], rel=1e-6)
    run_dir = out / tracking.TRACKING_DIR / tracking.PROJECT
    assert_same(read_scalars(event_accumulator, run_dir), expected_scalars(lines))  # each step once
    # the resumed run's event file hides what the first run logged after the checkpoint
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2
    starts = [e.step for e in EventFileLoader(str(files[-1])).Load() if e.HasField("session_log")]
    assert starts == [3]


@pytest.mark.parametrize("value", ["tensorbord", "none,wandb", "tensorboard,", "[tensorboard, comet]"])
def test_a_wrong_report_to_is_a_config_error_naming_the_choices(value):
    with pytest.raises(ConfigError, match=r"train\.report_to.*tensorboard, wandb, mlflow"):
        load_config("tiny", None, [f"train.report_to={value}"])


def test_report_to_takes_one_name_a_list_or_a_comma_separated_string():
    assert load_config("tiny").train.trackers == ()
    assert load_config("tiny", None, ["train.report_to=none"]).train.trackers == ()
    assert load_config("tiny", None, ["train.report_to=TensorBoard"]).train.trackers == ("tensorboard",)
    both = load_config("tiny", None, ["train.report_to=[wandb, tensorboard]"])
    assert both.train.trackers == ("wandb", "tensorboard")
    assert load_config("tiny", None, ["train.report_to=wandb, mlflow,wandb"]).train.trackers == ("wandb", "mlflow")
    # a list survives run_config.yaml (what a checkpoint keeps)
    again = dataclass_from_dict(RunConfig, both.to_dict())
    assert again.train.report_to == ["wandb", "tensorboard"]
    with pytest.raises(ConfigError, match=r"train\.report_to.*expected a string"):
        load_config("tiny", None, ["train.report_to=[[tensorboard]]"])


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_tracker_package_stops_the_run_before_any_work(name, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "is_available", lambda n: n != name)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"train\.report_to={name} needs the {name} package.*pip install {name}"):
        run_pretraining(tiny(synthetic_root, f"train.report_to=tensorboard,{name}"), out, console=QUIET)
    assert not out.exists()  # nothing loaded, nothing written


def test_mlflow_without_a_tracking_server_needs_sqlalchemy(monkeypatch):
    monkeypatch.setattr(tracking, "is_available", lambda n: True)
    monkeypatch.setattr(tracking, "_has_module", lambda n: n != "sqlalchemy")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"mlflow\.db.*SQLAlchemy: pip install mlflow.*MLFLOW_TRACKING_URI"):
        tracking.check_available(["tensorboard", "mlflow"])
    tracking.check_available(["tensorboard", "wandb"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    tracking.check_available(["mlflow"])  # a server keeps its own store


def test_tracker_values_and_flattened_config():
    assert tracking.log_values({"step": 3, "epoch": 0, "lr": 1e-3, "lr/backbone": 2e-3, "loss": 1.5, "ok": True,
                                "gone": None}) == {"train/epoch": 0, "train/lr": 1e-3, "train/lr/backbone": 2e-3,
                                                   "train/loss": 1.5}
    assert tracking.log_values({"step": 4, "split": "validate", "auroc": 0.5, "per": {"a": 1.0}}) == {
        "validate/auroc": 0.5, "validate/per/a": 1.0}
    flat = tracking.flatten_config(load_config("tiny", None, ["train.report_to=[tensorboard, wandb]"]).to_dict())
    assert flat["train.report_to"] == "tensorboard,wandb" and flat["train.backbone_lr"] == "null"
    assert flat["pretrain.mask"] == "bar" and flat["model.hidden_size"] == 32 and flat["train.cpu"] is False
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
