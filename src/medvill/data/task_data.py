"""Datasets for fine-tuning: an image, a text (report or question) and a target.

One dataset and one collator serve classification (report + 14 binary targets), VQA
(question + answer index) and any task of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tokenization import MedTokenizer
from .pairs import encode_reports, pad_stack
from .transforms import load_image


class ImageTextDataset(Dataset):
    def __init__(self, images: Sequence[Path], texts: Sequence[str], targets: np.ndarray, tokenizer: MedTokenizer,
                 image_size: int, max_text_len: int):
        if not (len(images) == len(texts) == len(targets)):
            raise ValueError("images, texts and targets must have the same length")
        if not len(images):
            raise ValueError("the data set is empty")
        self.images = list(images)
        self.text_ids = encode_reports(tokenizer, list(texts), max_text_len)
        self.targets = np.asarray(targets)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"images": load_image(self.images[i], self.image_size), "text_ids": self.text_ids[i],
                "targets": self.targets[i], "index": i}


class ImageTextCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        text_ids = pad_stack([it["text_ids"] for it in items], self.pad_id)
        lengths = torch.tensor([len(it["text_ids"]) for it in items])
        return {
            "images": torch.stack([it["images"] for it in items]),
            "text_ids": text_ids,
            "text_valid": torch.arange(text_ids.shape[1])[None] < lengths[:, None],
            "targets": torch.as_tensor(np.stack([it["targets"] for it in items])),
            "index": torch.tensor([it["index"] for it in items]),
        }
