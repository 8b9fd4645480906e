"""Fine-tuning and evaluation of downstream tasks through the one training loop.

``run_finetuning(task, cfg, init, output)``: ``init`` is a pre-training checkpoint directory
(its tokenizer and architecture are used, its trunk weights copied) or ``"scratch"`` (the
Fine-tuning Only baseline: same architecture, no pre-training).  The model is selected on
the validation split, never on test.  ``run_evaluation`` scores a checkpoint on a split with
the paper's protocol (bootstrap resamples of the predictions; mean and std per metric).

Tasks: classification, retrieval, VQA and report generation.

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
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from .checkpoint_files import (
    FINETUNE_INFO,
    INPUT_INFO,
    RUN_CONFIG,
    THRESHOLDS_FILE,
    finetune_info_text,
    read_checkpoint_config,
)
from .config import ConfigError, ModelConfig, RunConfig
from .data.collate import MLMSpec, PretrainCollator, PretrainDataset
from .data.prepare import training_input_settings
from .data.records import Record
from .data.task_data import ImageTextCollator, ImageTextDataset
from .generation import GenerationConfig
from .metrics import bootstrap
from .metrics.classification import select_micro_threshold, select_thresholds
from .modeling.baselines import BASELINE_NAMES, BASELINE_TASKS, TieNet
from .modeling.bert_init import load_bert_weights, resolve_bert_dir
from .modeling.heads import (
    MedViLLForClassification,
    MedViLLForPretraining,
    MedViLLForRetrieval,
    MedViLLForVQA,
    init_from_pretraining,
)
from .modeling.pretrained import PreTrainedModel, checkpoint_model_config, read_weights
from .pipeline import build_tokenizer, data_loader, load_split, load_vqa_split, model_config_for
from .tasks.classification import ClassificationTask, binary_targets
from .tasks.generation import GenerationScores, GenerationTask
from .tasks.retrieval import PairScorer, RetrievalTask, make_trials, retrieval_trials_metrics
from .tasks.tienet import TieNetClassificationTask, TieNetGenerationTask
from .tasks.vqa import VQATask
from .tokenization import MedTokenizer
from .train.loop import TrainResult, fit

TASKS = ("classification", "retrieval", "vqa", "generation")

#: The task objects :func:`_task` makes (the TieNet tasks subclass the classification and generation ones).
FinetuneTask = ClassificationTask | RetrievalTask | VQATask | GenerationTask
Collate = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


@dataclass
class FinetuneRun:
    output_dir: Path
    result: TrainResult
    init: str


def _task(name: str, checkpoint: str | Path | None = None, baseline: str | None = None,
          cfg: RunConfig | None = None) -> tuple[FinetuneTask, type[PreTrainedModel]]:
    """The task object and its model class; a VQA task restores its answers from a checkpoint.
    ``baseline``: ``cnn-transformer`` or ``tienet`` (unsupported task combinations are refused).
    ``cfg``: the run's fine-tuning options (training; evaluation needs none)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    if baseline is not None:
        if baseline not in BASELINE_TASKS:
            raise ConfigError(f"unknown baseline {baseline!r}; available: {', '.join(BASELINE_TASKS)}")
        if name not in BASELINE_TASKS[baseline]:
            raise ConfigError(f"{BASELINE_NAMES[baseline]} has no {name} model: it supports "
                              f"{', '.join(BASELINE_TASKS[baseline])} (as in the paper)")
    if baseline == "tienet":
        return (TieNetClassificationTask() if name == "classification" else TieNetGenerationTask()), TieNet
    if name == "classification":
        ft = cfg.finetune if cfg is not None else None
        return ClassificationTask(image_only_prob=ft.image_only_prob if ft else 0.0,
                                  seed=cfg.train.seed if cfg else 0), MedViLLForClassification
    if name == "vqa":
        return (VQATask.from_checkpoint(checkpoint) if checkpoint else VQATask()), MedViLLForVQA
    if name == "retrieval":
        return RetrievalTask(), MedViLLForRetrieval
    if name == "generation":
        return GenerationTask(cfg.finetune.generation_objective if cfg is not None else "full"), MedViLLForPretraining
    raise ConfigError(f"unknown task {name!r}; available: {', '.join(TASKS)}")


def _examples(task: str, cfg: RunConfig, split: str) -> list:
    return load_vqa_split(cfg, split) if task == "vqa" else load_split(cfg, split)


def _dataset(task: FinetuneTask, examples: list, tokenizer: MedTokenizer, mcfg: ModelConfig,
             image_only: bool = False) -> ImageTextDataset:
    """The examples as (image, text, target); ``image_only``: every report empty."""
    if isinstance(task, VQATask):
        return ImageTextDataset([it.image for it in examples], [it.question for it in examples],
                                task.targets(examples), tokenizer, mcfg.image_size, mcfg.max_text_len)
    texts = [""] * len(examples) if image_only else [r.text for r in examples]
    return ImageTextDataset([r.image for r in examples], texts, binary_targets(examples),
                            tokenizer, mcfg.image_size, mcfg.max_text_len)


def _validate_classification(task: ClassificationTask, model: torch.nn.Module, loader: DataLoader,
                             image_only_loader: DataLoader) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Validation metrics with the reports and with empty reports (``image_only_*``), and the
    per-label thresholds each chooses on this (validation) split."""
    probs, targets = task.predict(model, loader)
    io_probs, _ = task.predict(model, image_only_loader)
    metrics = task.metrics(probs, targets)
    metrics.update({f"image_only_{k}": v for k, v in task.metrics(io_probs, targets).items() if "/" not in k})
    thresholds = {"image_report": select_thresholds(targets, probs).tolist(),
                  "image_only": select_thresholds(targets, io_probs).tolist(),
                  "image_report_micro": select_micro_threshold(targets, probs),
                  "image_only_micro": select_micro_threshold(targets, io_probs)}
    return metrics, thresholds


def _metrics(task: ClassificationTask | VQATask, preds: np.ndarray, targets: np.ndarray,
             examples: list) -> dict[str, float]:
    if isinstance(task, VQATask):
        return task.metrics(preds, targets, examples)
    return task.metrics(preds, targets)


def _loader(ds: PretrainDataset | ImageTextDataset, cfg: RunConfig, tokenizer: MedTokenizer, train: bool,
            collate: Collate | None = None) -> DataLoader:
    return data_loader(ds, cfg, collate or ImageTextCollator(tokenizer.pad_id), train)


def run_finetuning(task_name: str, cfg: RunConfig, init: str, output_dir: str | Path,
                   console: Console | None = None) -> FinetuneRun:
    console = console or Console()
    output_dir = Path(output_dir)
    baseline = init if init in BASELINE_TASKS else None
    task, model_cls = _task(task_name, baseline=baseline, cfg=cfg)
    if cfg.data.eval_split == "test":
        raise ConfigError("data.eval_split=test: model selection must not look at the test split")
    train_records = _examples(task_name, cfg, cfg.data.train_split)
    val_records = _examples(task_name, cfg, cfg.data.eval_split)
    head: dict[str, Any] = {}
    if isinstance(task, VQATask):
        task.fit_vocab(train_records)
        head = {"num_answers": len(task.answers)}
    if baseline == "cnn-transformer":
        head["trunk"] = "cnn_transformer"
    elif baseline == "tienet":
        head.update(hops=cfg.baseline.tienet_hops, loss_weight=cfg.baseline.tienet_loss_weight)
        if cfg.init_text:
            console.print(f"TieNet has no transformer: init_text={cfg.init_text} is not used")
    # every model class takes (config, load_pretrained_backbone, **head_config): see PreTrainedModel
    build: Callable[..., PreTrainedModel] = model_cls
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
    if isinstance(task, TieNetGenerationTask):
        # TieNet's joint objective needs the observations too: the classification batches
        train_loader = _loader(_dataset(task, train_records, tokenizer, mcfg), cfg, tokenizer, train=True)
        val_loader = _loader(_dataset(task, val_records, tokenizer, mcfg), cfg, tokenizer, train=False)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return task.perplexity(m, val_loader)
    elif isinstance(task, GenerationTask):
        p = cfg.pretrain
        # full: the unmasked reports (every token is a target); mlm: a masked sample, [SEP] included
        mlm = None if task.objective == "full" else MLMSpec(p.mlm_prob, p.mlm_mask_frac, p.mlm_random_frac)
        train_ds = PretrainDataset(train_records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm,
                                   seed=cfg.train.seed, matching=False, mask_end=True)
        val_ds = PretrainDataset(val_records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm=None,
                                 seed=cfg.train.seed, matching=False)
        train_loader = _loader(train_ds, cfg, tokenizer, train=True, collate=PretrainCollator(tokenizer.pad_id))
        val_loader = _loader(val_ds, cfg, tokenizer, train=False, collate=PretrainCollator(tokenizer.pad_id))

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return task.perplexity(m, val_loader)
    elif isinstance(task, RetrievalTask):
        # matched and label-aware mismatched pairs, reports unmasked; validation pairs fixed
        def pairs(records: list[Record], train: bool) -> DataLoader:
            ds = PretrainDataset(records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm=None,
                                 seed=cfg.train.seed)
            return _loader(ds, cfg, tokenizer, train=train, collate=PretrainCollator(tokenizer.pad_id))

        train_loader, val_loader = pairs(train_records, True), pairs(val_records, False)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return task.match_auroc(m, val_loader)
    elif isinstance(task, ClassificationTask):
        task.sep_id, task.pad_id = tokenizer.sep_id, tokenizer.pad_id
        train_loader = _loader(_dataset(task, train_records, tokenizer, mcfg), cfg, tokenizer, train=True)
        val_loader = _loader(_dataset(task, val_records, tokenizer, mcfg), cfg, tokenizer, train=False)
        val_image_only = _loader(_dataset(task, val_records, tokenizer, mcfg, image_only=True), cfg, tokenizer,
                                 train=False)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            # the thresholds of the model being validated travel with it when it is saved
            metrics, thresholds = _validate_classification(task, m, val_loader, val_image_only)
            selected_thresholds.update(thresholds)
            return metrics
    else:
        train_loader = _loader(_dataset(task, train_records, tokenizer, mcfg), cfg, tokenizer, train=True)
        val_loader = _loader(_dataset(task, val_records, tokenizer, mcfg), cfg, tokenizer, train=False)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return _metrics(task, *task.predict(m, val_loader), val_records)

    selected_thresholds: dict[str, list[float]] = {}
    extra = {RUN_CONFIG: cfg.to_yaml(), FINETUNE_INFO: finetune_info_text(task_name, init)}
    # how training read its images, for inference (medvill.Pipeline) to do exactly the same
    extra[INPUT_INFO] = json.dumps(training_input_settings(cfg.data.root, mcfg.image_size), indent=2) + "\n"
    if isinstance(task, VQATask):
        extra.update(task.save_files())

    def save(m: torch.nn.Module, directory: Path) -> None:
        assert isinstance(m, PreTrainedModel)  # fit hands back the (unwrapped) model it trains
        files = dict(extra)
        if selected_thresholds:
            files[THRESHOLDS_FILE] = json.dumps(selected_thresholds, indent=1) + "\n"
        m.save_pretrained(directory, tokenizer=tokenizer, extra_files=files)

    console.print(f"fine-tuning {task_name} from {init} on {len(train_records)} {cfg.data.dataset} examples "
                  f"(validation {len(val_records)}) for {cfg.train.max_steps} steps")
    result = fit(model, task, train_loader, cfg.train, output_dir, save, console=console, evaluate=evaluate,
                 select_metric=task.select_metric, select_mode=getattr(task, "select_mode", "max"))
    return FinetuneRun(output_dir=output_dir, result=result, init=init)


def run_evaluation(task_name: str, checkpoint: str | Path, cfg: RunConfig, split: str = "test",
                   n_bootstrap: int = 30, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{metric: {"mean", "std", "n", "values"}}`` over ``n_bootstrap`` resamples of ``split``."""
    task, model_cls = _task(task_name, checkpoint, baseline_of(checkpoint))
    model = model_cls.from_pretrained(checkpoint)
    tokenizer = MedTokenizer.from_pretrained(checkpoint)
    cfg = dataclasses.replace(cfg, model=model.config)
    records = _examples(task_name, cfg, split)
    if isinstance(task, RetrievalTask):
        assert isinstance(model, MedViLLForRetrieval)  # from_pretrained on the task's class loads only that class
        return _evaluate_retrieval(model, tokenizer, records, cfg, n_bootstrap, seed)
    if isinstance(task, GenerationTask):
        return _evaluate_generation(task, model, tokenizer, records, cfg, n_bootstrap, seed)
    if isinstance(task, ClassificationTask):
        return _evaluate_classification(task, model, tokenizer, records, cfg, checkpoint, n_bootstrap, seed)
    loader = _loader(_dataset(task, records, tokenizer, model.config), cfg, tokenizer, train=False)
    probs, targets = task.predict(model, loader)

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        m = _metrics(task, probs[idx], targets[idx], [records[i] for i in idx])
        return {k: v for k, v in m.items() if "/" not in k}

    summary = bootstrap(len(records), metric_fn, n_resamples=n_bootstrap, seed=seed)
    out = {k: s.to_dict() for k, s in summary.items()}
    for k, v in _metrics(task, probs, targets, records).items():
        if "/" not in k:
            out[k]["full"] = v  # on the whole split, without resampling
    return out


def _evaluate_classification(task: ClassificationTask, model: PreTrainedModel, tokenizer: MedTokenizer, records: list,
                             cfg: RunConfig, checkpoint: str | Path, n_bootstrap: int,
                             seed: int) -> dict[str, dict[str, Any]]:
    """The paper's image + report metrics, the same from the image alone (empty reports,
    ``image_only_*``), and F1 at the thresholds chosen on validation (saved in the checkpoint's
    ``thresholds.json``: per label for macro F1, one shared for micro F1; ``*_val_thr``) beside
    F1 at 0.5."""
    thresholds = read_thresholds(checkpoint)
    micro = {k: float(thresholds.pop(f"{k}_micro")) for k in ("image_report", "image_only")
             if f"{k}_micro" in thresholds}
    probs, targets = task.predict(model, _loader(_dataset(task, records, tokenizer, model.config), cfg, tokenizer,
                                                 train=False))
    io_probs, _ = task.predict(model, _loader(_dataset(task, records, tokenizer, model.config, image_only=True), cfg,
                                              tokenizer, train=False))

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        m = task.metrics(probs[idx], targets[idx], thresholds.get("image_report"), micro.get("image_report"))
        io = task.metrics(io_probs[idx], targets[idx], thresholds.get("image_only"), micro.get("image_only"))
        m.update({f"image_only_{k}": v for k, v in io.items()})
        return {k: v for k, v in m.items() if "/" not in k}

    summary = bootstrap(len(records), metric_fn, n_resamples=n_bootstrap, seed=seed)
    out = {k: s.to_dict() for k, s in summary.items()}
    for k, v in metric_fn(np.arange(len(records))).items():
        out[k]["full"] = v
    return out


def read_thresholds(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """The thresholds a classification checkpoint chose on validation: per label
    (``{"image_report": (14,), "image_only": (14,)}``) and, in checkpoints written since they
    exist, the shared micro-F1 ones (``image_report_micro``, ``image_only_micro``: 0-d arrays);
    empty for checkpoints without any."""
    path = Path(checkpoint) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid thresholds file ({exc})") from None


def baseline_of(checkpoint: str | Path) -> str | None:
    """``cnn-transformer``, ``tienet`` or None (MedViLL), from a checkpoint's ``config.json``."""
    meta = read_checkpoint_config(checkpoint)
    if meta["architecture"] == TieNet.__name__:
        return "tienet"
    if meta.get("head", {}).get("trunk") == "cnn_transformer":
        return "cnn-transformer"
    return None


def _evaluate_retrieval(model: MedViLLForRetrieval, tokenizer: MedTokenizer, records: list, cfg: RunConfig,
                        n_bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """Trials of ``cfg.eval.n_candidates`` candidates, both directions; bootstrap over trials."""
    e = cfg.eval
    trials = make_trials(records, e.n_candidates, e.seed, e.max_queries)
    scorer = PairScorer(model, records, tokenizer, model.config.image_size, model.config.max_text_len,
                        batch_size=max(cfg.train.batch_size, 8))
    per_trial = retrieval_trials_metrics(scorer, trials)
    names = list(per_trial["r2i"][0])
    table = {f"{d}_{k}": np.array([t[k] for t in per_trial[d]]) for d in ("r2i", "i2r") for k in names}

    def metric_fn(idx: np.ndarray) -> dict[str, float]:
        return {name: float(values[idx].mean()) for name, values in table.items()}

    summary = bootstrap(len(trials), metric_fn, n_resamples=n_bootstrap, seed=seed)
    out = {k: s.to_dict() for k, s in summary.items()}
    for name, values in table.items():
        out[name]["full"] = float(values.mean())
    out["trials"] = {"mean": float(len(trials)), "std": 0.0, "n": n_bootstrap, "values": [],
                     "full": float(len(trials)), "cnn_passes": scorer.cnn_passes, "pair_scores": len(scorer.cache)}
    return out


def _evaluate_generation(task: GenerationTask, model: PreTrainedModel, tokenizer: MedTokenizer, records: list,
                         cfg: RunConfig, n_bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """Free-running generation on ``records``; BLEU-4, clinical efficacy, perplexity; bootstrap."""
    from .labeler import label_reports

    e = cfg.eval
    ds = PretrainDataset(records, tokenizer, model.config.image_size, model.config.max_text_len, mlm=None,
                         seed=seed, matching=False)
    loader = _loader(ds, cfg, tokenizer, train=False, collate=PretrainCollator(tokenizer.pad_id))
    gen_cfg = GenerationConfig(max_length=e.max_length or model.config.max_text_len - 1, num_beams=e.num_beams,
                               length_penalty=e.length_penalty, no_repeat_ngram_size=e.no_repeat_ngram_size)
    hyps = task.generate_reports(model, loader, tokenizer, gen_cfg)
    refs = [r.text for r in records]
    nll, n_tokens = task.reference_scores(model, loader)
    scores = GenerationScores(hyps, refs, label_reports(hyps), label_reports(refs), nll, n_tokens)
    summary = bootstrap(len(records), scores.metrics, n_resamples=n_bootstrap, seed=seed)
    out: dict[str, dict[str, Any]] = {k: s.to_dict() for k, s in summary.items()}
    for k, v in scores.metrics(np.arange(len(records))).items():
        out[k]["full"] = v
    out["examples"] = {"mean": float(len(records)), "std": 0.0, "n": n_bootstrap, "values": [],
                       "samples": [{"id": r.id, "generated": h, "reference": r.text} for r, h in
                                   zip(records[:5], hyps[:5], strict=False)]}
    return out
