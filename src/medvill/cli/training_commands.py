"""Commands that train and score models: ``pretrain``, ``finetune``, ``evaluate``, ``compare``, ``demo``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import ConfigError, MaskScheme, load_config
from .app import app, console
from .options import (
    ConfigOpt,
    DatasetOpt,
    OverwriteOpt,
    PresetOpt,
    ResumeOpt,
    RootOpt,
    SetOpt,
    claim_output,
    cli_overrides,
    fail,
    setup_logging,
)


@app.command()
def pretrain(
    output: Annotated[Path, typer.Option("--output", help="checkpoint folder")],
    dataset: DatasetOpt = None,
    root: RootOpt = None,
    preset: PresetOpt = "base",
    mask: Annotated[MaskScheme | None, typer.Option("--mask", help="attention mask scheme")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps",
                                                  help="optimiser steps (0 writes the initial model)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Pre-train MedViLL with MLM + image-report matching."""
    from ..recipes.pretrain import run_pretraining

    setup_logging()
    extra = cli_overrides(dataset, root, max_steps, pretrain={"mask": mask.value} if mask else {},
                          train={"resume": resume} if resume else {})
    try:
        cfg = load_config(preset, config, set_ or [], extra)
        claim_output(output, overwrite=overwrite, resume=resume is not None)
        run = run_pretraining(cfg, output, console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise fail(exc) from None
    _print_losses(run.result.history)
    console.print(f"checkpoint: {output}")


@app.command()
def finetune(
    task: Annotated[str, typer.Argument(help="classification | retrieval | vqa | generation")],
    output: Annotated[Path, typer.Option("--output", help="checkpoint folder (the model best on validation)")],
    init: Annotated[str, typer.Option("--init", help="pre-training checkpoint folder, 'scratch' (Fine-tuning Only), "
                                      "or a baseline: 'cnn-transformer' (classification, retrieval, vqa) or "
                                      "'tienet' (classification, generation)")] = "scratch",
    dataset: DatasetOpt = None,
    root: RootOpt = None,
    preset: PresetOpt = "base",
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune a downstream task (MedViLL or a baseline); the model is selected on the validation split."""
    from ..recipes.finetune import run_finetuning

    setup_logging()
    extra = cli_overrides(dataset, root, max_steps, train={"resume": resume} if resume else {})
    try:
        cfg = load_config(preset, config, set_ or [], extra)
        claim_output(output, overwrite=overwrite, resume=resume is not None)
        run = run_finetuning(task, cfg, init, output, console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise fail(exc) from None
    sel = run.result.selection or {}
    console.print(f"best validation {sel.get('metric')}: {sel.get('best'):.4f} at step {sel.get('best_step')}; "
                  f"checkpoint: {output}")


@app.command()
def evaluate(
    task: Annotated[str, typer.Argument(help="classification | retrieval | vqa | generation")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="fine-tuned checkpoint folder")],
    output: Annotated[Path, typer.Option("--output", help="folder for metrics.json")],
    dataset: DatasetOpt = None,
    root: RootOpt = None,
    split: Annotated[str, typer.Option("--split")] = "test",
    n_bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples (paper: 30)")] = 30,
    preset: PresetOpt = "base",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score a checkpoint with the paper's protocol: mean (std) over bootstrap resamples."""
    from ..recipes.evaluate import run_evaluation

    setup_logging()
    extra = cli_overrides(dataset, root)
    try:
        cfg = load_config(preset, config, set_ or [], extra)
        claim_output(output, overwrite=overwrite, evaluation=True)
        metrics = run_evaluation(task, checkpoint, cfg, split=split, n_bootstrap=n_bootstrap, console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise fail(exc) from None
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = Table(title=f"{task} on {cfg.data.dataset} {split} ({n_bootstrap} bootstrap resamples)")
    for col in ("metric", "mean", "std"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in metrics.items():
        table.add_row(name, f"{m['mean']:.4f}", f"{m['std']:.4f}")
    console.print(table)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="evaluation folders (metrics.json), optionally name=folder")],
    output: Annotated[Path, typer.Option("--output", help="folder for results.md / .csv / .json")],
    reference: Annotated[str | None, typer.Option("--reference", help="row to test the others against")] = None,
) -> None:
    """Paper-style table: mean (std) per model and metric, t-test p-values against a reference."""
    from ..recipes.compare import compare_runs

    try:
        table = compare_runs(runs, reference)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(exc) from None
    table.write(output)
    console.print(table.to_markdown())
    console.print(f"written: {output}/results.md, results.csv, results.json")


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", help="where results and checkpoints go")] = Path("demo-output"),
    preset: PresetOpt = "small",
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="pre-training steps per mask scheme")] = None,
    n: Annotated[int | None, typer.Option("--n", help="synthetic pairs (default: the preset's)")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples of the test split")] = 30,
    full: Annotated[bool, typer.Option("--full", help="every mask scheme and the CNN&Transformer and TieNet "
                                                      "baselines (the paper's whole comparison; about 50 minutes "
                                                      "on 2 cores)")] = False,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="models trained at once, each in its "
                                                "own process (default: one per CPU, at most 4)")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline on synthetic data: pre-train (BAR), fine-tune the 4 tasks from it and from scratch, tables."""
    from ..recipes.demo import WorkerDiedError, run_demo

    setup_logging()
    try:
        cfg = load_config(preset, None, set_ or [], cli_overrides(data={"synthetic_n": n} if n is not None else {}))
    except ConfigError as exc:
        raise fail(exc) from None
    os.environ.setdefault("MEDVILL_CACHE", str(output / "cache"))
    output.mkdir(parents=True, exist_ok=True)
    try:
        result = run_demo(cfg, output, full=full, n_bootstrap=bootstrap, pretrain_steps=max_steps, console=console,
                          workers=workers)
    except (ConfigError, FileNotFoundError, ValueError, WorkerDiedError) as exc:
        raise fail(exc) from None
    for mask, hist in result.pretrain.items():
        console.print(f"[bold]pre-training {mask}[/bold]")
        _print_losses(hist)
    console.print(f"demo finished in {result.timings['total_s']:.0f} s; tables in {output / 'results.md'}, "
                  f"results.csv, results.json")


def _print_losses(history: list[dict[str, Any]]) -> None:
    if not history:
        return
    first, last = history[0], history[-1]
    table = Table(title="pre-training: first vs last logged interval")
    table.add_column("metric")
    table.add_column(f"step {first['step']}", justify="right")
    table.add_column(f"step {last['step']}", justify="right")
    for key in ("loss", "mlm_loss", "irm_loss", "mlm_acc", "irm_acc"):
        if key in first:
            table.add_row(key, f"{first[key]:.4f}", f"{last[key]:.4f}")
    console.print(table)
