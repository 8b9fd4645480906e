"""Figures: attention overlays, retrieval case study, ROC curves, training curves, the demo's
figures and the ``medvill figures`` commands; each a PNG of the documented size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medvill import Pipeline
from medvill.cli import app
from medvill.data.registry import load_records
from medvill.figures import (
    attention_figure,
    default_tokens,
    demo_figures,
    read_metrics_log,
    retrieval_case_study,
    roc_figure,
    training_curves_figure,
)


@pytest.fixture(scope="module")
def pipe(tiny_demo_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_demo_dir, device="cpu")


@pytest.fixture(scope="module")
def records(synthetic_root):
    return load_records("synthetic", synthetic_root, "test")


def check_png(path, size):
    """A PNG of exactly ``size`` pixels that is not one flat colour."""
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5


def test_attention_figure_size_and_content(pipe, records, tmp_path):
    r = records[0]
    maps = pipe.explain(r.image, r.text)
    words = default_tokens(maps.tokens)
    assert words and all(maps.tokens[i].isalpha() and len(maps.tokens[i]) >= 5 for i in words)
    out = attention_figure(maps, tmp_path / "att.png", tokens=[words[0], -1], layers=[0, -1], heads=[0, 1], dpi=50)
    check_png(out, ((1 + 4) * 100, 2 * 100))  # 2 tokens x (image + 2 layers x 2 heads), 2 in x 50 dpi panels
    check_png(attention_figure(maps, tmp_path / "mean.png"), (2 * 200, len(words) * 200))  # last layer, mean of heads
    with pytest.raises(IndexError, match="layer 5 out of range"):
        attention_figure(maps, tmp_path / "bad.png", layers=[5])


def test_retrieval_case_study_both_directions(pipe, records, tmp_path):
    for direction in ("r2i", "i2r"):
        out = retrieval_case_study(pipe, records, tmp_path / f"{direction}.png", query=1, direction=direction, k=3,
                                   n_candidates=10, dpi=50)
        check_png(out, (int((1 + 3 + 1) * 2.2 * 50), int(1.45 * 2.2 * 50)))  # query + top 3 + lowest ranked
    with pytest.raises(ValueError, match="direction"):
        retrieval_case_study(pipe, records, tmp_path / "x.png", direction="sideways")


def test_roc_figure(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((60, 14)) < 0.3).astype(float)
    y[:, 5] = 0  # an observation without positives is left out, not an error
    probs = np.clip(y * 0.4 + rng.random((60, 14)) * 0.6, 0, 1)
    check_png(roc_figure(probs, y, tmp_path / "roc.png"), (750, 600))
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_figure(probs, np.zeros_like(y), tmp_path / "none.png")
    with pytest.raises(ValueError, match="must both be"):
        roc_figure(probs[:, :3], y, tmp_path / "shape.png")


def test_training_curves_and_bad_log_lines(tiny_demo_dir, tmp_path):
    runs = {"BAR": tiny_demo_dir / "finetune" / "classification-MedViLL-BAR",
            "FT-only": tiny_demo_dir / "finetune" / "classification-FT-only" / "metrics.jsonl"}
    train, val = read_metrics_log(runs["BAR"])
    assert train and val and all("split" not in e for e in train)
    out = training_curves_figure(runs, tmp_path / "curves.png", keys=["loss", "val/auroc_micro"], dpi=50)
    check_png(out, (2 * 200, 150))
    with pytest.raises(KeyError, match="nope"):
        training_curves_figure(runs, tmp_path / "x.png", keys=["nope"])
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics_log(bad)


def test_demo_figures(tiny_demo_dir):
    paths = demo_figures(tiny_demo_dir)
    assert sorted(p.name for p in paths) == ["attention.png", "finetune-curves.png", "retrieval.png", "roc.png",
                                             "training-curves.png"]
    for p in paths:
        assert p.parent == tiny_demo_dir / "figures"
        with Image.open(p) as im:
            check_png(p, im.size)
    check_png(tiny_demo_dir / "figures" / "attention.png", ((1 + 2) * 200, 3 * 200))  # 2 layers, 3 words


def test_figures_commands(tiny_demo_dir, records, tmp_path):
    run = CliRunner().invoke
    r = records[0]
    cases = {
        "att.png": ["attention", str(r.image), "--text", r.text, "--checkpoint", str(tiny_demo_dir), "--token", "0",
                    "--layer", "-1", "--head", "0", "--head", "1"],
        "ret.png": ["retrieval", "--checkpoint", str(tiny_demo_dir), "--k", "2", "--candidates", "8", "--query", "2"],
        "roc.png": ["roc", "--checkpoint", str(tiny_demo_dir)],
        "cur.png": ["curves", f"bar={tiny_demo_dir / 'pretrain-bar'}", "--key", "loss"],
    }
    for name, args in cases.items():
        result = run(app, ["figures", *args, "--output", str(tmp_path / name)])
        assert result.exit_code == 0, (name, result.output)
        assert (tmp_path / name).stat().st_size > 0
    check_png(tmp_path / "att.png", (3 * 200, 200))
    result = run(app, ["figures", "roc", "--checkpoint", str(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR"),
                       "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no classification checkpoint" in result.output
    result = run(app, ["figures", "demo", str(tiny_demo_dir)])
    assert result.exit_code == 0 and "retrieval.png" in result.output
    log = json.loads((tiny_demo_dir / "pretrain-bar" / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss" in log
