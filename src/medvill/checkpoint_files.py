"""The folder a run writes: every file name in one place, and one reader that validates them.

A saved model is a folder of ``config.json`` (architecture + model config) and
``model.safetensors`` (weights), with its tokenizer (``tokenizer.json``, ``vocab.txt``) and the
sidecar files the run adds:

========================  ===========================================================  ===================
file                      what it holds                                                written by
========================  ===========================================================  ===================
``run_config.yaml``       the whole run configuration (preset, data, training)         every run
``finetune.json``         ``{"task": ..., "init": ...}``: marks a fine-tuned model     ``finetune``
``selection.json``        the validation step that chose the saved model               the loop
``metrics.jsonl``         training and validation log, one JSON object a line          the loop
``preprocess.json``       how training read its images (prepared-image cache or not)   every run
``answers.json``          the VQA answer vocabulary                                    VQA
``thresholds.json``       thresholds chosen on the validation split                    classification
``metrics.json``          an evaluation's scores                                       ``evaluate``
``image_warnings.txt``    the images the image checks flagged, and why                 any run
``import_official.json``  where imported official weights came from, tensor by tensor  ``import-official``
``tracking/``             experiment-tracker logs (TensorBoard, W&B, MLflow)           ``train.report_to``
``checkpoints/``          training state for exact resume (``train/checkpoint.py``)    the loop
========================  ===========================================================  ===================

:class:`CheckpointInfo` reads ``config.json``, ``finetune.json`` and ``run_config.yaml`` once,
each checked with an error that names the file.  This module imports nothing of the model, the
data or the training code, so every layer can use it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .fileio import not_utf8

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
RUN_CONFIG = "run_config.yaml"
FINETUNE_INFO = "finetune.json"
SELECTION = "selection.json"
METRICS_LOG = "metrics.jsonl"
INPUT_INFO = "preprocess.json"
ANSWERS_FILE = "answers.json"
THRESHOLDS_FILE = "thresholds.json"
EVAL_METRICS = "metrics.json"
CHECKPOINTS_DIR = "checkpoints"
IMAGE_WARNINGS = "image_warnings.txt"
IMPORT_INFO = "import_official.json"
TRACKING_DIR = "tracking"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, *TOKENIZER_FILES)
#: every file (and the training-state folder) a run of this project writes into its output folder
RUN_FILES = (*MODEL_FILES, RUN_CONFIG, FINETUNE_INFO, SELECTION, METRICS_LOG, INPUT_INFO, ANSWERS_FILE,
             THRESHOLDS_FILE, EVAL_METRICS, IMAGE_WARNINGS, IMPORT_INFO, TRACKING_DIR, CHECKPOINTS_DIR)


def read_json_file(path: str | Path, expect: type = dict) -> Any:
    """A checkpoint's JSON file, of JSON type ``expect`` (dict or list); any problem (not
    UTF-8, not JSON, empty, another type) is a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, expect):
        names: dict[type, str] = {dict: "object", list: "list"}
        want = names.get(expect, expect.__name__)
        raise ConfigError(f"{path}: expected a JSON {want}, got {type(value).__name__}")
    return value


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder, checked (format, architecture, model) and with its
    weights file present."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a medvill checkpoint: {CONFIG_NAME} is missing")
    meta = read_json_file(path)
    if meta.get("format") != "medvill":
        raise ConfigError(f"{path}: not a medvill checkpoint (format={meta.get('format')!r})")
    for key, kind in (("architecture", str), ("model", dict)):
        if key not in meta:
            raise ConfigError(f"{path}: no {key!r} entry (a damaged or hand-edited checkpoint config)")
        if not isinstance(meta[key], kind):
            raise ConfigError(f"{path}: {key!r} must be a JSON {'string' if kind is str else 'object'}, "
                              f"got {type(meta[key]).__name__}")
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_NAME} is missing")
    return meta


def read_run_config(directory: str | Path) -> dict[str, Any] | None:
    """The run's ``run_config.yaml`` as a mapping (None when the folder has none)."""
    path = Path(directory) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        run = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not a medvill run config ({type(exc).__name__}: {exc})") from None
    if run is None:
        return {}
    if not isinstance(run, dict) or not isinstance(run.get("data") or {}, dict):
        raise ConfigError(f"{path}: not a medvill run config (expected a mapping with a 'data' section)")
    return run


def read_finetune_info(directory: str | Path) -> dict[str, Any] | None:
    """``finetune.json`` (task and init of a fine-tuned model); None when the folder has none."""
    path = Path(directory) / FINETUNE_INFO
    if not path.is_file():
        return None
    info = read_json_file(path)
    if not isinstance(info.get("task"), str):
        raise ConfigError(f"{path}: no 'task' string (a damaged or hand-edited {FINETUNE_INFO})")
    return info


def finetune_info_text(task: str, init: str) -> str:
    """The content of ``finetune.json``."""
    return json.dumps({"task": task, "init": init}) + "\n"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder says about itself, read and checked once.

    ``meta``: ``config.json``; ``finetune``: ``finetune.json`` (None: not a fine-tuned model,
    e.g. a pre-training checkpoint); ``run_config``: ``run_config.yaml`` (None: not recorded)."""

    directory: Path
    meta: dict[str, Any]
    finetune: dict[str, Any] | None
    run_config: dict[str, Any] | None

    @classmethod
    def read(cls, directory: str | Path) -> CheckpointInfo:
        directory = Path(directory)
        return cls(directory, read_checkpoint_config(directory), read_finetune_info(directory),
                   read_run_config(directory))

    @property
    def architecture(self) -> str:
        return str(self.meta["architecture"])

    @property
    def trunk(self) -> str:
        """``medvill``, or ``cnn_transformer`` for the CNN & Transformer baseline."""
        return str((self.meta.get("head") or {}).get("trunk", "medvill"))

    @property
    def task(self) -> str | None:
        """The fine-tuned task from ``finetune.json`` (None: not a fine-tuned model)."""
        return None if self.finetune is None else str(self.finetune["task"])

    @property
    def init(self) -> str | None:
        init = None if self.finetune is None else self.finetune.get("init")
        return None if init is None else str(init)

    @property
    def preset(self) -> str | None:
        return None if self.run_config is None else self.run_config.get("preset")

    def training_root(self) -> str | None:
        """:func:`training_root` of this folder's run config."""
        return training_root(self.directory, self.run_config)


def training_root(directory: str | Path, run_config: dict[str, Any] | None = None) -> str | None:
    """The data root the checkpoint in ``directory`` was trained on, as a path that exists from
    here: as recorded, or, for a relative path that does not exist from the current folder,
    resolved against the checkpoint's parent folders (``medvill demo`` records
    ``demo-output/cache/...`` relative to where it ran).  None when not recorded or not found
    (logged)."""
    directory = Path(directory)
    run = read_run_config(directory) if run_config is None else run_config
    root = ((run or {}).get("data") or {}).get("root")
    if not root:
        return None
    if Path(root).exists():
        return str(root)
    if not Path(root).is_absolute():
        for parent in directory.resolve().parents:
            if (parent / root).exists():
                return str(parent / root)
    log.info("%s: its training data (%s) is not here", directory, root)
    return None
