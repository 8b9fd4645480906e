"""The ``figures`` command group: the paper's figures as PNG (attention, retrieval, ROC, curves, demo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import ConfigError
from .app import app, console
from .options import CheckpointOpt, DeviceOpt, ModelOpt, fail, setup_logging

if TYPE_CHECKING:
    from ..data.records import Record
    from ..inference import Pipeline

figures_app = typer.Typer(no_args_is_help=True, help="The paper's figures as PNG: attention maps, retrieval case "
                          "study, ROC curves, training curves.")
app.add_typer(figures_app, name="figures")
FigOutOpt = Annotated[Path, typer.Option("--output", help="PNG file to write")]
DataSetOpt = Annotated[str | None, typer.Option("--dataset", help="data set (default: the checkpoint's training data)")]
DataRootOpt = Annotated[Path | None, typer.Option("--root", help="data folder (default: the checkpoint's training "
                                                   "data)")]
SplitOpt = Annotated[str, typer.Option("--split")]


def _pipeline(checkpoint: Path, model: str | None, device: str | None) -> Pipeline:
    from ..inference import Pipeline

    return Pipeline.from_pretrained(checkpoint, model=model, device=device)


def _figure_done(path: Path) -> None:
    console.print(f"written: {path}")


@contextlib.contextmanager
def _drawing() -> Iterator[None]:
    """A figure command's body: logging set up, expected errors as a clear message and exit 2."""
    from ..inference import MissingTaskError

    setup_logging()
    try:
        yield
    except (ConfigError, FileNotFoundError, ValueError, KeyError, IndexError, MissingTaskError) as exc:
        raise fail(exc) from None


def _split_records(pipe: Pipeline, task: str, split: str, dataset: str | None, root: Path | None) -> list[Record]:
    from ..figures import checkpoint_records

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
    from ..figures import attention_figure

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
    from ..figures import retrieval_case_study

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
    from ..figures import classification_roc

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
    from ..figures import training_curves_figure

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
    from ..figures import demo_figures

    with _drawing():
        for path in demo_figures(output, model=model):
            _figure_done(path)
