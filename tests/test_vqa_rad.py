"""VQA-RAD loader (real questions and images in ../shared/data/vqa_rad when present)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from _loader_data import VQA_RAD, need, tiny_jpg

from medvill.data.common import DataError
from medvill.data.records import SkipReport
from medvill.data.vqa_rad import build_answer_vocab, load_vqa_rad

vqa = need(VQA_RAD / "trainset.json")


@vqa
def test_vqa_rad_validation_by_question_asks_about_training_images():
    train = load_vqa_rad(VQA_RAD, "train", validate_by="question", policy="error")
    val = load_vqa_rad(VQA_RAD, "validate", validate_by="question", policy="error")
    assert len(train) + len(val) == 3064 and 0.08 <= len(val) / 3064 <= 0.12
    assert not {i.qid for i in train} & {i.qid for i in val}
    shared = {i.image.name for i in val} & {i.image.name for i in train}
    assert len(shared) > 0.8 * len({i.image.name for i in val})  # as in the official test split
    assert [i.qid for i in load_vqa_rad(VQA_RAD, "validate", validate_by="question")] == [i.qid for i in val]
    with pytest.raises(ValueError, match="validate_by"):
        load_vqa_rad(VQA_RAD, "validate", validate_by="organ")


@vqa
def test_vqa_rad_real_counts_and_quirks():
    raw = json.loads((VQA_RAD / "trainset.json").read_text())
    for organ, n_q, n_img in (("ALL", 3064, 314), ("CHEST", 1088, 107)):
        train = load_vqa_rad(VQA_RAD, "train", organ=organ, policy="error")
        val = load_vqa_rad(VQA_RAD, "validate", organ=organ, policy="error")
        imgs_t, imgs_v = {i.image.name for i in train}, {i.image.name for i in val}
        assert len(train) + len(val) == n_q and len(imgs_t | imgs_v) == n_img
        assert not imgs_t & imgs_v  # grouped by image
        assert 0.09 <= len(val) / n_q <= 0.13
        assert all(i.image.is_file() for i in train + val)
        assert {i.split for i in train} == {"train"} and {i.split for i in val} == {"validate"}
        if organ == "CHEST":
            assert {i.organ for i in train + val} == {"CHEST"}
            chest_val = {i.qid for i in val}
        else:
            all_val = {i.qid for i in val}
            items = train + val
    assert chest_val <= all_val  # the carve does not depend on the organ filter
    assert Counter(i.answer_type for i in items) == {"CLOSED": 1823, "OPEN": 1241}  # "CLOSED " fixed
    assert sum(str(q["answer_type"]).endswith(" ") for q in raw) == 2
    assert all(i.answer == i.answer.strip().lower() for i in items)
    by_qid = {i.qid: i for i in items}
    assert by_qid["1"].answer == "yes" and raw[0]["answer"] == "Yes"
    assert sorted({i.answer for i in items if i.answer.isdigit()}) == ["12", "2", "4"]  # int answers
    assert [i.qid for i in train] == sorted((i.qid for i in train), key=int)
    with pytest.raises(FileNotFoundError, match="testset.json"):
        load_vqa_rad(VQA_RAD, "test")
    vocab = build_answer_vocab(train)
    assert vocab[:2] == ["no", "yes"] and len(vocab) == len(set(vocab))
    assert set(build_answer_vocab(train + val)) == set(vocab)  # validation answers never leak in
    counts = Counter(i.answer for i in train)
    assert build_answer_vocab(train, min_count=3) == [a for a in vocab if counts[a] >= 3]


def test_vqa_rad_official_layout(tmp_path):
    root = tmp_path / "vqa"
    folder = root / "VQA_RAD Image Folder"
    for name in ("synpic1.jpg", "synpic2.jpg", "synpic3.jpg"):
        tiny_jpg(folder / name)
    rows = [
        dict(qid=1, image_name="synpic1.jpg", question=" Is there an effusion? ", answer="Yes ",
             answer_type="CLOSED ", question_type="PRES", image_organ="CHEST", phrase_type="freeform",
             question_frame="Is there a pleural effusion in the image?", question_rephrase="NULL"),
        dict(qid=2, image_name="synpic1.jpg", question="Which side?", answer=" Left  lung",
             answer_type="OPEN", question_type="pos", image_organ="chest", phrase_type="para", question_frame="NULL"),
        dict(qid=3, image_name="synpic2.jpg", question="Is the brain normal?", answer="no",
             answer_type="closed", question_type="ABN", image_organ="HEAD", phrase_type="freeform"),
        dict(qid=4, image_name="synpic3.jpg", question="How many?", answer=4, answer_type="OPEN",
             question_type="COUNT", image_organ="CHEST ", phrase_type="test_freeform"),
        dict(qid=5, image_name="synpic3.jpg", question="What?", answer="x", answer_type="MAYBE",
             question_type="PRES", image_organ="CHEST", phrase_type="test_para"),
        dict(qid=6, image_name="missing.jpg", question="What?", answer="x", answer_type="OPEN",
             question_type="PRES", image_organ="CHEST", phrase_type="freeform"),
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    skips = SkipReport("vqa")
    train = load_vqa_rad(root, "train", validate_fraction=0.0, skips=skips)
    assert [(i.qid, i.answer, i.answer_type, i.organ, i.question) for i in train] == [
        ("1", "yes", "CLOSED", "CHEST", "Is there an effusion?"),
        ("1-frame", "yes", "CLOSED", "CHEST", "Is there a pleural effusion in the image?"),
        ("2", "left lung", "OPEN", "CHEST", "Which side?"), ("3", "no", "CLOSED", "HEAD", "Is the brain normal?")]
    assert train[1].phrase_type == "frame" and train[1].image == train[0].image
    assert train[2].question_type == "POS" and train[0].image == root / "VQA_RAD Image Folder" / "synpic1.jpg"
    # the whole file is checked: qid 5 (test) has a bad answer type, qid 6 a missing image
    assert skips.total == 2 and "(qid 6): missing image" in skips.examples[1]
    test = load_vqa_rad(root, "test", organ="chest")
    assert [(i.qid, i.answer, i.split) for i in test] == [("4", "4", "test")]
    assert [i.qid for i in load_vqa_rad(root, "train", organ="CHEST", validate_fraction=0.0, expand_frames=False)] \
        == ["1", "2"]
    with pytest.raises(DataError, match=r"\[4\] \(qid 5\): answer_type 'MAYBE'"):
        load_vqa_rad(root, "test", policy="error")
    with pytest.raises(FileNotFoundError, match="trainset.json"):
        load_vqa_rad(tmp_path, "train")


def test_vqa_rad_reads_synthetic(tmp_path):
    from medvill.data.synthetic import generate_synthetic

    root = tmp_path / "synth"
    summary = generate_synthetic(root, n=20, image_size=64)
    got = {s: load_vqa_rad(root, s, policy="error") for s in ("train", "validate", "test")}
    n_train = len(json.loads((root / "trainset.json").read_text()))
    assert len(got["train"]) + len(got["validate"]) == n_train and got["validate"]
    assert len(got["test"]) == len(json.loads((root / "testset.json").read_text())) == 4 * summary.counts["test"]
    assert not {i.image for i in got["train"]} & {i.image for i in got["validate"]}
    assert all(i.image.is_file() and i.organ == "CHEST" for v in got.values() for i in v)
    assert {i.answer_type for v in got.values() for i in v} == {"CLOSED", "OPEN"}
    assert len(load_vqa_rad(root, "train", organ="CHEST")) == len(got["train"])
    assert load_vqa_rad(root, "train", organ="HEAD") == []


def test_vqa_rad_file_with_a_bad_byte_is_named(tmp_path):
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    (tmp_path / "VQA_RAD Dataset Public.json").write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"VQA_RAD Dataset Public\.json: byte 0xe9 at offset \d+ is not UTF-8"):
        load_vqa_rad(tmp_path, "train")
