"""Fine-tuning and evaluation of downstream tasks through the one training loop.

``run_finetuning(task, cfg, init, output)``: ``init`` is a pre-training checkpoint directory
(its tokenizer and architecture are used, its trunk weights copied) or ``"scratch"`` (the
Fine-tuning Only baseline: same architecture, no pre-training).  The model is selected on
the validation split, never on test.  ``run_evaluation`` scores a checkpoint on a split with
the paper's protocol (bootstrap resamples of the predictions; mean and std per metric).

Tasks: classification, retrieval, VQA and report generation, each with its whole contract
(model, data, validation, evaluation, baselines) in its own file under ``medvill.tasks``,
found through :mod:`medvill.tasks.registry`; this module names no task.

Baselines (``init``): ``"cnn-transformer"`` (CNN & Transformer: classification, retrieval,
VQA; the same task models on a late-fusion trunk, ``init_text`` honoured for its text side)
and ``"tienet"`` (TieNet: classification and generation, trained with its joint objective).
Both go through the same loop, the same validation-based selection and the same evaluation;
``run_evaluation`` recognises them from the checkpoint's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..checkpoint_files import FINETUNE_INFO, INPUT_INFO, RUN_CONFIG, finetune_info_text
from ..config import ConfigError, RunConfig
from ..data.image_warnings import collected_image_warnings
from ..data.prepare import training_input_settings
from ..modeling.baselines import BASELINE_TASKS
from ..modeling.bert_init import load_bert_weights, resolve_bert_dir
from ..modeling.heads import init_from_pretraining
from ..modeling.pretrained import PreTrainedModel, checkpoint_model_config, read_weights
from ..tasks.registry import BUILTIN_TASKS, FitContext, task_spec
from ..tokenization import MedTokenizer
from ..train.loop import TrainResult, fit
from ..train.tracking import check_available
from .common import build_tokenizer, model_config_for

#: the paper's four tasks (others may be registered: medvill.tasks.registry.task_names)
TASKS = BUILTIN_TASKS


@dataclass
class FinetuneRun:
    output_dir: Path
    result: TrainResult
    init: str


def run_finetuning(task_name: str, cfg: RunConfig, init: str, output_dir: str | Path,
                   console: Console | None = None) -> FinetuneRun:
    """Fine-tune ``task_name`` from ``init`` (a pre-training checkpoint, ``scratch`` or a
    baseline's name) into ``output_dir``; the image checks' warnings are summarised once
    (:mod:`medvill.data.image_warnings`)."""
    with collected_image_warnings(output_dir):
        return _finetune(task_name, cfg, init, output_dir, console)


def _finetune(task_name: str, cfg: RunConfig, init: str, output_dir: str | Path,
              console: Console | None) -> FinetuneRun:
    console = console or Console()
    check_available(cfg.train.trackers)  # a missing tracker package stops the run before any work
    output_dir = Path(output_dir)
    baseline = init if init in BASELINE_TASKS else None
    spec = task_spec(task_name)
    variant = spec.variant(baseline)
    task = variant.make_task(cfg, None)
    if cfg.data.eval_split == "test":
        raise ConfigError("data.eval_split=test: model selection must not look at the test split")
    train_records = spec.examples(cfg, cfg.data.train_split)
    val_records = spec.examples(cfg, cfg.data.eval_split)
    head = variant.head(task, cfg, train_records)
    if baseline == "tienet" and cfg.init_text:
        console.print(f"TieNet has no transformer: init_text={cfg.init_text} is not used")
    # every model class takes (config, load_pretrained_backbone, **head_config): see PreTrainedModel
    build: Callable[..., PreTrainedModel] = variant.model_class
    if init == "scratch" or baseline is not None:
        # Fine-tuning Only and the baselines: no vision-language pre-training; the transformer
        # starts from init_text (a BERT checkpoint) when given, as in the paper, else from random weights
        bert_dir = resolve_bert_dir(cfg.init_text) if cfg.init_text and baseline != "tienet" else None
        texts = [getattr(r, "text", "") or getattr(r, "question", "") for r in train_records]
        tokenizer = build_tokenizer(cfg, texts, bert_dir)
        mcfg = model_config_for(cfg, tokenizer, bert_dir)
        torch.manual_seed(cfg.train.seed)
        model = build(mcfg, **head)
        if bert_dir is not None:
            load_bert_weights(model, bert_dir)
    else:
        mcfg = checkpoint_model_config(init)
        tokenizer = MedTokenizer.from_pretrained(init)
        torch.manual_seed(cfg.train.seed)
        model = build(mcfg, load_pretrained_backbone=False, **head)
        fresh = init_from_pretraining(model, read_weights(init))
        console.print(f"initialised from {init}; new parameters: {', '.join(fresh) or 'none'}")
    cfg = dataclasses.replace(cfg, model=mcfg)
    if cfg.finetune.backbone_lr is not None:  # the CNN's own rate while fine-tuning (FinetuneConfig)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, backbone_lr=cfg.finetune.backbone_lr))
    plan = variant.fit(task, FitContext(cfg, tokenizer, train_records, val_records))
    extra = {RUN_CONFIG: cfg.to_yaml(), FINETUNE_INFO: finetune_info_text(task_name, init)}
    # how training read its images, for inference (medvill.Pipeline) to do exactly the same
    extra[INPUT_INFO] = json.dumps(training_input_settings(cfg.data.root, mcfg.image_size), indent=2) + "\n"

    def save(m: torch.nn.Module, directory: Path) -> None:
        assert isinstance(m, PreTrainedModel)  # fit hands back the (unwrapped) model it trains
        m.save_pretrained(directory, tokenizer=tokenizer, extra_files={**extra, **plan.files()})

    console.print(f"fine-tuning {task_name} from {init} on {len(train_records)} {cfg.data.dataset} examples "
                  f"(validation {len(val_records)}) for {cfg.train.max_steps} steps")
    result = fit(model, task, plan.train_loader, cfg.train, output_dir, save, console=console, evaluate=plan.evaluate,
                 select_metric=task.select_metric, select_mode=getattr(task, "select_mode", "max"), run_config=cfg)
    return FinetuneRun(output_dir=output_dir, result=result, init=init)
