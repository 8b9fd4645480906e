"""A run's image warnings: one summary line and a file, not one console line per image."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.config import load_config
from medvill.data.image_warnings import collected_image_warnings
from medvill.data.transforms import PIXEL_CACHE, warn_once
from medvill.recipes.finetune import run_finetuning


def test_warnings_inside_a_run_become_one_summary_and_a_file(tmp_path, caplog):
    flagged = {f"/data/img{i}.png": ["saturated: 70% of the pixels are black (0)"] for i in range(4)}
    flagged["/data/odd.png"] = ["very low contrast (1st-99th percentile spread 0.050 of the range): wrong window?",
                                "saturated: 60% of the pixels are black (0)"]
    with caplog.at_level(logging.WARNING):
        with collected_image_warnings(tmp_path) as found:
            for path, messages in flagged.items():
                assert warn_once(path, messages) is False  # gathered, not logged
            warn_once("/data/img0.png", ["saturated: 70% of the pixels are black (0)"])  # an image counts once
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0] == (f"5 images flagged by the image checks (saturated 5, very low contrast 1): img0.png, img1.png, "
                        f"img2.png and 2 more; the list is in {tmp_path / 'image_warnings.txt'}")
    assert len(found.by_image) == 5
    written = (tmp_path / "image_warnings.txt").read_text().splitlines()
    assert len(written) == 5 and written[-1].startswith("/data/odd.png: very low contrast")
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # outside a run: one line per image, as before
        assert warn_once("/data/outside.png", ["saturated: 80% of the pixels are white (1)"])
    assert [r.getMessage() for r in caplog.records] == ["/data/outside.png: saturated: 80% of the pixels are white (1)"]


def test_a_fine_tuning_run_over_flagged_images_prints_one_line(tmp_path, caplog):
    """Images with a black background (as VQA-RAD's CT scans have): the run says so once and
    lists them in its output folder."""
    rows = []
    (tmp_path / "images").mkdir()
    for i in range(10):
        pixels = np.zeros((64, 64), dtype=np.uint8)  # two thirds black, no uniform border to crop
        pixels[:, ::3] = np.linspace(60, 220, 64, dtype=np.uint8)[:, None] + i
        Image.fromarray(pixels).save(tmp_path / "images" / f"ct{i}.png")
        split = "train" if i < 6 else ("validate" if i < 8 else "test")
        rows.append(json.dumps({"id": f"ct{i}", "image": f"images/ct{i}.png", "split": split,
                                "text": "Small left pleural effusion." if i % 2 else "No acute process."}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    cfg = load_config("tiny", None, [f"data.root={tmp_path / 'pairs.jsonl'}", "data.dataset=jsonl",
                                     "train.max_steps=2", "train.progress=false", "train.batch_size=4"])
    with caplog.at_level(logging.WARNING):
        run_finetuning("classification", cfg, "scratch", tmp_path / "run")
    flagged = [r.getMessage() for r in caplog.records if "flagged by the image checks" in r.getMessage()]
    per_image = [r.getMessage() for r in caplog.records if "ct" in r.getMessage() and "saturated" in r.getMessage()
                 and "flagged" not in r.getMessage()]
    assert len(flagged) == 1 and not per_image, caplog.text
    assert flagged[0].startswith("8 images flagged by the image checks (saturated 8)")
    assert len((tmp_path / "run" / "image_warnings.txt").read_text().splitlines()) == 8  # train + validation


def _slice(body: int, hole: int = 0) -> np.ndarray:
    """A CT-like slice: a bright body disc of radius ``body`` on a black surround, with a black
    region of radius ``hole`` inside the body."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    pixels = np.where(r < body, 0.35 + 0.3 * (xx / 96), 0.0).astype(np.float32)
    pixels[r < hole] = 0.0
    return pixels


def test_a_ct_slice_is_not_flagged_for_its_black_surround():
    from medvill.data.decode import intensity_warnings

    normal = _slice(body=34)  # 61 % black, all of it around the body
    assert intensity_warnings(normal)[0].startswith("saturated")  # the radiograph rule
    assert intensity_warnings(normal, cross_sectional=True) == []
    bad = _slice(body=46, hole=42)  # 60 % black inside the body
    assert intensity_warnings(bad, cross_sectional=True)[0].startswith("saturated")


VQA_RAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "vqa_rad"


@pytest.mark.skipif(not (VQA_RAD / "images" / "synpic22310.jpg").is_file(), reason="../shared/data/vqa_rad not here")
def test_vqa_rad_head_and_abdominal_images_are_checked_as_slices(caplog):
    """A real abdominal CT of VQA-RAD (black surround, caption text at the border): flagged by
    the radiograph rule, not when its item says it is an abdominal image."""
    from medvill.data.splits import readable
    from medvill.data.vqa_rad import VQAItem

    image = VQA_RAD / "images" / "synpic22310.jpg"
    cfg = load_config("tiny", None, [f"data.root={VQA_RAD}", "model.image_size=64"])
    for organ, flagged in (("ABD", []), ("CHEST", [str(image)])):
        item = VQAItem("1", image, "q?", "yes", "CLOSED", "PRES", organ, "freeform", "train")
        PIXEL_CACHE.clear()  # decoded (and checked) afresh
        with caplog.at_level(logging.WARNING), collected_image_warnings() as found:
            assert readable([item], cfg, "train") == [item]
        assert list(found.by_image) == flagged, organ
