"""What the commands share: their common options (typed ``Annotated`` aliases) and helpers
(logging set-up, config overrides from flags, the error message and exit code 2, the --output check)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import console

DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="synthetic (built-in) | mimic | openi | jsonl | "
                                                "vqa_rad (default: the --config file's data.dataset, else synthetic)")]
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

# the commands that load fine-tuned checkpoints (generate, serve, figures)
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="fine-tuned checkpoint folder, or a folder holding "
                                             "several (a medvill demo output)")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="which model's checkpoints where a folder holds several "
                                              "(default MedViLL-BAR)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="Linear-layer weights: fp32 (as trained), bf16 or int8 "
                                         "(CPU only; faster decoding, outputs close to fp32: BENCHMARKS.md)")]


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("MEDVILL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun: the main process reports
        console.quiet = True
        logging.getLogger().setLevel(logging.WARNING)


def cli_overrides(dataset: str | None = None, root: Path | None = None, max_steps: int | None = None,
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


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {exc}")
    return typer.Exit(code=2)


def claim_output(output: Path, **kwargs: bool) -> None:
    """Refuse (before any work) an --output that is a file or holds another run."""
    from ..recipes import output as run_output

    try:
        run_output.claim_output(output, **kwargs)
    except run_output.OutputExistsError as exc:
        raise fail(exc) from None
