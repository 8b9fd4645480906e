"""ONE training loop for every task, built on Accelerate.

The loop knows nothing about tasks: a task turns a batch into a :class:`StepOutput`.
The same code runs on one CPU, one GPU, or several processes under ``accelerate launch``
(each process draws its own batches of one seeded order, gradients are averaged by the
prepared model, logged metrics are averaged over processes, validation metrics are computed
from every process's share, and only the main process writes files).  Optimiser: AdamW with
separate learning rates for the CNN backbone and the rest, no weight decay on biases and
LayerNorm weights, linear warm-up then linear decay (one scheduler step per optimiser step,
whatever the number of processes), gradient clipping.

``train.batch_size`` is per process: the global batch of one optimiser step is
``batch_size x processes x grad_accum``.  Mixed precision (``train.mixed_precision``) is
Accelerate's autocast; memory options are in :mod:`medvill.train.memory`; training-state
checkpoints and exact resume (``train.checkpoint_every``, ``train.resume``) in
:mod:`medvill.train.checkpoint`; experiment trackers (``train.report_to``: TensorBoard, W&B,
MLflow, fed every ``metrics.jsonl`` line) in :mod:`medvill.train.tracking`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, PartialState, is_initialized
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, broadcast_object_list, set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint_files import METRICS_LOG, SELECTION, TRACKING_DIR
from ..config import ConfigError, RunConfig, TrainConfig
from ..fileio import atomic_write_text
from ..tasks.base import Task
from .checkpoint import (
    LoopState,
    checkpoint_root,
    find_resume_checkpoint,
    load_training_state,
    save_training_state,
    set_rng_state,
)
from .memory import apply_memory_options
from .tracking import RunTrackers, check_available


@dataclass
class TrainResult:
    steps: int
    wall_time: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per log interval
    selection: dict[str, Any] | None = None  # model selection on the validation split
    validation: list[dict[str, Any]] = field(default_factory=list)  # every validation: step + metrics
    resumed_from: str | None = None  # the training-state checkpoint this run continued

    def first(self, key: str) -> float | None:
        vals = [h[key] for h in self.history if key in h]
        return vals[0] if vals else None

    def last(self, key: str) -> float | None:
        vals = [h[key] for h in self.history if key in h]
        return vals[-1] if vals else None


def make_accelerator(cfg: TrainConfig, output_dir: str | Path | None = None) -> Accelerator:
    """An Accelerator for ``cfg``.  The data order comes from Accelerate's seedable sampler
    (a function of ``train.seed`` and the epoch), which exact resume relies on.  Under several
    processes DDP looks for parameters without a gradient in each step: some tasks leave heads
    unused (report generation trains no matching head; a pre-training batch on one process may
    hold no masked token), which plain DDP would reject.  The trackers of ``train.report_to``
    (``log_with``) write under ``output_dir/tracking`` (:mod:`medvill.train.tracking`)."""
    if is_initialized() and PartialState().num_processes == 1:
        # one process may train several models (the demo, tests) with other precision settings
        AcceleratorState._reset_state()
    project = None
    if output_dir is not None:
        project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / TRACKING_DIR))
    return Accelerator(
        cpu=cfg.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=list(cfg.trackers) or None,
        project_config=project,
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



def _batches(loader: DataLoader, epoch: int = 0, skip: int = 0,
             skip_first: Callable[[DataLoader, int], DataLoader] | None = None) -> Iterator[tuple[int, int, dict]]:
    """``(epoch, batches consumed in that epoch, batch)`` forever, starting ``skip`` batches
    into ``epoch`` (a resumed run; ``skip_first`` is Accelerate's ``skip_first_batches``)."""
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        source = skip_first(loader, skip) if skip and skip_first is not None else loader
        n = skip
        for batch in source:
            n += 1
            yield epoch, n, batch
        if n == 0:
            raise ValueError("the training data loader yielded no batch (data set smaller than one batch?)")
        epoch += 1
        skip = 0


@contextlib.contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the duration (restored afterwards)."""
    if not on:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


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
    run_config: RunConfig | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` for ``cfg.max_steps`` optimiser steps, then save.

    Every ``cfg.log_every`` steps the running means of the task's metrics are appended to
    ``output_dir/metrics.jsonl`` and printed; ``save_fn(unwrapped_model, dir)`` writes the
    checkpoint at the end (and every ``cfg.save_every`` steps into ``step-N/``).

    Model selection: with ``evaluate`` (a function of the unwrapped model returning
    validation metrics; never the test split) the model is validated every
    ``cfg.eval_every`` steps and at the end, ``output_dir`` holds the checkpoint with the
    best ``select_metric`` (``select_mode`` max or min), ``selection.json`` records it, and
    ``cfg.early_stopping_patience`` validations without improvement stop training.  Without
    ``select_metric`` the validation metrics are only logged (pre-training: its curves) and
    the model of the last step is saved.  Under
    several processes ``evaluate`` runs on every process and the main process's metrics
    decide, so every process takes the same decision.

    Long runs: every ``cfg.checkpoint_every`` steps the whole training state goes into
    ``output_dir/checkpoints/step-N``; ``cfg.resume`` (``auto`` or a folder) continues from
    one, with the same batches, random numbers and log as if the run had not stopped.

    Trackers: ``cfg.report_to`` names experiment trackers (:mod:`medvill.train.tracking`) that
    receive every ``metrics.jsonl`` line and, once, ``run_config`` (the whole resolved run
    configuration; without it, the ``train`` section).  A missing tracker package is a
    :class:`~medvill.config.ConfigError` before any work; an ``accelerator`` passed in must then
    come from :func:`make_accelerator` with ``output_dir``.
    """
    if select_mode not in ("max", "min"):
        raise ValueError(f"select_mode must be max or min, not {select_mode!r}")
    check_available(cfg.trackers)
    if accelerator is not None and cfg.trackers and not accelerator.log_with:
        raise ValueError("train.report_to names trackers, but the accelerator passed to fit() has none: "
                         "create it with make_accelerator(cfg, output_dir)")
    with deterministic_mode(cfg.deterministic):
        run = _Run(model, task, train_loader, cfg, Path(output_dir), save_fn,
                   accelerator or make_accelerator(cfg, output_dir), console or Console(), evaluate, select_metric,
                   select_mode, run_config)
        try:
            return run.train()
        finally:
            run.trackers.finish()


class _Run:
    """One call of :func:`fit`: the prepared objects and the loop state."""

    def __init__(self, model: nn.Module, task: Task, loader: DataLoader, cfg: TrainConfig, output_dir: Path,
                 save_fn: Callable[[nn.Module, Path], None], accelerator: Accelerator, console: Console,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None, select_metric: str | None,
                 select_mode: str, run_config: RunConfig | None = None):
        self.task, self.cfg, self.output_dir, self.save_fn = task, cfg, output_dir, save_fn
        self.acc, self.console, self.evaluate, self.select_metric = accelerator, console, evaluate, select_metric
        self.select_mode = select_mode
        self.sign = 1.0 if select_mode == "max" else -1.0
        self.main = accelerator.is_main_process
        set_seed(cfg.seed)
        model = apply_memory_options(model, cfg, accelerator.num_processes, accelerator.device.type)
        # the fused kernel: the unfused step was the largest single item of the base configuration's
        # bf16 step on an H200, and 8 % of the small preset's VQA step on the CPU (BENCHMARKS.md)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr,
                                      fused=True if accelerator.device.type in ("cuda", "cpu") else None)
        # not prepared: Accelerate would step a prepared scheduler once per process at every call
        # (num_processes steps per optimiser step); the schedule counts optimiser steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(cfg.warmup_steps, cfg.max_steps))
        self.lr_groups = _lr_groups(optimizer)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.state = LoopState()
        self.resumed_from: Path | None = None
        self.rng: dict[str, Any] | None = None
        if cfg.resume:
            self._resume(cfg.resume)
        self.log_path = output_dir / METRICS_LOG
        if self.main:
            output_dir.mkdir(parents=True, exist_ok=True)
            # the log as of the checkpoint (a fresh run starts an empty one): no step twice
            atomic_write_text(self.log_path, "".join(json.dumps(e) + "\n" for e in self.state.log))
        # after the resume: a resumed run logs from the checkpoint's next step on
        self.trackers = RunTrackers(accelerator, cfg.trackers)
        if cfg.trackers:
            config = run_config.to_dict() if run_config is not None else {"train": dataclasses.asdict(cfg)}
            text = run_config.to_yaml() if run_config is not None else ""
            self.trackers.start(output_dir, config, first_step=self.state.step + 1, config_text=text)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ resume

    def _resume(self, resume: str) -> None:
        cfg, acc = self.cfg, self.acc
        found: list[Any] = [None, None]  # checkpoint path, error message
        if self.main:
            try:
                path = find_resume_checkpoint(self.output_dir, resume, say=self.console.print)
                found[0] = str(path) if path is not None else None
            except ConfigError as exc:
                found[1] = str(exc)
        if acc.num_processes > 1:
            found = broadcast_object_list(found)
        if found[1] is not None:
            raise ConfigError(found[1])
        if found[0] is None:
            self._say(f"resume: no complete checkpoint in {checkpoint_root(self.output_dir)}; starting at step 0")
            return
        self.resumed_from = Path(found[0])
        self.state, self.rng = load_training_state(self.resumed_from, cfg, acc, self.model, self.optimizer,
                                                   self.scheduler)
        acc.step = self.state.micro_step
        st = self.state
        self._say(f"resuming from {self.resumed_from}: step {st.step}, epoch {st.epoch} "
                  f"(+{st.batches_in_epoch} batches)")

    # ------------------------------------------------------------------ helpers

    def _say(self, text: str) -> None:
        if self.main:
            self.console.print(text)

    def _write_log(self, entry: dict[str, Any]) -> None:
        self.state.log.append(entry)
        if self.main:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            self.trackers.log(entry)  # the same line, the same step

    def _elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.start

    def _save_model(self, directory: Path) -> None:
        self.acc.wait_for_everyone()
        if self.main:
            self.save_fn(self.acc.unwrap_model(self.model), directory)
        self.acc.wait_for_everyone()

    def _validate(self) -> bool:
        """Run ``evaluate``; save on improvement; return True when patience is exhausted."""
        st, acc = self.state, self.acc
        assert self.evaluate is not None  # called only when fit() was given an evaluate function
        metrics = self.evaluate(acc.unwrap_model(self.model))
        self.model.train()
        if acc.num_processes > 1:  # one decision for every process
            metrics = broadcast_object_list([metrics])[0]
        st.evaluations.append({"step": st.step, **metrics})
        self._write_log({"step": st.step, "split": "validate", **metrics})
        if self.select_metric is None:  # curves only
            self._say(f"validate step {st.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                              if isinstance(v, float)))
            return False
        value = self.sign * metrics[self.select_metric]
        best = st.best_value if st.best_value is not None else -math.inf
        self._say(f"validate step {st.step}: {self.select_metric} {self.sign * value:.4f} "
                  f"(best {self.sign * max(best, value):.4f})")
        if value > best:
            st.best_value, st.best_step, st.stale = value, st.step, 0
            self._save_model(self.output_dir)
        else:
            st.stale += 1
        return bool(self.cfg.early_stopping_patience and st.stale >= self.cfg.early_stopping_patience)

    def _checkpoint(self) -> None:
        snapshot = dataclasses.replace(self.state, micro_step=self.acc.step, elapsed_s=self._elapsed())
        path = save_training_state(checkpoint_root(self.output_dir), snapshot, self.cfg, self.acc, self.model,
                                   self.optimizer, self.scheduler, keep=self.cfg.keep_checkpoints)
        if not (self.cfg.progress and self.console.is_terminal):
            self._say(f"training state saved: {path}")

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        cfg, acc, st, model = self.cfg, self.acc, self.state, self.model
        self.start = time.perf_counter()
        if cfg.max_steps == 0:
            self._save_model(self.output_dir)
            return TrainResult(steps=0, wall_time=0.0)
        if self.resumed_from is not None and cfg.max_steps != self._saved_max_steps():
            self._say(f"note: train.max_steps is {cfg.max_steps}, the checkpoint's run had "
                      f"{self._saved_max_steps()}; the learning-rate schedule follows the new value")
        model.train()
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
            disable=not (self.main and cfg.progress), transient=False,
        )
        data = _batches(self.loader, st.epoch, st.batches_in_epoch, acc.skip_first_batches)
        if self.rng is not None:
            set_rng_state(self.rng)  # exactly where the checkpointed run was
        stopped = False
        with progress:
            bar = progress.add_task(getattr(self.task, "name", "train"), total=cfg.max_steps, completed=st.step,
                                    info="")
            while st.step < cfg.max_steps:
                epoch, consumed, batch = next(data)
                with acc.accumulate(model):
                    out = self.task.training_step(model, batch, st.step)
                    if not torch.isfinite(out.loss):
                        raise FloatingPointError(f"loss is {out.loss.item()} at step {st.step}; lower train.lr "
                                                 "or check the data")
                    acc.backward(out.loss)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    self.optimizer.step()  # a no-op between accumulation boundaries
                    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                st.epoch, st.batches_in_epoch = epoch, consumed
                for k, v in {"loss": out.loss.item(), **out.metrics}.items():
                    st.sums[k] = st.sums.get(k, 0.0) + v
                st.count += 1
                if not acc.sync_gradients:
                    continue
                st.step += 1
                if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                    self._log_train(progress, bar)
                progress.advance(bar)
                if (self.evaluate is not None and cfg.eval_every and st.step % cfg.eval_every == 0
                        and st.step < cfg.max_steps):
                    stopped = self._validate()
                if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.max_steps:
                    self._save_model(self.output_dir / f"step-{st.step}")
                if stopped:
                    self._say(f"early stopping at step {st.step}: no improvement in "
                              f"{cfg.early_stopping_patience} validations")
                    break
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < cfg.max_steps:
                    self._checkpoint()
        result = TrainResult(steps=st.step, wall_time=time.perf_counter() - self.start,
                             resumed_from=str(self.resumed_from) if self.resumed_from else None)
        if self.evaluate is not None and (not st.evaluations or st.evaluations[-1]["step"] != st.step):
            self._validate()
        result.validation = list(st.evaluations)
        if self.evaluate is None or self.select_metric is None:
            self._save_model(self.output_dir)
        else:
            best = st.best_value if st.best_value is not None else -math.inf
            result.selection = {"metric": self.select_metric, "mode": self.select_mode, "best": self.sign * best,
                                "best_step": st.best_step, "evaluations": st.evaluations}
            if self.main:
                atomic_write_text(self.output_dir / SELECTION, json.dumps(result.selection, indent=2) + "\n")
            acc.wait_for_everyone()
        result.history = st.history
        return result

    def _saved_max_steps(self) -> int | None:
        meta = json.loads((self.resumed_from / "trainer_state.json").read_text()) if self.resumed_from else {}
        return meta.get("max_steps")

    def _log_train(self, progress: Progress, bar: Any) -> None:
        st, cfg = self.state, self.cfg
        lrs = self.scheduler.get_last_lr()
        entry: dict[str, Any] = {"step": st.step, "epoch": st.epoch, "lr": lrs[self.lr_groups.get("transformer", 0)]}
        if len(self.lr_groups) > 1:  # the CNN backbone's own rate (train.backbone_lr) beside the rest
            entry.update({f"lr/{name}": lrs[i] for name, i in self.lr_groups.items()})
        entry["elapsed_s"] = round(self._elapsed(), 3)
        entry.update({k: v / st.count for k, v in st.sums.items()})
        entry = _gather_means(self.acc, entry)
        st.sums.clear()
        st.count = 0
        self._write_log(entry)
        if self.main:
            info = "  ".join(f"{k} {entry[k]:.4f}" for k in entry if k.endswith("loss"))
            progress.update(bar, info=info)
            if not cfg.progress or not self.console.is_terminal:
                self.console.print(f"step {st.step:>6}/{cfg.max_steps}  {info}  lr {entry['lr']:.2e}")


def _lr_groups(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """``{kind: index of its first param group}`` for the kinds of :func:`param_groups`
    (``backbone``, ``transformer``; the no-decay halves share their rate)."""
    out: dict[str, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        out.setdefault(str(group.get("name", "transformer")).removesuffix("_no_decay"), i)
    return out


def _gather_means(accelerator: Accelerator, entry: dict[str, Any]) -> dict[str, Any]:
    """Average the logged metrics over processes (each process logs its own shard)."""
    if accelerator.num_processes == 1:
        return entry
    keys = [k for k, v in entry.items()
            if isinstance(v, float) and k not in ("lr", "elapsed_s") and not k.startswith("lr/")]
    vals = torch.tensor([entry[k] for k in keys], device=accelerator.device, dtype=torch.float64)
    vals = accelerator.reduce(vals, reduction="mean")
    out = dict(entry)
    out.update({k: float(v) for k, v in zip(keys, vals.tolist(), strict=True)})
    out = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in out.items()}
    return out
