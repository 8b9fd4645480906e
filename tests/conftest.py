"""Shared fixtures: tiny configs, fake records on disk, the synthetic data set."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

from medvill.config import RunConfig, preset_config  # noqa: E402
from medvill.data.records import Record  # noqa: E402
from medvill.labels import CHEXPERT_OBSERVATIONS, NUM_OBSERVATIONS  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MEDVILL_CACHE", str(tmp_path_factory.getbasetemp() / "medvill-cache"))


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return preset_config("tiny")


FAKE_SENTENCES = {
    2: "the heart is enlarged",
    10: "there is a small pleural effusion",
    9: "a right pneumothorax is seen",
    13: "an endotracheal tube is in place",
}


@pytest.fixture(scope="session")
def fake_records(tmp_path_factory) -> list[Record]:
    """24 records with tiny random images and reports whose text follows the labels."""
    root = tmp_path_factory.mktemp("fake")
    rng = np.random.default_rng(0)
    records = []
    keys = list(FAKE_SENTENCES)
    for i in range(24):
        labels = np.full(NUM_OBSERVATIONS, np.nan, dtype=np.float32)
        present = [k for k in keys if rng.random() < 0.4]
        words = ["pa view of the chest"]
        for k in keys:
            if k in present:
                labels[k] = 1.0
                words.append(FAKE_SENTENCES[k])
        if not present:
            labels[0] = 1.0
            words.append("no acute cardiopulmonary process")
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(path)
        records.append(Record(id=f"r{i}", image=path, text=". ".join(words) + ".", labels=labels))
    return records


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from medvill.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, n=160, image_size=64, seed=0)
    return root


def observation_names() -> tuple[str, ...]:
    return CHEXPERT_OBSERVATIONS


@pytest.fixture(scope="session")
def tiny_demo_dir(synthetic_root, tmp_path_factory) -> Path:
    """A folder laid out like a ``medvill demo`` output, with real tiny checkpoints: a 2-step
    BAR pre-training, the four tasks fine-tuned from it for 2 steps (MedViLL-BAR), a
    classification model from scratch (FT-only) and the TieNet and CNN & Transformer baselines."""
    from rich.console import Console

    from medvill.config import load_config
    from medvill.recipes.finetune import run_finetuning
    from medvill.recipes.pretrain import run_pretraining

    out = tmp_path_factory.mktemp("demo") / "demo-output"
    quiet = Console(quiet=True)

    def cfg():
        return load_config("tiny", None, [f"data.root={synthetic_root}", "train.max_steps=2", "train.progress=false",
                                          "train.log_every=1"])

    run_pretraining(cfg(), out / "pretrain-bar", console=quiet)
    for task in ("classification", "retrieval", "vqa", "generation"):
        run_finetuning(task, cfg(), str(out / "pretrain-bar"), out / "finetune" / f"{task}-MedViLL-BAR", console=quiet)
    run_finetuning("classification", cfg(), "scratch", out / "finetune" / "classification-FT-only", console=quiet)
    run_finetuning("classification", cfg(), "tienet", out / "finetune" / "classification-TieNet", console=quiet)
    run_finetuning("classification", cfg(), "cnn-transformer", out / "finetune" / "classification-CNN-Transformer",
                   console=quiet)
    return out
