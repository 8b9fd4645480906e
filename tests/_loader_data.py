"""Shared by the loader tests: paths of the real data in ../shared (tests skip without it),
a keyword labeler that counts its calls, and tiny image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.labels import CHEXPERT_OBSERVATIONS

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
MIMIC_EXAMPLE = DATA / "mimic_cxr_format" / "metadata_example.csv"
OPENI = DATA / "openi"
VQA_RAD = DATA / "vqa_rad"

IDX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


def need(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")


class FakeLabeler:
    """Keyword labeler standing in for medvill.labeler: counts its calls."""

    KEYWORDS = {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
                "opacity": "Lung Opacity", "no acute cardiopulmonary abnormality": "No Finding"}

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = np.full((len(texts), 14), np.nan, dtype=np.float32)
        for i, t in enumerate(texts):
            for word, obs in self.KEYWORDS.items():
                if word in t.lower():
                    out[i, IDX[obs]] = 1.0
        return out


def tiny_jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, dtype=np.uint8), mode="L").save(path, format="JPEG")


_PNG8 = io.BytesIO()
Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(_PNG8, format="PNG")
_PNG16 = io.BytesIO()
Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(_PNG16, format="PNG")


def tiny_png(path: Path, bits16: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((_PNG16 if bits16 else _PNG8).getvalue())
