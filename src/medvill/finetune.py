"""Fine-tuning and evaluation of downstream tasks through the one training loop.

``run_finetuning(task, cfg, init, output)``: ``init`` is a pre-training checkpoint directory
(its tokenizer and architecture are used, its trunk weights copied) or ``"scratch"`` (the
Fine-tuning Only baseline: same architecture, no pre-training).  The model is selected on
the validation split, never on test.  ``run_evaluation`` scores a checkpoint on a split with
the paper's protocol (bootstrap resamples of the predictions; mean and std per metric).

Tasks available so far: classification.  (Retrieval, VQA and generation plug in the same way.)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from .config import ConfigError, ModelConfig, RunConfig, dataclass_from_dict
from .data.task_data import ImageTextCollator, ImageTextDataset
from .metrics import bootstrap
from .modeling.heads import MedViLLForClassification, init_from_pretraining
from .modeling.pretrained import PreTrainedModel, read_checkpoint_config
from .pipeline import RUN_CONFIG_NAME, build_tokenizer, load_split, model_config_for
from .tasks.classification import ClassificationTask, binary_targets
from .tokenization import MedTokenizer
from .train.loop import TrainResult, fit

TASKS = ("classification",)


@dataclass
class FinetuneRun:
    output_dir: Path
    result: TrainResult
    init: str


def _task(name: str):
    if name == "classification":
        return ClassificationTask(), MedViLLForClassification
    raise ConfigError(f"unknown task {name!r}; available: {', '.join(TASKS)}")


def _dataset(task: str, records, tokenizer: MedTokenizer, mcfg: ModelConfig) -> ImageTextDataset:
    if task == "classification":
        return ImageTextDataset([r.image for r in records], [r.text for r in records], binary_targets(records),
                                tokenizer, mcfg.image_size, mcfg.max_text_len)
    raise ConfigError(f"unknown task {task!r}")


def _loader(ds, cfg: RunConfig, tokenizer: MedTokenizer, train: bool) -> DataLoader:
    return DataLoader(
        ds, batch_size=cfg.train.batch_size, shuffle=train, drop_last=train and len(ds) >= cfg.train.batch_size,
        num_workers=cfg.data.num_workers, collate_fn=ImageTextCollator(tokenizer.pad_id),
        generator=torch.Generator().manual_seed(cfg.train.seed) if train else None,
    )


def run_finetuning(task_name: str, cfg: RunConfig, init: str, output_dir: str | Path,
                   console: Console | None = None) -> FinetuneRun:
    console = console or Console()
    output_dir = Path(output_dir)
    task, model_cls = _task(task_name)
    train_records = load_split(cfg, cfg.data.train_split)
    val_records = load_split(cfg, cfg.data.eval_split)
    if cfg.data.eval_split == "test":
        raise ConfigError("data.eval_split=test: model selection must not look at the test split")
    if init == "scratch":
        tokenizer = build_tokenizer(cfg, [r.text for r in train_records])
        mcfg = model_config_for(cfg, tokenizer)
        torch.manual_seed(cfg.train.seed)
        model = model_cls(mcfg)
    else:
        meta = read_checkpoint_config(init)
        tokenizer = MedTokenizer.from_pretrained(init)
        mcfg = dataclass_from_dict(ModelConfig, meta["model"], "model.")
        torch.manual_seed(cfg.train.seed)
        model = model_cls(mcfg, load_pretrained_backbone=False)
        fresh = init_from_pretraining(model, load_file(str(Path(init) / "model.safetensors")))
        console.print(f"initialised from {init}; new parameters: {', '.join(fresh) or 'none'}")
    cfg = dataclasses.replace(cfg, model=mcfg)
    train_loader = _loader(_dataset(task_name, train_records, tokenizer, mcfg), cfg, tokenizer, train=True)
    val_loader = _loader(_dataset(task_name, val_records, tokenizer, mcfg), cfg, tokenizer, train=False)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return task.metrics(*task.predict(m, val_loader))

    def save(m: PreTrainedModel, directory: Path) -> None:
        m.save_pretrained(directory, tokenizer=tokenizer, extra_files={
            RUN_CONFIG_NAME: cfg.to_yaml(), "finetune.json": json.dumps({"task": task_name, "init": init}) + "\n"})

    console.print(f"fine-tuning {task_name} from {init} on {len(train_records)} {cfg.data.dataset} pairs "
                  f"(validation {len(val_records)}) for {cfg.train.max_steps} steps")
    result = fit(model, task, train_loader, cfg.train, output_dir, save, console=console, evaluate=evaluate,
                 select_metric=task.select_metric)
    return FinetuneRun(output_dir=output_dir, result=result, init=init)


def run_evaluation(task_name: str, checkpoint: str | Path, cfg: RunConfig, split: str = "test",
                   n_bootstrap: int = 30, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{metric: {"mean", "std", "n", "values"}}`` over ``n_bootstrap`` resamples of ``split``."""
    task, model_cls = _task(task_name)
    model = model_cls.from_pretrained(checkpoint)
    tokenizer = MedTokenizer.from_pretrained(checkpoint)
    cfg = dataclasses.replace(cfg, model=model.config)
    records = load_split(cfg, split)
    loader = _loader(_dataset(task_name, records, tokenizer, model.config), cfg, tokenizer, train=False)
    probs, targets = task.predict(model, loader)

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        m = task.metrics(probs[idx], targets[idx])
        return {k: v for k, v in m.items() if "/" not in k}

    summary = bootstrap(len(records), metric_fn, n_resamples=n_bootstrap, seed=seed)
    out = {k: s.to_dict() for k, s in summary.items()}
    for k, v in task.metrics(probs, targets).items():
        if "/" not in k:
            out[k]["full"] = v  # on the whole split, without resampling
    return out
