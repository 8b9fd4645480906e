"""Medical VQA (paper IV-C): answer classification on CLS over the training answers.

Every distinct training answer is one class (VQA-RAD: answers normalised to lower case).
Questions whose answer is not in the training vocabulary cannot be answered by a classifier;
they are left out of training and count as wrong in evaluation (target -1).  Accuracy is
reported for CLOSED (yes/no) and OPEN questions separately; the model is selected on the
validation split's overall accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint_files import ANSWERS_FILE, read_json_file
from ..config import ConfigError, RunConfig
from ..data.splits import load_vqa_split
from ..data.task_data import ImageTextDataset
from ..data.vqa_rad import VQAItem, build_answer_vocab
from ..metrics import vqa_accuracy
from ..modeling.heads import MedViLLForVQA
from ..tokenization import MedTokenizer
from .base import StepOutput, run_over
from .common import loader
from .registry import (
    EvalContext,
    FitContext,
    FitPlan,
    ModelVariant,
    TaskSpec,
    on_cnn_transformer,
    register_task,
    scored,
)


def read_answers(path: Path) -> list[str]:
    """A VQA checkpoint's answer vocabulary (a JSON list of strings, one per class)."""
    answers = read_json_file(path, list)
    if not all(isinstance(a, str) for a in answers):
        raise ConfigError(f"{path}: every answer must be a string")
    return answers


class VQATask:
    name = "vqa"
    select_metric = "accuracy"

    def __init__(self, answers: list[str] | None = None):
        self.answers = answers or []

    @property
    def index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.answers)}

    def fit_vocab(self, train_items: list[VQAItem]) -> None:
        self.answers = build_answer_vocab(train_items)

    def targets(self, items: list[VQAItem]) -> np.ndarray:
        idx = self.index
        return np.array([idx.get(it.answer, -1) for it in items], dtype=np.int64)

    def save_files(self) -> dict[str, str]:
        return {ANSWERS_FILE: json.dumps(self.answers, indent=0) + "\n"}

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> VQATask:
        path = Path(directory) / ANSWERS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {ANSWERS_FILE}: not a VQA checkpoint")
        return cls(read_answers(path))

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
        loss = F.cross_entropy(logits.float(), batch["targets"].long(), ignore_index=-1)
        return StepOutput(loss=loss, metrics={"ce": loss.item()})

    def predict(self, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """Predicted answer indices and targets over a whole loader, in data set order."""
        preds, targets = run_over(model, loader, lambda logits: logits.argmax(-1), "targets")
        return preds.numpy(), targets.numpy()

    def metrics(self, preds: np.ndarray, targets: np.ndarray, items: list[VQAItem]) -> dict[str, float]:
        predicted = [self.answers[p] for p in preds]
        return vqa_accuracy(predicted, [it.answer for it in items], [it.answer_type for it in items])


# ============================================================================================
# the task's contract (tasks/registry.py)
# ============================================================================================

def question_dataset(task: VQATask, items: list[VQAItem], tokenizer: MedTokenizer, image_size: int,
                     max_text_len: int) -> ImageTextDataset:
    """Image, question and answer class of each item."""
    return ImageTextDataset([it.image for it in items], [it.question for it in items], task.targets(items),
                            tokenizer, image_size, max_text_len)


def fit_vqa(task: VQATask, ctx: FitContext) -> FitPlan:
    """Questions as the text; validation accuracy; the answers are saved with the model."""
    mcfg, tok = ctx.model_config, ctx.tokenizer
    train_loader = loader(question_dataset(task, ctx.train, tok, mcfg.image_size, mcfg.max_text_len), ctx.cfg, tok,
                          train=True)
    val_loader = loader(question_dataset(task, ctx.validation, tok, mcfg.image_size, mcfg.max_text_len), ctx.cfg,
                        tok, train=False)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return task.metrics(*task.predict(m, val_loader), ctx.validation)

    return FitPlan(train_loader, evaluate, task.save_files)


def evaluate_vqa(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    task, items, mcfg = ctx.task, ctx.examples, ctx.cfg.model
    preds, targets = task.predict(ctx.model, loader(question_dataset(task, items, ctx.tokenizer, mcfg.image_size,
                                                                     mcfg.max_text_len), ctx.cfg, ctx.tokenizer,
                                                    train=False))

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        m = task.metrics(preds[idx], targets[idx], [items[i] for i in idx])
        return {k: v for k, v in m.items() if "/" not in k}

    return scored(len(items), metric_fn, ctx.n_bootstrap, ctx.seed)


def _make_task(cfg: RunConfig | None, checkpoint: Path | None) -> VQATask:
    return VQATask.from_checkpoint(checkpoint) if checkpoint is not None else VQATask()


def _head(task: VQATask, cfg: RunConfig, train: list) -> dict[str, Any]:
    """One class per distinct training answer."""
    task.fit_vocab(train)
    return {"num_answers": len(task.answers)}


MEDVILL = ModelVariant(MedViLLForVQA, _make_task, fit_vqa, head=_head)
SPEC = register_task(TaskSpec(
    name="vqa",
    medvill=MEDVILL,
    examples=load_vqa_split,
    evaluate=evaluate_vqa,
    baselines={"cnn-transformer": on_cnn_transformer(MEDVILL)},
))
