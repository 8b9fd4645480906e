"""Commands that make or label data: ``synth``, ``prepare``, ``label``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .app import app, console
from .options import RootOpt, fail, setup_logging


@app.command()
def synth(
    output: Annotated[Path, typer.Option("--output", help="folder to create")],
    n: Annotated[int, typer.Option("--n", help="number of image-report pairs")] = 2000,
    image_size: Annotated[int, typer.Option("--image-size", help="pixels per side")] = 128,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write the built-in synthetic chest X-ray data set (PNG + JSONL + VQA JSON)."""
    from ..data.synthetic import generate_synthetic

    start = time.perf_counter()
    try:
        summary = generate_synthetic(output, n=n, image_size=image_size, seed=seed)
    except (FileExistsError, ValueError) as exc:
        raise fail(exc) from None
    console.print(f"wrote {summary.n} cases to {summary.root} in {time.perf_counter() - start:.1f} s: {summary.counts}")


@app.command()
def prepare(
    output: Annotated[Path, typer.Option("--output", help="cache folder to write (resumable)")],
    dataset: Annotated[str, typer.Option("--dataset", help="synthetic (built-in) | mimic | openi | jsonl | "
                                         "vqa_rad")] = "synthetic",
    root: RootOpt = None,
    image_size: Annotated[int, typer.Option("--image-size", help="side of the cached images (paper: 512)")] = 512,
    workers: Annotated[int | None, typer.Option("--workers", help="processes (default: all CPUs)")] = None,
    policy: Annotated[str, typer.Option("--policy", help="skip | error: what a bad image or row does")] = "skip",
    window: Annotated[str, typer.Option("--window", help="DICOM VOI handling: auto | none")] = "auto",
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="cut uniform margins (paper: yes)")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a cache made with other settings")] = False,
) -> None:
    """Crop, resize and cache a data set's images once; training then reads the cache (--root CACHE)."""
    from ..data.prepare import prepare_cache
    from ..data.records import SkipReport
    from ..data.registry import SPLITS, load_records
    from ..data.transforms import Preprocess

    setup_logging()
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
        raise fail(exc) from None
    console.print(summary.describe())


@app.command()
def label(
    input: Annotated[Path, typer.Argument(help="CSV with a report column, a .txt file or folder of them, or JSONL")],
    output: Annotated[Path, typer.Option("--output", help="CSV to write (CheXpert layout: 1 / 0 / -1 / blank)")],
    text_column: Annotated[str | None, typer.Option("--text-column", help="report column of a CSV")] = None,
) -> None:
    """Label reports with the 14 CheXpert observations (pure-Python CheXpert labeler)."""
    from ..labeler.io import label_file

    try:
        summary = label_file(input, output, text_column=text_column)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(exc) from None
    rate = summary.n / summary.seconds if summary.seconds else float("inf")
    console.print(f"labelled {summary.n} reports ({summary.empty} empty) in {summary.seconds:.2f} s "
                  f"({rate:.0f} reports/s) -> {output}")
