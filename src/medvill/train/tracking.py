"""Experiment trackers (``train.report_to``): TensorBoard, Weights & Biases and MLflow through
Accelerate's tracking API.

``metrics.jsonl`` stays the record of a run; every line the loop writes into it also goes to the
trackers, with the same step and the same numbers: a training line as ``train/<key>`` (``loss``,
each task loss and metric, ``lr``, ``lr/<group>`` per parameter group when the CNN backbone has
a group of its own, ``epoch``, ``elapsed_s``), a validation line as ``validate/<key>``.  The
resolved run configuration is recorded once when the trackers start, flattened to
``section.key`` scalars (TensorBoard: hyperparameters, plus the YAML as the text ``config``).

Files go under the run's output folder, ``OUTPUT/tracking/``: TensorBoard event files in
``tracking/medvill/``, W&B's run folder in ``tracking/wandb/`` (unless ``WANDB_DIR`` is set;
``WANDB_MODE=offline`` keeps it off the network) and MLflow's run into the SQLite store
``tracking/mlflow.db`` (unless ``MLFLOW_TRACKING_URI`` is set; MLflow 3 refuses its old file
store).  Only the main process logs.  A resumed run logs from the checkpoint's next step on;
TensorBoard hides what the stopped run logged after its checkpoint (``purge_step``), so the
curves match ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..checkpoint_files import TRACKING_DIR
from ..config import ConfigError
from ..config.checks import TRACKERS

#: TensorBoard's run folder under ``tracking/``, the W&B project and the MLflow experiment
PROJECT = "medvill"
#: the pip package each tracker of ``train.report_to`` needs (each is named after its package)
PIP_PACKAGES = {name: name for name in TRACKERS}

Scalar = bool | int | float | str


def is_available(name: str) -> bool:
    """Whether the package tracker ``name`` needs is installed (Accelerate's own check, which
    otherwise drops a missing tracker without a word)."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    checks = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    return bool(checks[name]())


def check_available(names: Iterable[str]) -> None:
    """A :class:`~medvill.config.ConfigError` naming the pip package to install when a
    requested tracker's package is missing (called before any training work)."""
    names = list(names)
    missing = [n for n in names if not is_available(n)]
    if missing:
        pkgs = " ".join(PIP_PACKAGES[n] for n in missing)
        extra = " (or pip install 'medvill[track]')" if missing == ["tensorboard"] else ""
        raise ConfigError(f"train.report_to={','.join(missing)} needs the {pkgs} package, which is not installed: "
                          f"pip install {pkgs}{extra}, or set train.report_to=none")
    if "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI") and not _has_module("sqlalchemy"):
        raise ConfigError("train.report_to=mlflow writes into a local SQLite store (OUTPUT/tracking/mlflow.db), "
                          "which needs SQLAlchemy: pip install mlflow (mlflow-skinny lacks it), or set "
                          "MLFLOW_TRACKING_URI to a tracking server")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def tracker_init_kwargs(names: Sequence[str], output_dir: Path, first_step: int) -> dict[str, dict[str, Any]]:
    """Accelerate's ``init_kwargs`` for the trackers: where each one writes, the run's name
    (the output folder's), and TensorBoard's ``purge_step``: the first step this process logs,
    so a resumed run's curves replace what the stopped run logged after its checkpoint."""
    tracking = output_dir / TRACKING_DIR
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names:
        kwargs["tensorboard"] = {"purge_step": first_step}
    if "wandb" in names:
        kwargs["wandb"] = {"name": output_dir.resolve().name}
        if not os.environ.get("WANDB_DIR"):
            kwargs["wandb"]["dir"] = str(tracking)
    if "mlflow" in names:  # artifacts (none are logged) beside the store
        kwargs["mlflow"] = {"run_name": output_dir.resolve().name, "logging_dir": str(tracking / "mlartifacts")}
    return kwargs


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """A nested configuration as ``{"section.key": scalar}`` (what trackers store as
    hyperparameters): ``None`` becomes ``"null"`` (as in ``run_config.yaml``), a list a
    comma-separated string."""
    out: dict[str, Scalar] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{name}."))
        elif value is None:
            out[name] = "null"
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def log_values(entry: Mapping[str, Any]) -> dict[str, float]:
    """The tracker values of one ``metrics.jsonl`` line: its numbers (not ``step``, not
    booleans or missing values) under ``train/`` or, for a validation line, ``validate/``."""
    prefix = "validate" if entry.get("split") == "validate" else "train"
    out: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                add(f"{name}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value

    for key, value in entry.items():
        if key not in ("step", "split"):
            add(f"{prefix}/{key}", value)
    return out


class RunTrackers:
    """The trackers of one :func:`~medvill.train.loop.fit` call, on an Accelerator created with
    ``log_with`` (:func:`~medvill.train.loop.make_accelerator`).  Every method is a no-op when
    no tracker was asked for; only the main process starts trackers and logs (Accelerate's
    ``init_trackers`` and ``log`` run there alone)."""

    def __init__(self, accelerator: Accelerator, names: Sequence[str]):
        self.acc, self.names = accelerator, tuple(names)
        self.started = False

    def start(self, output_dir: Path, config: Mapping[str, Any], first_step: int, config_text: str = "") -> None:
        """Start every tracker (main process only) and record ``config`` (nested, flattened here)."""
        if not self.names or not self.acc.log_with:
            return
        if self.acc.is_main_process:
            (output_dir / TRACKING_DIR).mkdir(parents=True, exist_ok=True)
            if "mlflow" in self.names and not os.environ.get("MLFLOW_TRACKING_URI"):
                import mlflow

                mlflow.set_tracking_uri(f"sqlite:///{(output_dir / TRACKING_DIR / 'mlflow.db').resolve()}")
        self.acc.init_trackers(PROJECT, config=flatten_config(config),
                               init_kwargs=tracker_init_kwargs(self.names, output_dir, first_step))
        self.started = True
        if config_text and "tensorboard" in self.names and self.acc.is_main_process:
            writer = self.acc.get_tracker("tensorboard", unwrap=True)
            writer.add_text("config", "```yaml\n" + config_text + "```", global_step=max(first_step - 1, 0))
            writer.flush()

    def log(self, entry: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` line to every tracker, at its step."""
        if self.started:
            values = log_values(entry)
            if values:
                self.acc.log(values, step=int(entry["step"]))

    def finish(self) -> None:
        """Close every tracker.  (Not ``Accelerator.end_training``, which would also destroy the
        process group that the run's caller may still need.)"""
        if not self.started:
            return
        self.started = False
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers.clear()
