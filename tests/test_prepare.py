"""The prepared-image cache: parallel, resumable, skips or errors, exact round trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.data.prepare import (
    INFO,
    MANIFEST,
    PrepareSettingsError,
    load_prepared,
    prepare_cache,
    safe_names,
)
from medvill.data.records import Record, read_jsonl_records
from medvill.data.transforms import Preprocess, load_image, to_tensor
from medvill.labels import NUM_OBSERVATIONS

PRE = Preprocess(image_size=32)


def make_records(root, n=8):
    """n records with small images of different formats, aspects and frames, and awkward ids."""
    rng = np.random.default_rng(1)
    ids = ["p10/s1 study", "A", "a", "plain-id.1", "über", "CON", "x" * 150, "plain-id.1"]
    records = []
    for i in range(n):
        h, w = (60, 40) if i % 2 else (40, 70)
        img = rng.uniform(0.1, 0.9, (h, w))
        img = np.pad(img, 6) if i % 3 == 0 else img  # some with a black frame
        if i % 4 == 1:
            path = root / f"img{i}.png"
            Image.fromarray(np.rint(img * 4095).astype(np.uint16)).save(path)  # 12-bit in 16
        elif i % 4 == 2:
            path = root / f"img{i}.jpg"
            Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(path, quality=95)
        else:
            path = root / f"img{i}.png"
            Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(path)
        labels = np.full(NUM_OBSERVATIONS, np.nan, dtype=np.float32)
        labels[i % NUM_OBSERVATIONS] = 1.0
        labels[(i + 3) % NUM_OBSERVATIONS] = -1.0 if i % 2 else 0.0
        records.append(Record(id=ids[i % len(ids)], image=path, text=f"  report {i}. ", labels=labels,
                              split=("train", "validate", "test")[i % 3], findings=f"f{i}" if i % 2 else "",
                              impression=f"imp {i}"))
    return records


def assert_same_records(loaded, records, output):
    assert len(loaded) == len(records)
    for got, want in zip(loaded, records):
        assert (got.id, got.text, got.split, got.findings, got.impression) == \
            (want.id, want.text, want.split, want.findings, want.impression)
        assert np.array_equal(got.labels, want.labels, equal_nan=True) and got.labels.dtype == np.float32
        assert got.image.is_file() and got.image.parent == (output / "images").absolute()


@pytest.fixture
def records(tmp_path):
    (tmp_path / "src").mkdir()
    return make_records(tmp_path / "src")


def test_prepare_in_process_and_parallel_agree(tmp_path, records):
    s1 = prepare_cache(records, tmp_path / "c1", PRE, workers=1, progress=False)
    s2 = prepare_cache(records, tmp_path / "c2", PRE, workers=2, progress=False, chunksize=3)
    for s in (s1, s2):
        assert (s.n_total, s.n_written, s.n_reused, s.n_skipped, s.skipped) == (8, 8, 0, 0, [])
        assert s.seconds > 0 and s.images_per_second > 0
    loaded = load_prepared(tmp_path / "c1")
    assert_same_records(loaded, records, tmp_path / "c1")
    names = sorted(p.name for p in (tmp_path / "c1" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "c2" / "images").iterdir()) and len(names) == 8
    for name in names:  # same pixels whatever the worker count
        a = np.asarray(Image.open(tmp_path / "c1" / "images" / name))
        assert a.shape == (32, 32) and np.array_equal(a, np.asarray(Image.open(tmp_path / "c2" / "images" / name)))
    # one code path: the cached pixels are what Preprocess gives, and load_image does not crop again
    for record, cached in zip(records, loaded):
        assert np.array_equal(np.asarray(Image.open(cached.image)), np.asarray(PRE(record.image)))
        assert load_image(cached.image, 32).equal(to_tensor(Image.open(cached.image)))
    assert [r.id for r in load_prepared(tmp_path / "c1", split="test")] == [r.id for r in records if r.split == "test"]
    info = json.loads((tmp_path / "c1" / INFO).read_text())
    assert info["status"] == "complete" and info["settings"] == PRE.settings() and info["counts"]["written"] == 8
    assert "records under" in info["source"]
    # the manifest is also plain medvill JSONL
    assert [r.id for r in read_jsonl_records(tmp_path / "c1" / MANIFEST)] == [r.id for r in records]


def test_resume_after_partial_run(tmp_path, records):
    out = tmp_path / "cache"
    first = prepare_cache(records[:4], out, PRE, workers=1, progress=False)
    assert first.n_written == 4
    (out / "images" / ".half-written.png.tmp-123").write_bytes(b"partial")  # as left by a kill
    info = json.loads((out / INFO).read_text())
    (out / INFO).write_text(json.dumps({**info, "status": "incomplete"}))
    with pytest.raises(ValueError, match="unfinished"):
        load_prepared(out)
    second = prepare_cache(records, out, PRE, workers=2, progress=False, chunksize=2)
    assert (second.n_reused, second.n_written, second.n_skipped) == (4, 4, 0)
    assert not list((out / "images").glob(".*tmp*"))
    assert_same_records(load_prepared(out), records, out)
    third = prepare_cache(records, out, PRE, workers=1, progress=False)
    assert (third.n_reused, third.n_written) == (8, 0) and third.images_per_second == 0


def test_corrupt_and_missing_images_skip_or_error(tmp_path, records, caplog):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    broken = records[:3] + [Record(id="bad", image=tmp_path / "bad.png", text="t"),
                            Record(id="gone", image=tmp_path / "gone.png", text="t")] + records[3:5]
    with caplog.at_level(logging.WARNING, logger="medvill.data.prepare"):
        s = prepare_cache(broken, tmp_path / "skip", PRE, workers=2, progress=False, chunksize=2)
    assert (s.n_written, s.n_skipped) == (5, 2) and [rid for rid, _ in s.skipped] == ["bad", "gone"]
    assert "bad.png" in s.skipped[0][1] and "gone.png" in s.skipped[1][1]
    assert any("skipped 2 of 7" in r.getMessage() and "bad.png" in r.getMessage() for r in caplog.records)
    assert [r.id for r in load_prepared(tmp_path / "skip")] == [r.id for r in records[:5]]
    assert json.loads((tmp_path / "skip" / INFO).read_text())["skipped"][0]["id"] == "bad"
    with pytest.raises(ValueError, match="bad.png"):
        prepare_cache(broken, tmp_path / "err", PRE, workers=1, policy="error", progress=False)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        prepare_cache(broken[4:], tmp_path / "err2", PRE, workers=2, policy="error", progress=False, chunksize=1)


def test_intensity_warnings_reach_the_summary_and_the_log(tmp_path, records, caplog):
    Image.fromarray(np.full((40, 40), 90, np.uint8), mode="L").save(tmp_path / "blank.png")
    batch = records[:2] + [Record(id="blank", image=tmp_path / "blank.png", text="t")]
    with caplog.at_level(logging.WARNING, logger="medvill.data.transforms"):
        s = prepare_cache(batch, tmp_path / "c", PRE, workers=2, progress=False, chunksize=1)
    assert s.n_written == 3 and [rid for rid, _ in s.warned] == ["blank"] and "nearly constant" in s.warned[0][1]
    assert sum("blank.png" in r.getMessage() for r in caplog.records) == 1  # logged by the parent, once
    again = prepare_cache(batch, tmp_path / "c", PRE, workers=1, progress=False)
    assert again.n_reused == 3 and [rid for rid, _ in again.warned] == ["blank"]  # kept in the PNG marker


def test_settings_mismatch_and_foreign_folders(tmp_path, records):
    out = tmp_path / "cache"
    prepare_cache(records[:2], out, PRE, workers=1, progress=False)
    with pytest.raises(PrepareSettingsError, match=r"image_size 32 -> 48.*another output folder.*--overwrite"):
        prepare_cache(records[:2], out, Preprocess(image_size=48), workers=1, progress=False)
    s = prepare_cache(records[:2], out, Preprocess(image_size=48), workers=1, progress=False, overwrite=True)
    assert s.n_written == 2 and np.asarray(Image.open(load_prepared(out)[0].image)).shape == (48, 48)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PrepareSettingsError, match="not a medvill prepared-image cache"):
        prepare_cache(records[:2], tmp_path / "mine", PRE, workers=1, progress=False, overwrite=True)
    with pytest.raises(ValueError, match="policy"):
        prepare_cache(records[:2], tmp_path / "x", PRE, policy="ignore")


def test_safe_names_are_unique_and_safe():
    ids = ["p10/s1 study", "A", "a", "ok-1.2", "ok-1.2", "CON", "..", "", "x" * 150]
    names = safe_names(ids)
    assert names[1] == "A" and names[3] == "ok-1.2"
    assert len({n.lower() for n in names}) == len(ids)
    assert all(n and "/" not in n and " " not in n and len(n) <= 100 and not n.startswith(".") for n in names)
    assert names == safe_names(ids)  # deterministic


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_do_not_outlive_a_killed_prepare(tmp_path):
    """SIGKILL of `medvill prepare --workers 2` mid-run: its workers (and multiprocessing's
    resource tracker) exit within seconds instead of working on, reparented to PID 1."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(root / "images" / "x-0.png")  # slow to decode: work for minutes
    rows = []
    for i in range(2000):
        if i:
            os.link(root / "images" / "x-0.png", root / "images" / f"x-{i}.png")
        rows.append(json.dumps({"id": f"x-{i}", "image": f"images/x-{i}.png", "text": "Clear lungs.",
                                "split": "train"}))
    (root / "all.jsonl").write_text("\n".join(rows) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "medvill", "prepare", "--dataset", "jsonl",
                             "--root", str(root / "all.jsonl"),
                             "--image-size", "224", "--workers", "2", "--output", str(tmp_path / "cache")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(kids := _children(proc.pid)) < 3:  # 2 workers + the resource tracker
            assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
            time.sleep(0.05)
        time.sleep(1.0)  # the workers are busy now
        assert proc.poll() is None, "prepare finished before it could be killed: give it more work"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "worker processes survived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_prepare_reports_the_rows_the_loader_skipped(tmp_path):
    from typer.testing import CliRunner

    from medvill.cli import app

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.fromarray(np.full((40, 40), 60 * i, dtype=np.uint8), mode="L").save(root / "images" / f"p{i}.png")
        rows.append(json.dumps({"id": f"p{i}", "image": f"images/p{i}.png", "text": "Clear lungs.", "split": "train"}))
    rows.append(json.dumps({"id": "gone", "image": "images/gone.png", "text": "Clear.", "split": "train"}))
    rows.append(json.dumps({"id": "empty", "image": "images/p0.png", "text": " ", "split": "train"}))
    rows.append("{broken")
    (root / "all.jsonl").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["prepare", "--dataset", "jsonl", "--root", str(root / "all.jsonl"),
                                      "--image-size", "32", "--workers", "1", "--output", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "3 rows skipped by the loader" in " ".join(result.output.split())
    info = json.loads((tmp_path / "cache" / "prepare.json").read_text())
    assert info["counts"]["written"] == 4 and info["loader_skipped"]["total"] == 3
    assert info["loader_skipped"]["reasons"]["empty report"] == 1 and len(info["loader_skipped"]["first"]) == 3


def test_every_name_stays_importable_from_medvill_data_prepare():
    """prepare.py writes the cache; the format, the worker and the reader live in their own
    modules, and what code imports from ``medvill.data.prepare`` is the same object there."""
    from medvill.data import prepare, prepare_format, prepare_read

    for name in prepare.__all__:
        assert hasattr(prepare, name), name
    assert prepare.load_prepared is prepare_read.load_prepared
    assert prepare.training_input_settings is prepare_read.training_input_settings
    assert prepare.read_prepare_info is prepare_format.read_prepare_info and prepare.INFO == "prepare.json"
