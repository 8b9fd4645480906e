"""One registry of downstream tasks: each task file registers its whole contract here.

A :class:`TaskSpec` says everything fine-tuning, evaluation and inference need to know about a
task: its examples (:attr:`TaskSpec.examples`), its model (:class:`ModelVariant`: the model
class, the task object, the head configuration, the training data and validation), its
evaluation on a split (:attr:`TaskSpec.evaluate`), and the baselines that have a model for it
(``baselines``, keyed by the ``--init`` name, as timm keys model variants).  The task object
owns the step (``training_step``), the validation metric (``select_metric``) and its direction
(``select_mode``, ``max`` unless it says ``min``).

``medvill.recipes`` (fine-tuning, evaluation), ``medvill.inference`` and ``medvill.serve`` read
this registry.  The four tasks of the paper live in ``classification.py``, ``retrieval.py``, ``vqa.py`` and
``generation.py`` and register themselves when first asked for; adding a task is adding one
file that calls :func:`register_task` (tests/test_task_registry.py adds a toy task that way).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from ..config import ConfigError, ModelConfig, RunConfig
from ..metrics import bootstrap
from ..modeling.pretrained import PreTrainedModel
from ..tokenization import MedTokenizer

#: the paper's tasks, in the order of its tables; their modules register them on first use
BUILTIN_TASKS = ("classification", "retrieval", "vqa", "generation")


@dataclass(frozen=True)
class FitContext:
    """What fine-tuning hands a task to build its data: the run configuration (its ``model``
    is the model's), the tokenizer and the examples of the training and validation splits."""

    cfg: RunConfig
    tokenizer: MedTokenizer
    train: list
    validation: list

    @property
    def model_config(self) -> ModelConfig:
        return self.cfg.model


@dataclass
class FitPlan:
    """A task's training data and validation: ``evaluate(model)`` returns the validation
    metrics (one of them the task's ``select_metric``); ``files()`` the extra files a saved
    model carries, read at every save (e.g. thresholds chosen by the last validation)."""

    train_loader: DataLoader
    evaluate: Callable[[nn.Module], dict[str, float]]
    files: Callable[[], dict[str, str]] = dict


@dataclass(frozen=True)
class EvalContext:
    """What evaluation hands a task: the loaded model and task object, the tokenizer, the
    examples of the split, the run configuration (its ``model`` is the checkpoint's), the
    checkpoint folder and the bootstrap settings."""

    task: Any
    model: nn.Module
    tokenizer: MedTokenizer
    examples: list
    cfg: RunConfig
    checkpoint: Path
    n_bootstrap: int
    seed: int


def _no_head(task: Any, cfg: RunConfig, train: list) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ModelVariant:
    """One model of a task (MedViLL's, or a baseline's).

    ``make_task(cfg, checkpoint)``: the task object, for fine-tuning (``cfg`` given) or for
    evaluating ``checkpoint`` (``cfg`` None); ``head(task, cfg, train_examples)``: the keyword
    arguments of a new model's head (may fit the task to the training examples, e.g. VQA's
    answers); ``fit(task, context)``: the training data and validation."""

    model_class: type[PreTrainedModel]
    make_task: Callable[[RunConfig | None, Path | None], Any]
    fit: Callable[[Any, FitContext], FitPlan]
    head: Callable[[Any, RunConfig, list], dict[str, Any]] = _no_head


def on_cnn_transformer(variant: ModelVariant) -> ModelVariant:
    """The same task model on the CNN & Transformer baseline's trunk (``--init cnn-transformer``)."""

    def head(task: Any, cfg: RunConfig, train: list) -> dict[str, Any]:
        return {**variant.head(task, cfg, train), "trunk": "cnn_transformer"}

    return dataclasses.replace(variant, head=head)


def tienet_head(task: Any, cfg: RunConfig, train: list) -> dict[str, Any]:
    """TieNet's head settings (``baseline.tienet_*``), for every task TieNet has."""
    return {"hops": cfg.baseline.tienet_hops, "loss_weight": cfg.baseline.tienet_loss_weight}


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task's whole contract (see the module docstring)."""

    name: str
    medvill: ModelVariant
    examples: Callable[[RunConfig, str], list]
    evaluate: Callable[[EvalContext], dict[str, dict[str, Any]]]
    baselines: Mapping[str, ModelVariant] = field(default_factory=dict)

    def variant(self, baseline: str | None = None) -> ModelVariant:
        """MedViLL's model (``baseline`` None) or the baseline's, refused where the baseline
        has no model for this task."""
        if baseline is None:
            return self.medvill
        if baseline not in self.baselines:
            from ..modeling.baselines import BASELINE_NAMES, BASELINE_TASKS

            if baseline not in BASELINE_TASKS:
                raise ConfigError(f"unknown baseline {baseline!r}; available: {', '.join(BASELINE_TASKS)}")
            raise ConfigError(f"{BASELINE_NAMES[baseline]} has no {self.name} model: it supports "
                              f"{', '.join(BASELINE_TASKS[baseline])} (as in the paper)")
        return self.baselines[baseline]


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; a second task of the same name is refused."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a task named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    for name in BUILTIN_TASKS:
        if name not in _REGISTRY:
            importlib.import_module(f"{__package__}.{name}")


def task_names() -> tuple[str, ...]:
    """Every registered task: the paper's four first, then others in registration order."""
    _load_builtin()
    return (*BUILTIN_TASKS, *(name for name in _REGISTRY if name not in BUILTIN_TASKS))


def task_spec(name: str) -> TaskSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(task_names())}")
    return _REGISTRY[name]


def scored(n: int, metric_fn: Callable[[np.ndarray], dict[str, float]], n_bootstrap: int,
           seed: int) -> dict[str, dict[str, Any]]:
    """``{metric: {"mean", "std", "n", "values", "full"}}``: bootstrap resamples of ``n``
    examples and the metric on all of them (``full``)."""
    summary = bootstrap(n, metric_fn, n_resamples=n_bootstrap, seed=seed)
    out: dict[str, dict[str, Any]] = {k: s.to_dict() for k, s in summary.items()}
    for k, v in metric_fn(np.arange(n)).items():
        if k in out:
            out[k]["full"] = v  # on the whole split, without resampling
    return out
