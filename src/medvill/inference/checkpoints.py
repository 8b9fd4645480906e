"""Which fine-tuned checkpoints the Pipeline runs, and loading them.

:meth:`~medvill.inference.Pipeline.from_pretrained` takes one fine-tuned task checkpoint
(``medvill finetune ... --output DIR``) or a folder holding several, such as a ``medvill demo``
output (``DIR/finetune/<task>-<model>/``): :func:`find_checkpoints`.  Where a task has several
checkpoints, the one named ``MedViLL-BAR`` is used unless ``model=`` names another (a folder
name, or the part after ``<task>-``): :func:`select_checkpoints`.  Models are loaded on first
use.  A method whose task has no checkpoint raises :class:`MissingTaskError` naming the task and
the checkpoints that were found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from ..checkpoint_files import ANSWERS_FILE, CONFIG_NAME, FINETUNE_INFO, CheckpointInfo
from ..config import ConfigError
from ..labels import CHEXPERT_OBSERVATIONS
from ..modeling.heads import MedViLLForClassification, MedViLLForPretraining, MedViLLForRetrieval, MedViLLForVQA
from ..modeling.pretrained import PreTrainedModel
from ..modeling.weights import convert_weights
from ..tasks.registry import task_spec
from ..tasks.vqa import read_answers
from ..tokenization import MedTokenizer
from .inputs import ModelInput

#: the tasks a Pipeline runs (each has its method: classify, retrieve, answer, generate)
TASKS = ("classification", "retrieval", "vqa", "generation")
#: The model picked where a folder holds several checkpoints of a task.
DEFAULT_MODEL = "MedViLL-BAR"
#: A task's model: one of :data:`MODEL_CLASSES`.
TaskModel = MedViLLForClassification | MedViLLForRetrieval | MedViLLForVQA | MedViLLForPretraining
#: each task's MedViLL model class, from the task registry (medvill.tasks.registry)
MODEL_CLASSES: dict[str, type[TaskModel]] = {
    task: cast("type[TaskModel]", task_spec(task).medvill.model_class) for task in TASKS}
#: older checkpoints without finetune.json: the task from the architecture (generation's
#: MedViLLForPretraining is also the pre-training model, so it cannot say)
_ARCHITECTURE_TASK = {MODEL_CLASSES[t].__name__: t for t in ("classification", "retrieval", "vqa")}


class MissingTaskError(LookupError):
    """A method needs a task whose checkpoint the Pipeline does not have."""


# ============================================================================================
# finding checkpoints
# ============================================================================================

@dataclass(frozen=True)
class TaskCheckpoint:
    """A fine-tuned checkpoint folder, its task and its model name (e.g. ``MedViLL-BAR``)."""

    task: str
    name: str
    path: Path


def _supported(info: CheckpointInfo, task: str) -> bool:
    """Whether the Pipeline can run the checkpoint (a MedViLL task model, not a baseline: the
    CNN & Transformer baseline uses MedViLL's task classes on another trunk)."""
    return info.architecture == MODEL_CLASSES[task].__name__ and info.trunk == "medvill"


def checkpoint_task(path: str | Path | CheckpointInfo) -> str:
    """The task of a fine-tuned checkpoint (from ``finetune.json``, else its architecture)."""
    info = path if isinstance(path, CheckpointInfo) else CheckpointInfo.read(path)
    task = info.task
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"{info.directory / FINETUNE_INFO}: unknown task {task!r}; expected one of "
                              f"{', '.join(TASKS)}")
        return task
    arch = info.architecture
    if arch in _ARCHITECTURE_TASK:
        return _ARCHITECTURE_TASK[arch]
    raise ConfigError(f"{info.directory} holds a {arch} without {FINETUNE_INFO}: a pre-training checkpoint, not a "
                      f"fine-tuned task checkpoint; fine-tune it first (medvill finetune TASK --init {info.directory} "
                      "...)")


def find_checkpoints(directory: str | Path, max_depth: int = 3) -> list[TaskCheckpoint]:
    """Fine-tuned MedViLL checkpoints in ``directory``: the folder itself when it is one, else
    every sub-folder (up to ``max_depth`` levels) holding ``config.json`` and ``finetune.json``
    (baseline models, which the Pipeline does not run, are left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    if (directory / CONFIG_NAME).is_file():
        info = CheckpointInfo.read(directory)
        task = checkpoint_task(info)
        if not _supported(info, task):
            arch = "CNN & Transformer baseline" if info.trunk == "cnn_transformer" else info.architecture
            raise ConfigError(f"{directory} holds a {arch} {task} model; the Pipeline runs MedViLL task models "
                              f"({MODEL_CLASSES[task].__name__})")
        return [TaskCheckpoint(task, _model_name(directory, task), directory)]
    found: list[TaskCheckpoint] = []

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if (child / CONFIG_NAME).is_file():  # a checkpoint: never look inside (step-N saves)
                if (child / FINETUNE_INFO).is_file():
                    info = CheckpointInfo.read(child)
                    task = checkpoint_task(info)
                    if _supported(info, task):  # baselines (TieNet, CNN & Transformer) are left out
                        found.append(TaskCheckpoint(task, _model_name(child, task), child))
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(directory, 1)
    return found


def _model_name(path: Path, task: str) -> str:
    return path.name[len(task) + 1:] if path.name.startswith(f"{task}-") else path.name


def select_checkpoints(found: Sequence[TaskCheckpoint], model: str | None = None,
                       source: str | Path = "") -> dict[str, TaskCheckpoint]:
    """One checkpoint per task: the one named ``model`` (folder name or the part after
    ``<task>-``); without ``model``, a task's only checkpoint or its ``MedViLL-BAR`` one."""
    by_task: dict[str, list[TaskCheckpoint]] = {}
    for c in found:
        by_task.setdefault(c.task, []).append(c)
    chosen: dict[str, TaskCheckpoint] = {}
    for task, cands in by_task.items():
        if model is not None:
            match = [c for c in cands if model in (c.name, c.path.name)]
        elif len(cands) == 1:
            match = cands
        else:
            match = [c for c in cands if c.name == DEFAULT_MODEL]
            if not match:
                raise ConfigError(f"{source} holds several {task} checkpoints ({', '.join(c.name for c in cands)}) "
                                  f"and none named {DEFAULT_MODEL}; choose one with model=NAME (CLI: --model NAME)")
        if len(match) > 1:
            raise ConfigError(f"{source}: {len(match)} {task} checkpoints match {model or DEFAULT_MODEL!r}: "
                              f"{', '.join(str(c.path) for c in match)}")
        if match:
            chosen[task] = match[0]
    if model is not None and not chosen:
        names = sorted({c.name for c in found})
        raise FileNotFoundError(f"no checkpoint named {model!r} in {source}; available: {', '.join(names) or 'none'}")
    return chosen


# ============================================================================================
# loading a checkpoint
# ============================================================================================

@dataclass
class _Loaded:
    model: TaskModel
    tokenizer: MedTokenizer
    inputs: ModelInput
    label_names: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


def _load_task(task: str, ckpt: TaskCheckpoint, device: torch.device, weights: str = "fp32") -> _Loaded:
    """The model (on ``device``, in eval mode, its Linear layers in ``weights`` format), tokenizer
    and preprocessing of ``task``'s checkpoint, with the label names of a classifier and the
    answer vocabulary of a VQA model."""
    model = PreTrainedModel.from_pretrained(ckpt.path)
    if not isinstance(model, MODEL_CLASSES[task]):
        raise ConfigError(f"{ckpt.path}: a {task} checkpoint should hold a {MODEL_CLASSES[task].__name__}, "
                          f"not a {type(model).__name__}")
    model.to(device).eval()
    convert_weights(model, weights)
    lm = _Loaded(model, MedTokenizer.from_pretrained(ckpt.path),
                 ModelInput.for_checkpoint(ckpt.path, model.config.image_size))
    if isinstance(model, MedViLLForClassification):  # the classification task (checked above)
        n = model.num_labels
        lm.label_names = (list(CHEXPERT_OBSERVATIONS) if n == len(CHEXPERT_OBSERVATIONS)
                          else [f"label_{i}" for i in range(n)])
    if isinstance(model, MedViLLForVQA):  # the VQA task
        lm.answers = _read_answers(ckpt.path, model.num_answers)
    return lm


def _read_answers(directory: Path, num_answers: int) -> list[str]:
    """A VQA checkpoint's answer vocabulary, one per class of its model."""
    path = directory / ANSWERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {ANSWERS_FILE}: not a VQA checkpoint")
    answers = read_answers(path)
    if len(answers) != num_answers:
        raise ConfigError(f"{path}: {len(answers)} answers, the model has {num_answers} classes")
    return answers
