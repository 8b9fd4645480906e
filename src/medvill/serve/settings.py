"""The settings of ``medvill serve`` and the error type of bad input (:class:`UserError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..inference import check_weights

MB = 1024 * 1024


class UserError(Exception):
    """Bad input: ``status`` is the HTTP status, the message is shown on the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``medvill serve``.

    ``checkpoint``: a fine-tuned checkpoint folder or a folder holding several (a ``medvill
    demo`` output).  ``pool``: a file of reports for retrieval (``.txt``: one report a line;
    ``.jsonl``: objects with a ``text`` or ``report`` key); None = the ``pool_split`` split of
    the data set the retrieval checkpoint was trained on.  ``pool_size``: at most this many
    distinct reports (the first ones).  ``max_upload_mb``: larger uploads are refused;
    ``max_pixels``: images with more pixels are refused before decoding.  ``beams``: beam
    width of report generation (1 = greedy) and ``no_repeat_ngram`` its ban on repeated
    n-grams (0 = none), as in ``medvill generate``.  ``weights``: the models' Linear layers in
    ``fp32`` (as trained), ``bf16`` or ``int8`` (CPU only), as ``Pipeline(weights=...)``.
    """

    checkpoint: Path
    model: str | None = None
    device: str | None = None
    pool: Path | None = None
    pool_split: str = "test"
    pool_size: int = 200
    max_upload_mb: float = 25.0
    max_pixels: int = 50_000_000
    max_uploads: int = 64
    beams: int = 1
    no_repeat_ngram: int = 0
    weights: str = "fp32"

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_uploads < 1:
            raise ValueError(f"max_uploads must be >= 1, got {self.max_uploads}")
        if self.beams < 1:
            raise ValueError(f"beams must be >= 1, got {self.beams}")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        check_weights(self.weights, self.device)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

