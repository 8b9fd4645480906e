"""Reading records: bad rows are errors naming file and line, or counted skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medvill.data.records import SkipReport, choose_text, read_jsonl_records
from medvill.data.registry import load_records
from medvill.data.transforms import load_image, read_grayscale, resize_pad


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.full((40, 30), 128, dtype=np.uint8), mode="L").save(p)
    return p


def test_reads_records_and_counts_skips(tmp_path, image):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [
        {"id": "ok", "image": "a.png", "findings": "Small left effusion.", "impression": "Effusion.",
         "labels": {"Pleural Effusion": 1, "Pneumothorax": 0, "Edema": None}},
        {"id": "noimg", "image": "missing.png", "text": "Normal."},
        {"id": "empty", "image": "a.png", "text": "   "},
        "",
    ])
    skips = SkipReport(str(path))
    records = read_jsonl_records(path, skips=skips)
    assert [r.id for r in records] == ["ok"]
    assert records[0].text == "Small left effusion."  # the longer section
    assert records[0].labels[10] == 1 and records[0].labels[9] == 0 and np.isnan(records[0].labels[5])
    assert skips.counts == {"missing image": 1, "empty report": 1}
    assert f"{path}:2" in skips.summary()


@pytest.mark.parametrize("line,match", [
    ("{not json", ":1: not valid JSON"),
    ('["a"]', ":1: expected a JSON object"),
    ('{"text": "x"}', ":1: the record has no 'image' key"),
    ('{"image": "a.png", "text": "x", "labels": {"Heart Size": 1}}', ":1: unknown CheXpert observation 'Heart Size'"),
    ('{"image": "a.png", "text": "x", "labels": {"Edema": 2}}', ":1: label 'Edema' has value 2"),
])
def test_malformed_lines_name_file_and_line(tmp_path, image, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=match):
        read_jsonl_records(path)


def test_choose_text():
    assert choose_text("short", "much longer impression") == "much longer impression"
    assert choose_text("", "imp", "findings") == "imp"
    with pytest.raises(ValueError):
        choose_text("a", "b", "middle")


def test_images_corrupt_missing_and_16_bit(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        read_grayscale(bad)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_grayscale(tmp_path / "nope.png")
    deep = tmp_path / "deep.png"
    arr = np.linspace(0, 4095, 64 * 48).reshape(64, 48).astype(np.uint16)
    Image.fromarray(arr).save(deep)
    img = read_grayscale(deep)
    assert img.mode == "L" and np.asarray(img).max() == 255 and np.asarray(img).min() == 0


def test_resize_pad_keeps_aspect_ratio():
    img = Image.fromarray(np.full((100, 50), 255, dtype=np.uint8), mode="L")
    out = np.asarray(resize_pad(img, 64))
    assert out.shape == (64, 64)
    assert out[:, 32].min() == 255 and out[:, 0].max() == 0  # centred, padded left and right


def test_load_image_tensor(image):
    x = load_image(image, 32)
    assert x.shape == (3, 32, 32) and x.dtype.is_floating_point


def test_load_records_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_records("chexpert", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_records("synthetic", tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match="medvill synth"):
        load_records("synthetic", tmp_path, "train")
    with pytest.raises(ValueError, match="needs --root"):
        load_records("mimic", None, "train")
    with pytest.raises(ValueError, match="VQA task"):
        load_records("vqa_rad", tmp_path, "train")


def test_registry_reads_own_jsonl_and_synthetic_questions(tmp_path, image, synthetic_root):
    from medvill.data.registry import load_vqa

    write_jsonl(tmp_path / "mine.jsonl", [
        {"id": f"x{i}", "image": "a.png", "text": "Small left pleural effusion.", "split": "train"} for i in range(3)
    ])
    records = load_records("jsonl", tmp_path / "mine.jsonl", "train")
    assert len(records) == 3 and records[0].labels[10] == 1  # labelled by the labeler
    items = load_vqa("synthetic", synthetic_root, "test")
    assert items and all(it.image.is_file() and it.answer_type in ("CLOSED", "OPEN") for it in items)
    with pytest.raises(ValueError, match="no questions"):
        load_vqa("mimic", tmp_path, "train")
