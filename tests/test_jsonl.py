"""Your own data: JSONL / CSV files with a report, an image and optional labels per row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _loader_data import IDX, FakeLabeler, tiny_png

from medvill.data.common import DataError, hash_split
from medvill.data.jsonl import load_jsonl
from medvill.data.records import SkipReport, read_jsonl_records
from medvill.labels import CHEXPERT_OBSERVATIONS


@pytest.fixture
def own_dir(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        tiny_png(tmp_path / "images" / name)
    return tmp_path


def test_own_jsonl(own_dir, tmp_path_factory):
    absolute = tmp_path_factory.mktemp("abs") / "x.png"
    tiny_png(absolute)
    rows = [
        {"id": "a", "image": "images/a.png", "text": "Small effusion.", "split": "train",
         "labels": {"Pleural Effusion": 1, "Edema": 0}},
        {"id": "b", "image": "images/b.png", "findings": "Mild cardiomegaly, unchanged.", "impression": "Cardiomegaly.",
         "split": "train", "Cardiomegaly": 1.0, "Edema": ""},
        {"id": "c", "image": "images/c.png", "report": "INDICATION: cough\nFINDINGS: No pneumothorax.\n"
                                                       "IMPRESSION: Normal chest.", "split": "valid"},
        {"id": "d", "image": str(absolute), "text": "Left pneumothorax.", "split": "train"},
        {"id": "e", "image": "images/e.png", "text": "Opacity at the base.", "split": "TRAIN"},
        {"id": "bad-label", "image": "images/a.png", "text": "x", "split": "train", "labels": {"Edema": 2}},
        {"id": "bad-split", "image": "images/a.png", "text": "x", "split": "holdout"},
        {"id": "no-image", "image": "images/zzz.png", "text": "x", "split": "train"},
        {"id": "empty", "image": "images/a.png", "text": "  ", "split": "train"},
        {"id": "a", "image": "images/a.png", "text": "dup", "split": "train"},
    ]
    path = own_dir / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    fake = FakeLabeler()
    skips = SkipReport("own")
    train = load_jsonl(path, "train", labeler=fake, skips=skips)
    assert [r.id for r in train] == ["a", "b", "d", "e"]
    a, b, d, e = train
    assert a.labels[IDX["Pleural Effusion"]] == 1 and a.labels[IDX["Edema"]] == 0 and np.isnan(a.labels[0])
    assert b.text == "Mild cardiomegaly, unchanged." and b.labels[IDX["Cardiomegaly"]] == 1
    assert np.isnan(b.labels[IDX["Edema"]])
    assert fake.calls == [["Left pneumothorax.", "Opacity at the base."]]  # only rows without labels
    assert d.image == absolute and d.labels[IDX["Pneumothorax"]] == 1 and e.labels[IDX["Lung Opacity"]] == 1
    assert a.image == own_dir / "images" / "a.png"
    assert dict(skips.counts) == {"label 'Edema' has value 2; expected 1, 0, -1 or blank": 1,
                                  "unknown split value 'holdout' (expected train, validate or test)": 1,
                                  f"missing image {own_dir / 'images' / 'zzz.png'}": 1, "empty report": 1,
                                  "duplicate id 'a'": 1, "not valid JSON (Expecting property name enclosed in "
                                                         "double quotes)": 1}
    val = load_jsonl(path, "validate", labeler=fake)
    assert [(r.id, r.text, r.findings, r.impression) for r in val] == [
        ("c", "No pneumothorax.", "No pneumothorax.", "Normal chest.")]
    with pytest.raises(DataError, match=r"data\.jsonl:6: label 'Edema' has value 2"):
        load_jsonl(path, "train", labeler=fake, policy="error")
    assert np.isnan(load_jsonl(path, "train", labels="none")[0].labels).all()


def test_own_hash_split_and_csv(own_dir):
    header = ["image", "findings", "impression"] + list(CHEXPERT_OBSERVATIONS)
    lines = [",".join(header)]
    for k, name in enumerate("abcde"):
        vals = [""] * 14
        vals[IDX["Cardiomegaly"]] = ["1.0", "0", "-1", "", "1"][k]
        lines.append(f"images/{name}.png,Finding {name} is here.,Imp {name}.," + ",".join(vals))
    path = own_dir / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    got = {s: load_jsonl(path, s, policy="error") for s in ("train", "validate", "test")}
    ids = [r.id for v in got.values() for r in v]
    assert sorted(ids) == [f"data-{k}" for k in range(2, 7)]  # every row in exactly one split
    for s, recs in got.items():
        for r in recs:
            assert hash_split(f"images/{r.image.name}", (0.8, 0.1, 0.1)) == s
            assert r.text.startswith("Finding")
    card = {r.image.stem: r.labels[IDX["Cardiomegaly"]] for v in got.values() for r in v}
    assert card["a"] == 1 and card["b"] == 0 and card["c"] == -1 and np.isnan(card["d"])
    # a truncated line
    path.write_text("\n".join(lines[:3] + ["images/c.png,Finding"]) + "\n")
    skips = SkipReport("csv")
    assert sum(len(load_jsonl(path, s, skips=skips)) for s in ("train", "validate", "test")) == 2
    assert skips.counts and f"{path}:4" in skips.examples[0]
    with pytest.raises(DataError, match=r"data\.csv:4: expected 17 fields, got 2"):
        load_jsonl(path, "train", policy="error")
    # partial label columns / no image column: errors naming the file and the column(s)
    path.write_text("image,text,Edema\nimages/a.png,x,1\n")
    with pytest.raises(DataError, match=r"data\.csv: has 1 of the 14 label columns; missing columns 'No Finding'"):
        load_jsonl(path, "train")
    path.write_text("path,text\nimages/a.png,x\n")
    with pytest.raises(DataError, match=r"data\.csv: missing column 'image'"):
        load_jsonl(path, "train")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_bad_byte_costs_its_row_not_the_file(own_dir, suffix):
    """One non-UTF-8 byte (after the first 8 KB chunk, as in a real file) is a bad row named
    file:line under either policy; the other rows load."""
    path = own_dir / f"data{suffix}"
    pad = "x" * 9000  # pushes the bad byte past the decoder's first chunk
    if suffix == ".jsonl":
        rows = [json.dumps({"id": n, "image": f"images/{n}.png", "text": f"Finding {n}. {pad}", "split": "train"})
                for n in "abc"]
        data = "\n".join(rows).encode() + b"\n"
        data = data.replace(b"Finding c.", b"Finding c\xe9.")
        bad_line = 3
    else:
        lines = ["id,image,text,split"] + [f"{n},images/{n}.png,Finding {n}. {pad},train" for n in "abc"]
        data = ("\n".join(lines) + "\n").encode().replace(b"Finding b.", b"Finding b\xe9.")
        bad_line = 3
    path.write_bytes(data)
    skips = SkipReport("own")
    got = load_jsonl(path, "train", skips=skips, labels="none")
    assert len(got) == 2 and skips.total == 1
    assert f"{path}:{bad_line}" in skips.examples[0] and "byte 0xe9" in skips.examples[0]
    with pytest.raises(DataError, match=rf"data\{suffix}:{bad_line}: byte 0xe9 at column \d+ is not UTF-8 text"):
        load_jsonl(path, "train", policy="error", labels="none")


def test_report_text_must_be_a_string(own_dir):
    path = own_dir / "data.jsonl"
    rows = [{"id": "a", "image": "images/a.png", "text": ["Small", "effusion."], "split": "train"},
            {"id": "b", "image": "images/b.png", "findings": {"x": 1}, "split": "train"},
            {"id": "c", "image": 3, "text": "ok", "split": "train"},
            {"id": "d", "image": "images/d.png", "text": "Clear lungs.", "split": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skips = SkipReport("own")
    assert [r.id for r in load_jsonl(path, "train", skips=skips, labels="none")] == ["d"]
    assert dict(skips.counts) == {"'text' must be a string, got a JSON list": 1,
                                  "'findings' must be a string, got a JSON object": 1,
                                  "'image' must be a string, got a JSON number": 1}
    with pytest.raises(DataError, match=r"data\.jsonl:1: 'text' must be a string, got a JSON list"):
        load_jsonl(path, "train", policy="error", labels="none")


def test_own_jsonl_reads_synthetic_layout(tmp_path):
    from medvill.data.synthetic import generate_synthetic

    root = tmp_path / "synth"
    generate_synthetic(root, n=20, image_size=64)
    for split in ("train", "validate", "test"):
        mine = load_jsonl(root, split, policy="error", labeler=FakeLabeler())
        ref = sorted(read_jsonl_records(root / f"{split}.jsonl"), key=lambda r: r.id)
        assert [(r.id, r.text, r.image, r.split) for r in mine] == [(r.id, r.text, r.image, r.split) for r in ref]
        assert all(np.array_equal(a.labels, b.labels, equal_nan=True) for a, b in zip(mine, ref))


def test_default_labeler(own_dir):
    """labeler=None means medvill.labeler.label_reports (skipped checks when it is absent)."""
    path = own_dir / "x.jsonl"
    path.write_text(json.dumps({"image": "images/a.png", "text": "Large right pleural effusion.", "split": "train"})
                    + "\n")
    try:
        import medvill.labeler  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="medvill.labeler"):
            load_jsonl(path, "train")
        pytest.skip("medvill.labeler is not available")
    (rec,) = load_jsonl(path, "train")
    assert rec.labels.shape == (14,) and rec.labels[IDX["Pleural Effusion"]] == 1
