"""Data helpers the task files share: a loader with the run's batching, and the image + report
examples of a records split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import ModelConfig, RunConfig
from ..data.pairs import ReportPairDataset
from ..data.records import Record
from ..data.splits import data_loader
from ..data.task_data import ImageTextCollator, ImageTextDataset
from ..tokenization import MedTokenizer

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def binary_targets(records: list[Record]) -> np.ndarray:
    """The 14 labels as the paper trains them: positive (1) is 1, everything else 0."""
    return np.stack([(r.labels == 1).astype(np.float32) for r in records])


def loader(ds: ReportPairDataset | ImageTextDataset, cfg: RunConfig, tokenizer: MedTokenizer, train: bool,
           collate: Collate | None = None) -> Any:
    """The run's loader over ``ds`` (``ImageTextCollator`` unless ``collate`` is given)."""
    return data_loader(ds, cfg, collate or ImageTextCollator(tokenizer.pad_id), train)


def record_dataset(records: list[Record], tokenizer: MedTokenizer, mcfg: ModelConfig,
                   image_only: bool = False) -> ImageTextDataset:
    """Image, report and the 14 positive labels of each record; ``image_only``: every report
    empty (what ``Pipeline.classify(image)`` sees)."""
    texts = [""] * len(records) if image_only else [r.text for r in records]
    return ImageTextDataset([r.image for r in records], texts, binary_targets(records), tokenizer,
                            mcfg.image_size, mcfg.max_text_len)
