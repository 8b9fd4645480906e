"""The ``medvill`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, MaskScheme, load_config

if TYPE_CHECKING:
    from .data.records import Record
    from .inference import Pipeline

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="MedViLL: vision-language pre-training for chest X-rays and reports.")
console = Console()

DatasetOpt = Annotated[str, typer.Option("--dataset", help="synthetic (built-in) | mimic | openi | jsonl | vqa_rad")]
RootOpt = Annotated[Path | None, typer.Option("--root", help="data set folder; synthetic without a root generates "
                                               "into a cache")]
PresetOpt = Annotated[str, typer.Option("--preset", help="tiny | small | base (the paper)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML run config")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: section.key=value "
                                                  "(repeatable)")]
ResumeOpt = Annotated[str | None, typer.Option("--resume", help="continue a stopped run: 'auto' (newest complete "
                                               "training state in OUTPUT/checkpoints) or a checkpoint folder")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace the run already in --output (its files "
                                            "are removed first); without it such a folder is refused")]


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("MEDVILL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun: the main process reports
        console.quiet = True
        logging.getLogger().setLevel(logging.WARNING)


def _cli_overrides(dataset: str | None = None, root: Path | None = None, max_steps: int | None = None,
                   **sections: dict[str, Any]) -> dict[str, Any]:
    """Config values given as command-line flags (applied after the YAML, before --set)."""
    extra: dict[str, Any] = {k: v for k, v in sections.items() if v}
    if dataset is not None:
        extra.setdefault("data", {})["dataset"] = dataset
    if root is not None:
        extra.setdefault("data", {})["root"] = str(root)
    if max_steps is not None:
        extra.setdefault("train", {})["max_steps"] = max_steps
    return extra


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {exc}")
    return typer.Exit(code=2)


def _claim_output(output: Path, **kwargs: bool) -> None:
    """Refuse (before any work) an --output that is a file or holds another run."""
    from .recipes.output import OutputExistsError, claim_output

    try:
        claim_output(output, **kwargs)
    except OutputExistsError as exc:
        raise _fail(exc) from None


@app.command()
def synth(
    output: Annotated[Path, typer.Option("--output", help="folder to create")],
    n: Annotated[int, typer.Option("--n", help="number of image-report pairs")] = 2000,
    image_size: Annotated[int, typer.Option("--image-size", help="pixels per side")] = 128,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write the built-in synthetic chest X-ray data set (PNG + JSONL + VQA JSON)."""
    from .data.synthetic import generate_synthetic

    start = time.perf_counter()
    try:
        summary = generate_synthetic(output, n=n, image_size=image_size, seed=seed)
    except (FileExistsError, ValueError) as exc:
        raise _fail(exc) from None
    console.print(f"wrote {summary.n} cases to {summary.root} in {time.perf_counter() - start:.1f} s: {summary.counts}")


@app.command()
def pretrain(
    output: Annotated[Path, typer.Option("--output", help="checkpoint folder")],
    dataset: DatasetOpt = "synthetic",
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
    from .recipes.pretrain import run_pretraining

    _setup_logging()
    extra = _cli_overrides(dataset, root, max_steps, pretrain={"mask": mask.value} if mask else {},
                           train={"resume": resume} if resume else {})
    try:
        cfg = load_config(preset, config, set_ or [], extra)
        _claim_output(output, overwrite=overwrite, resume=resume is not None)
        run = run_pretraining(cfg, output, console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    _print_losses(run.result.history)
    console.print(f"checkpoint: {output}")


@app.command()
def finetune(
    task: Annotated[str, typer.Argument(help="classification | retrieval | vqa | generation")],
    output: Annotated[Path, typer.Option("--output", help="checkpoint folder (the model best on validation)")],
    init: Annotated[str, typer.Option("--init", help="pre-training checkpoint folder, 'scratch' (Fine-tuning Only), "
                                      "or a baseline: 'cnn-transformer' (classification, retrieval, vqa) or "
                                      "'tienet' (classification, generation)")] = "scratch",
    dataset: DatasetOpt = "synthetic",
    root: RootOpt = None,
    preset: PresetOpt = "base",
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune a downstream task (MedViLL or a baseline); the model is selected on the validation split."""
    from .recipes.finetune import run_finetuning

    _setup_logging()
    extra = _cli_overrides(dataset, root, max_steps, train={"resume": resume} if resume else {})
    try:
        cfg = load_config(preset, config, set_ or [], extra)
        _claim_output(output, overwrite=overwrite, resume=resume is not None)
        run = run_finetuning(task, cfg, init, output, console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    sel = run.result.selection or {}
    console.print(f"best validation {sel.get('metric')}: {sel.get('best'):.4f} at step {sel.get('best_step')}; "
                  f"checkpoint: {output}")


@app.command()
def evaluate(
    task: Annotated[str, typer.Argument(help="classification | retrieval | vqa | generation")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="fine-tuned checkpoint folder")],
    output: Annotated[Path, typer.Option("--output", help="folder for metrics.json")],
    dataset: DatasetOpt = "synthetic",
    root: RootOpt = None,
    split: Annotated[str, typer.Option("--split")] = "test",
    n_bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples (paper: 30)")] = 30,
    preset: PresetOpt = "base",
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score a checkpoint with the paper's protocol: mean (std) over bootstrap resamples."""
    from .recipes.evaluate import run_evaluation

    _setup_logging()
    extra = _cli_overrides(dataset, root)
    try:
        cfg = load_config(preset, None, set_ or [], extra)
        _claim_output(output, overwrite=overwrite, evaluation=True)
        metrics = run_evaluation(task, checkpoint, cfg, split=split, n_bootstrap=n_bootstrap)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = Table(title=f"{task} on {dataset} {split} ({n_bootstrap} bootstrap resamples)")
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
    from .recipes.compare import compare_runs

    try:
        table = compare_runs(runs, reference)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    table.write(output)
    console.print(table.to_markdown())
    console.print(f"written: {output}/results.md, results.csv, results.json")


@app.command()
def prepare(
    output: Annotated[Path, typer.Option("--output", help="cache folder to write (resumable)")],
    dataset: DatasetOpt = "synthetic",
    root: RootOpt = None,
    image_size: Annotated[int, typer.Option("--image-size", help="side of the cached images (paper: 512)")] = 512,
    workers: Annotated[int | None, typer.Option("--workers", help="processes (default: all CPUs)")] = None,
    policy: Annotated[str, typer.Option("--policy", help="skip | error: what a bad image or row does")] = "skip",
    window: Annotated[str, typer.Option("--window", help="DICOM VOI handling: auto | none")] = "auto",
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="cut uniform margins (paper: yes)")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a cache made with other settings")] = False,
) -> None:
    """Crop, resize and cache a data set's images once; training then reads the cache (--root CACHE)."""
    from .data.prepare import prepare_cache
    from .data.records import SkipReport
    from .data.registry import SPLITS, load_records
    from .data.transforms import Preprocess

    _setup_logging()
    try:
        if dataset == "vqa_rad":
            raise ValueError("prepare reads image-report data sets (synthetic, mimic, openi, jsonl); VQA-RAD's "
                             "315 images are read directly")
        skips = SkipReport(f"{dataset} at {root}")
        records = [r for split in SPLITS for r in load_records(dataset, root, split, image_size=image_size,
                                                                  policy=policy, skips=skips)]
        summary = prepare_cache(records, output, Preprocess(image_size=image_size, crop_margins=crop, window=window),
                                workers=workers, policy=policy, overwrite=overwrite, source=f"{dataset} at {root}",
                                loader_skips=skips)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    console.print(summary.describe())


@app.command()
def label(
    input: Annotated[Path, typer.Argument(help="CSV with a report column, a .txt file or folder of them, or JSONL")],
    output: Annotated[Path, typer.Option("--output", help="CSV to write (CheXpert layout: 1 / 0 / -1 / blank)")],
    text_column: Annotated[str | None, typer.Option("--text-column", help="report column of a CSV")] = None,
) -> None:
    """Label reports with the 14 CheXpert observations (pure-Python CheXpert labeler)."""
    from .labeler.io import label_file

    try:
        summary = label_file(input, output, text_column=text_column)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    rate = summary.n / summary.seconds if summary.seconds else float("inf")
    console.print(f"labelled {summary.n} reports ({summary.empty} empty) in {summary.seconds:.2f} s "
                  f"({rate:.0f} reports/s) -> {output}")


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
    from .recipes.demo import WorkerDiedError, run_demo

    _setup_logging()
    try:
        cfg = load_config(preset, None, set_ or [], _cli_overrides(data={"synthetic_n": n} if n is not None else {}))
    except ConfigError as exc:
        raise _fail(exc) from None
    os.environ.setdefault("MEDVILL_CACHE", str(output / "cache"))
    output.mkdir(parents=True, exist_ok=True)
    try:
        result = run_demo(cfg, output, full=full, n_bootstrap=bootstrap, pretrain_steps=max_steps, console=console,
                          workers=workers)
    except (ConfigError, FileNotFoundError, ValueError, WorkerDiedError) as exc:
        raise _fail(exc) from None
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


CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="fine-tuned checkpoint folder, or a folder holding "
                                             "several (a medvill demo output)")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="which model's checkpoints where a folder holds several "
                                              "(default MedViLL-BAR)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")]


def _pipeline(checkpoint: Path, model: str | None, device: str | None) -> Pipeline:
    from .inference import Pipeline

    return Pipeline.from_pretrained(checkpoint, model=model, device=device)


@app.command()
def generate(
    images: Annotated[list[Path], typer.Argument(help="X-ray image files (PNG, JPEG, DICOM, 16-bit PNG/TIFF)")],
    checkpoint: CheckpointOpt,
    model: ModelOpt = None,
    beams: Annotated[int, typer.Option("--beams", help="beam width (1 = greedy)")] = 1,
    max_length: Annotated[int | None, typer.Option("--max-length",
                                                   help="report tokens (default: the model's limit)")] = None,
    no_repeat_ngram: Annotated[int, typer.Option("--no-repeat-ngram",
                                                 help="forbid repeating n-grams of this size")] = 0,
    output: Annotated[Path | None, typer.Option("--output", help="also write JSONL: {image, report} per line")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    device: DeviceOpt = None,
) -> None:
    """Generate a report for each image with a fine-tuned generation checkpoint (free-running decoding)."""
    from .inference import MissingTaskError, Pipeline

    _setup_logging()
    try:
        pipe = Pipeline.from_pretrained(checkpoint, model=model, device=device, batch_size=batch_size)
        reports = pipe.generate([str(p) for p in images], num_beams=beams, max_length=max_length,
                                no_repeat_ngram_size=no_repeat_ngram)
    except (ConfigError, FileNotFoundError, ValueError, MissingTaskError) as exc:
        raise _fail(exc) from None
    for path, report in zip(images, reports, strict=True):
        console.print(f"[bold]{path}[/bold]\n{report}\n", highlight=False)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps({"image": str(p), "report": r}) + "\n"
                                  for p, r in zip(images, reports, strict=True)))
        console.print(f"written: {output}")


@app.command()
def serve(
    checkpoint: CheckpointOpt,
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 7860,
    host: Annotated[str, typer.Option("--host", help="address to listen on (0.0.0.0: every interface; the demo "
                                      "has no login, so only on a trusted network)")] = "127.0.0.1",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    pool: Annotated[Path | None, typer.Option("--pool", help="reports for 'most similar reports': .txt (one a "
                                              "line) or .jsonl ('text' key); default: the retrieval model's test "
                                              "split")] = None,
    pool_size: Annotated[int, typer.Option("--pool-size", help="at most this many distinct pool reports")] = 200,
    beams: Annotated[int, typer.Option("--beams", help="beam width of report generation (1 = greedy)")] = 1,
    no_repeat_ngram: Annotated[int, typer.Option("--no-repeat-ngram", help="forbid repeating n-grams of this size "
                                                 "in generated reports (0 = off)")] = 0,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="largest accepted upload")] = 25.0,
) -> None:
    """Web demo: upload an X-ray, see observation probabilities, a report, attention, answers, similar reports."""
    try:
        from .serve import DemoService, ServeConfig
        from .serve.app import serve as run_server
    except ImportError as exc:
        raise _fail(ImportError(f"{exc}; install the web demo's packages: pip install 'medvill[serve]'")) from None
    from .inference import MissingTaskError

    _setup_logging()
    try:
        cfg = ServeConfig(checkpoint=checkpoint, model=model, device=device, pool=pool, pool_size=pool_size,
                          max_upload_mb=max_upload_mb, beams=beams, no_repeat_ngram=no_repeat_ngram)
        console.print(f"loading the models of {checkpoint} ...")
        service = DemoService(cfg)
    except (ConfigError, FileNotFoundError, ValueError, MissingTaskError) as exc:
        raise _fail(exc) from None
    for task, c in service.pipe.describe().items():
        console.print(f"  {task}: {c['model']} ({c['path']})", highlight=False)
    missing = [t for t, i in service.info()["tasks"].items() if not i["available"]]
    if missing:
        console.print(f"  not in this folder: {', '.join(missing)}")
    if service.pool_note:
        console.print(f"  {service.pool_note}", style="yellow", markup=False, highlight=False)
    console.print(f"medvill web demo: [bold]http://{host}:{port}/[/bold] (Ctrl+C stops it)", highlight=False)
    run_server(service, host=host, port=port)


figures_app = typer.Typer(no_args_is_help=True, help="The paper's figures as PNG: attention maps, retrieval case "
                          "study, ROC curves, training curves.")
app.add_typer(figures_app, name="figures")
FigOutOpt = Annotated[Path, typer.Option("--output", help="PNG file to write")]
DataSetOpt = Annotated[str | None, typer.Option("--dataset", help="data set (default: the checkpoint's training data)")]
DataRootOpt = Annotated[Path | None, typer.Option("--root", help="data folder (default: the checkpoint's training "
                                                   "data)")]
SplitOpt = Annotated[str, typer.Option("--split")]


def _figure_done(path: Path) -> None:
    console.print(f"written: {path}")


@contextlib.contextmanager
def _drawing() -> Iterator[None]:
    """A figure command's body: logging set up, expected errors as a clear message and exit 2."""
    from .inference import MissingTaskError

    _setup_logging()
    try:
        yield
    except (ConfigError, FileNotFoundError, ValueError, KeyError, IndexError, MissingTaskError) as exc:
        raise _fail(exc) from None


def _split_records(pipe: Pipeline, task: str, split: str, dataset: str | None, root: Path | None) -> list[Record]:
    from .figures import checkpoint_records

    return checkpoint_records(pipe.checkpoint_path(task), split, dataset, root)


@figures_app.command("attention")
def figures_attention(
    image: Annotated[Path, typer.Argument(help="X-ray image file")],
    text: Annotated[str, typer.Option("--text", help="the report (or, with --task vqa, the question)")],
    checkpoint: CheckpointOpt,
    output: FigOutOpt,
    token: Annotated[list[str] | None, typer.Option("--token",
                                                    help="token (word or 0-based index); repeatable")] = None,
    layer: Annotated[list[int] | None, typer.Option("--layer",
                                                    help="0-based layer, -1 = last (default); repeatable")] = None,
    head: Annotated[list[int] | None, typer.Option("--head",
                                                   help="0-based head (default: mean of heads); repeatable")] = None,
    task: Annotated[str | None, typer.Option("--task",
                                             help="checkpoint to look into (default: classification)")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Attention of report words onto the X-ray per layer and head (paper Fig. 5a)."""
    from .figures import attention_figure

    with _drawing():
        maps = _pipeline(checkpoint, model, device).explain(str(image), text, task=task)
        tokens = [int(t) if t.lstrip("-").isdigit() else t for t in token] if token else None
        _figure_done(attention_figure(maps, output, tokens=tokens, layers=layer, heads=head))


@figures_app.command("retrieval")
def figures_retrieval(
    checkpoint: CheckpointOpt,
    output: FigOutOpt,
    query: Annotated[int, typer.Option("--query", help="index of the query pair in the split")] = 0,
    direction: Annotated[str, typer.Option("--direction", help="r2i (report query) or i2r (image query)")] = "r2i",
    k: Annotated[int, typer.Option("--k", help="top results to show (plus the lowest-ranked)")] = 5,
    candidates: Annotated[int, typer.Option("--candidates", help="candidates in the trial (paper: 100)")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    dataset: DataSetOpt = None,
    root: DataRootOpt = None,
    split: SplitOpt = "test",
    model: ModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """A retrieval trial: the query, its top-k and a low-ranked result with their labels (paper Fig. 6)."""
    from .figures import retrieval_case_study

    with _drawing():
        pipe = _pipeline(checkpoint, model, device)
        records = _split_records(pipe, "retrieval", split, dataset, root)
        _figure_done(retrieval_case_study(pipe, records, output, query=query, direction=direction, k=k,
                                          n_candidates=candidates, seed=seed))


@figures_app.command("roc")
def figures_roc(
    checkpoint: CheckpointOpt,
    output: FigOutOpt,
    dataset: DataSetOpt = None,
    root: DataRootOpt = None,
    split: SplitOpt = "test",
    model: ModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """ROC curves per observation of the classification checkpoint on a split."""
    from .figures import classification_roc

    with _drawing():
        pipe = _pipeline(checkpoint, model, device)
        _figure_done(classification_roc(pipe, _split_records(pipe, "classification", split, dataset, root), output))


@figures_app.command("curves")
def figures_curves(
    runs: Annotated[list[str], typer.Argument(help="run folders (or metrics.jsonl files), optionally name=folder")],
    output: FigOutOpt,
    key: Annotated[list[str] | None, typer.Option("--key", help="quantity to plot, e.g. loss or val/auroc_micro; "
                                                  "repeatable (default: all)")] = None,
) -> None:
    """Training and validation curves from metrics.jsonl logs."""
    from .figures import training_curves_figure

    named: dict[str, str] = {}
    for r in runs:
        name, _, path = r.partition("=") if "=" in r else (Path(r).name, "", r)
        named[name] = path
    with _drawing():
        _figure_done(training_curves_figure(named, output, keys=key))


@figures_app.command("demo")
def figures_demo(
    output: Annotated[Path, typer.Argument(help="a medvill demo output folder")] = Path("demo-output"),
    model: ModelOpt = None,
) -> None:
    """All figures of a medvill demo output, into OUTPUT/figures/."""
    from .figures import demo_figures

    with _drawing():
        for path in demo_figures(output, model=model):
            _figure_done(path)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
