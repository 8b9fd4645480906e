"""ONE training loop for every task, built on Accelerate.

The loop knows nothing about tasks: a task turns a batch into a :class:`StepOutput`.
The same code runs on one CPU, one GPU, or several processes under ``accelerate launch``
(distributed sampling, gradient synchronisation through the prepared model, rank-0-only
logging and saving).  Optimiser: AdamW with separate learning rates for the CNN backbone
and the rest, no weight decay on biases and LayerNorm weights, linear warm-up then linear
decay, gradient clipping.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..tasks.base import Task

METRICS_LOG = "metrics.jsonl"


@dataclass
class TrainResult:
    steps: int
    wall_time: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per log interval
    selection: dict[str, Any] | None = None  # model selection on the validation split

    def first(self, key: str) -> float | None:
        vals = [h[key] for h in self.history if key in h]
        return vals[0] if vals else None

    def last(self, key: str) -> float | None:
        vals = [h[key] for h in self.history if key in h]
        return vals[-1] if vals else None


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    return Accelerator(
        cpu=cfg.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
    )


def is_backbone_param(name: str) -> bool:
    return ".visual." in f".{name}" or name.startswith("visual.")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone / rest x decay / no decay (biases, norms, 1-D params)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups[(is_backbone_param(name), p.ndim >= 2 and "LayerNorm" not in name)].append(p)
    out = []
    for (backbone, decay), params in groups.items():
        lr = (cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr) if backbone else cfg.lr
        out.append({"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'backbone' if backbone else 'transformer'}{'' if decay else '_no_decay'}"})
    return out


def warmup_linear(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        return max(0.0, (total - step) / (total - warmup))

    return factor


def _forever(loader: DataLoader, start_epoch: int = 0) -> Iterator[tuple[int, dict]]:
    epoch = start_epoch
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield epoch, batch
        if n == 0:
            raise ValueError("the training data loader yielded no batch (data set smaller than one batch?)")
        epoch += 1


def fit(
    model: nn.Module,
    task: Task,
    train_loader: DataLoader,
    cfg: TrainConfig,
    output_dir: str | Path,
    save_fn: Callable[[nn.Module, Path], None],
    accelerator: Accelerator | None = None,
    console: Console | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    select_metric: str | None = None,
    select_mode: str = "max",
) -> TrainResult:
    """Train ``model`` on ``task`` for ``cfg.max_steps`` optimiser steps, then save.

    Every ``cfg.log_every`` steps the running means of the task's metrics are appended to
    ``output_dir/metrics.jsonl`` and printed; ``save_fn(unwrapped_model, dir)`` writes the
    checkpoint at the end (and every ``cfg.save_every`` steps into ``step-N/``).

    Model selection: with ``evaluate`` (a function of the unwrapped model returning
    validation metrics; never the test split) the model is validated every
    ``cfg.eval_every`` steps and at the end, ``output_dir`` holds the checkpoint with the
    best ``select_metric`` (``select_mode`` max or min), ``selection.json`` records it, and
    ``cfg.early_stopping_patience`` validations without improvement stop training.
    """
    output_dir = Path(output_dir)
    accelerator = accelerator or make_accelerator(cfg)
    console = console or Console()
    set_seed(cfg.seed)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(cfg.warmup_steps, cfg.max_steps))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / METRICS_LOG
    result = TrainResult(steps=0, wall_time=0.0)
    start = time.perf_counter()

    if evaluate is not None and select_metric is None:
        raise ValueError("model selection needs select_metric")
    if cfg.max_steps == 0:
        if main:
            save_fn(accelerator.unwrap_model(model), output_dir)
        accelerator.wait_for_everyone()
        return result

    sums: dict[str, float] = defaultdict(float)
    count = 0
    step = 0
    sign = 1.0 if select_mode == "max" else -1.0
    best: dict[str, Any] = {"value": -math.inf, "step": None, "evaluations": []}  # value is sign * metric
    stale = 0

    def validate() -> bool:
        """Run ``evaluate``; save on improvement; return True when patience is exhausted."""
        nonlocal stale
        metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        value = sign * metrics[select_metric]
        best["evaluations"].append({"step": step, **metrics})
        if main:
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, "split": "validate", **metrics}) + "\n")
            console.print(f"validate step {step}: {select_metric} {sign * value:.4f} "
                          f"(best {sign * max(best['value'], value):.4f})")
        if value > best["value"]:
            best.update(value=value, step=step)
            stale = 0
            accelerator.wait_for_everyone()
            if main:
                save_fn(accelerator.unwrap_model(model), output_dir)
        else:
            stale += 1
        return bool(cfg.early_stopping_patience and stale >= cfg.early_stopping_patience)

    model.train()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not (main and cfg.progress),
        transient=False,
    )
    with progress:
        bar = progress.add_task(getattr(task, "name", "train"), total=cfg.max_steps, info="")
        data = _forever(train_loader)
        while step < cfg.max_steps:
            epoch, batch = next(data)
            with accelerator.accumulate(model):
                out = task.training_step(model, batch, step)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"loss is {out.loss.item()} at step {step}; lower train.lr or check the data")
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in {"loss": out.loss.item(), **out.metrics}.items():
                sums[k] += v
            count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                entry = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                         "elapsed_s": round(time.perf_counter() - start, 3)}
                entry.update({k: v / count for k, v in sums.items()})
                entry = _gather_means(accelerator, entry)
                sums.clear()
                count = 0
                result.history.append(entry)
                if main:
                    with log_path.open("a") as fh:
                        fh.write(json.dumps(entry) + "\n")
                    info = "  ".join(f"{k} {entry[k]:.4f}" for k in entry if k.endswith("loss"))
                    progress.update(bar, info=info)
                    if not cfg.progress or not console.is_terminal:
                        console.print(f"step {step:>6}/{cfg.max_steps}  {info}  lr {entry['lr']:.2e}")
            progress.advance(bar)
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                if validate():
                    console.print(f"early stopping at step {step}: no improvement in "
                                  f"{cfg.early_stopping_patience} validations")
                    break
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                accelerator.wait_for_everyone()
                if main:
                    save_fn(accelerator.unwrap_model(model), output_dir / f"step-{step}")
    accelerator.wait_for_everyone()
    if evaluate is None:
        if main:
            save_fn(accelerator.unwrap_model(model), output_dir)
    else:
        if not best["evaluations"] or best["evaluations"][-1]["step"] != step:
            validate()
        result.selection = {"metric": select_metric, "mode": select_mode, "best": sign * best["value"],
                            "best_step": best["step"],
                            "evaluations": best["evaluations"]}
        if main:
            (output_dir / "selection.json").write_text(json.dumps(result.selection, indent=2) + "\n")
    result.steps = step
    result.wall_time = time.perf_counter() - start
    return result


def _gather_means(accelerator: Accelerator, entry: dict[str, Any]) -> dict[str, Any]:
    """Average the logged metrics over processes (each process logs its own shard)."""
    if accelerator.num_processes == 1:
        return entry
    keys = [k for k, v in entry.items() if isinstance(v, float) and k not in ("lr", "elapsed_s")]
    vals = torch.tensor([entry[k] for k in keys], device=accelerator.device, dtype=torch.float64)
    vals = accelerator.reduce(vals, reduction="mean")
    out = dict(entry)
    out.update({k: float(v) for k, v in zip(keys, vals.tolist(), strict=True)})
    out = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in out.items()}
    return out
