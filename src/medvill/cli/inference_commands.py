"""Commands that use fine-tuned checkpoints: ``generate`` (reports for images) and ``serve`` (the web demo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..config import ConfigError
from .app import app, console
from .options import CheckpointOpt, DeviceOpt, ModelOpt, WeightsOpt, fail, setup_logging


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
    batch_size: Annotated[int, typer.Option("--batch-size", help="images decoded together")] = 16,
    device: DeviceOpt = None,
    weights: WeightsOpt = "fp32",
) -> None:
    """Generate a report for each image with a fine-tuned generation checkpoint (free-running decoding)."""
    from ..inference import MissingTaskError, Pipeline

    setup_logging()
    try:
        pipe = Pipeline.from_pretrained(checkpoint, model=model, device=device, batch_size=batch_size,
                                        weights=weights)
        reports = pipe.generate([str(p) for p in images], num_beams=beams, max_length=max_length,
                                no_repeat_ngram_size=no_repeat_ngram)
    except (ConfigError, FileNotFoundError, ValueError, MissingTaskError) as exc:
        raise fail(exc) from None
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
    weights: WeightsOpt = "fp32",
) -> None:
    """Web demo: upload an X-ray, see observation probabilities, a report, attention, answers, similar reports."""
    try:
        from ..serve import DemoService, ServeConfig
        from ..serve.app import serve as run_server
    except ImportError as exc:
        raise fail(ImportError(f"{exc}; install the web demo's packages: pip install 'medvill[serve]'")) from None
    from ..inference import MissingTaskError

    setup_logging()
    try:
        cfg = ServeConfig(checkpoint=checkpoint, model=model, device=device, pool=pool, pool_size=pool_size,
                          max_upload_mb=max_upload_mb, beams=beams, no_repeat_ngram=no_repeat_ngram,
                          weights=weights)
        console.print(f"loading the models of {checkpoint} ...")
        service = DemoService(cfg)
    except (ConfigError, FileNotFoundError, ValueError, MissingTaskError) as exc:
        raise fail(exc) from None
    for task, c in service.pipe.describe().items():
        console.print(f"  {task}: {c['model']} ({c['path']})", highlight=False)
    missing = [t for t, i in service.info()["tasks"].items() if not i["available"]]
    if missing:
        console.print(f"  not in this folder: {', '.join(missing)}")
    if service.pool_note:
        console.print(f"  {service.pool_note}", style="yellow", markup=False, highlight=False)
    console.print(f"medvill web demo: [bold]http://{host}:{port}/[/bold] (Ctrl+C stops it)", highlight=False)
    run_server(service, host=host, port=port)
