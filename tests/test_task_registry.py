"""The task registry: a new task is one file, here a toy one (is the study normal?), with no
edit anywhere else; fine-tuning, evaluation and the command line find it by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import ConfigError, RunConfig, load_config
from medvill.data.records import Record
from medvill.data.splits import load_split
from medvill.data.task_data import ImageTextDataset
from medvill.labels import CHEXPERT_OBSERVATIONS
from medvill.modeling.heads import MedViLLForVQA
from medvill.recipes.evaluate import run_evaluation
from medvill.recipes.finetune import run_finetuning
from medvill.tasks.base import StepOutput, run_over
from medvill.tasks.common import loader
from medvill.tasks.registry import (
    EvalContext,
    FitContext,
    FitPlan,
    ModelVariant,
    TaskSpec,
    register_task,
    scored,
    task_names,
    task_spec,
)

NO_FINDING = CHEXPERT_OBSERVATIONS.index("No Finding")


class NormalityTask:
    """Two classes on CLS: the report's No Finding label is positive or not."""

    name = "normality"
    select_metric = "accuracy"

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
        loss = F.cross_entropy(logits.float(), batch["targets"].long())
        return StepOutput(loss=loss)

    def predict(self, model: nn.Module, loader_: Any) -> tuple[np.ndarray, np.ndarray]:
        preds, targets = run_over(model, loader_, lambda logits: logits.argmax(-1), "targets")
        return preds.numpy(), targets.numpy()


def dataset(records: list[Record], ctx_tokenizer: Any, image_size: int, max_len: int) -> ImageTextDataset:
    targets = np.array([int(r.labels[NO_FINDING] == 1) for r in records], dtype=np.int64)
    return ImageTextDataset([r.image for r in records], [""] * len(records), targets, ctx_tokenizer, image_size,
                            max_len)


def fit(task: NormalityTask, ctx: FitContext) -> FitPlan:
    m, tok = ctx.model_config, ctx.tokenizer
    train = loader(dataset(ctx.train, tok, m.image_size, m.max_text_len), ctx.cfg, tok, train=True)
    val = loader(dataset(ctx.validation, tok, m.image_size, m.max_text_len), ctx.cfg, tok, train=False)

    def evaluate(model: nn.Module) -> dict[str, float]:
        preds, targets = task.predict(model, val)
        return {"accuracy": float((preds == targets).mean())}

    return FitPlan(train, evaluate, files=lambda: {"normality.json": json.dumps({"classes": 2}) + "\n"})


def evaluate(ctx: EvalContext) -> dict[str, dict[str, Any]]:
    m = ctx.cfg.model
    preds, targets = ctx.task.predict(ctx.model, loader(dataset(ctx.examples, ctx.tokenizer, m.image_size,
                                                                m.max_text_len), ctx.cfg, ctx.tokenizer, train=False))
    return scored(len(targets), lambda idx: {"accuracy": float((preds[idx] == targets[idx]).mean())},
                  ctx.n_bootstrap, ctx.seed)


def make_task(cfg: RunConfig | None, checkpoint: Path | None) -> NormalityTask:
    return NormalityTask()


SPEC = register_task(TaskSpec(
    name="normality",
    medvill=ModelVariant(MedViLLForVQA, make_task, fit, head=lambda task, cfg, train: {"num_answers": 2}),
    examples=load_split,
    evaluate=evaluate,
))


def test_a_new_task_is_one_file(synthetic_root, tmp_path):
    assert task_names()[:4] == ("classification", "retrieval", "vqa", "generation") and "normality" in task_names()
    cfg = load_config("tiny", None, [f"data.root={synthetic_root}", "train.max_steps=4", "train.eval_every=2",
                                     "train.progress=false"])
    run = run_finetuning("normality", cfg, "scratch", tmp_path / "normality")
    assert run.result.selection["metric"] == "accuracy"
    assert json.loads((tmp_path / "normality" / "finetune.json").read_text())["task"] == "normality"
    assert (tmp_path / "normality" / "normality.json").is_file()  # the task's own checkpoint file
    metrics = run_evaluation("normality", tmp_path / "normality", cfg, split="test", n_bootstrap=3)
    assert metrics["accuracy"]["n"] == 3 and 0.0 <= metrics["accuracy"]["full"] <= 1.0
    result = CliRunner().invoke(app, ["evaluate", "normality", "--checkpoint", str(tmp_path / "normality"),
                                      "--preset", "tiny", "--root", str(synthetic_root), "--dataset", "synthetic",
                                      "--split", "test", "--bootstrap", "2", "--output", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in json.loads((tmp_path / "ev" / "metrics.json").read_text())


def test_registry_refusals():
    with pytest.raises(ConfigError, match="unknown task 'nope'; available: classification, retrieval"):
        task_spec("nope")
    with pytest.raises(ConfigError, match="TieNet has no retrieval model"):
        task_spec("retrieval").variant("tienet")
    with pytest.raises(ConfigError, match="unknown baseline 'resnet'"):
        task_spec("vqa").variant("resnet")
    with pytest.raises(ConfigError, match="has no normality model"):
        SPEC.variant("tienet")
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskSpec("normality", SPEC.medvill, load_split, evaluate))
    assert register_task(SPEC) is SPEC  # the same spec again (a re-imported test module) is fine
