"""medvill.Pipeline: checkpoint discovery, training-identical preprocessing, every task on
paths, PIL images and arrays, batching, the retrieval feature cache, the generate command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medvill import Pipeline
from medvill.checkpoint_files import INPUT_INFO
from medvill.cli import app
from medvill.data.prepare import prepare_cache
from medvill.data.registry import load_records
from medvill.data.task_data import ImageTextDataset
from medvill.data.transforms import Preprocess, load_image
from medvill.inference import AttentionMaps, MissingTaskError, ModelInput, find_checkpoints
from medvill.labels import CHEXPERT_OBSERVATIONS
from medvill.tokenization import MedTokenizer


@pytest.fixture(scope="module")
def pipe(tiny_demo_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_demo_dir, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def records(synthetic_root):
    return load_records("synthetic", synthetic_root, "test")


def kinds(path):
    """The same image as a path, a str path, a PIL image and a numpy array."""
    return [path, str(path), Image.open(path), np.asarray(Image.open(path))]


# ------------------------------------------------------------------ the package

def test_the_package_exports_its_public_names():
    """medvill.inference is a package (checkpoints, inputs, outputs, pipeline); every public
    name is importable from it, and medvill.Pipeline is its Pipeline."""
    import medvill
    import medvill.inference as inference

    assert medvill.Pipeline is inference.Pipeline
    assert sorted(inference.__all__) == sorted(set(inference.__all__))
    for name in inference.__all__:
        assert getattr(inference, name) is not None, name
    # the names the rest of medvill imports from it
    assert {"AttentionMaps", "EXPLAIN_ORDER", "MissingTaskError", "ModelInput", "Pipeline", "RetrievalHit", "TASKS",
            "find_checkpoints", "image_from_tensor"} <= set(inference.__all__)
    assert inference.Pipeline.__module__ == "medvill.inference.pipeline"


# ------------------------------------------------------------------ checkpoints

def test_from_pretrained_picks_bar_by_default_and_model_by_name(tiny_demo_dir, pipe):
    assert pipe.tasks == ("classification", "retrieval", "vqa", "generation")
    assert {t: d["model"] for t, d in pipe.describe().items()} == dict.fromkeys(pipe.tasks, "MedViLL-BAR")
    ft = Pipeline.from_pretrained(tiny_demo_dir, model="FT-only", device="cpu")
    assert ft.tasks == ("classification",)
    assert ft.checkpoint_path("classification").name == "classification-FT-only"
    with pytest.raises(MissingTaskError, match="no generation checkpoint"):
        ft.generate(tiny_demo_dir / "x.png")
    with pytest.raises(FileNotFoundError, match="no checkpoint named 'nope'.*FT-only"):
        Pipeline.from_pretrained(tiny_demo_dir, model="nope")
    # neither the pre-training checkpoint nor a baseline (TieNet; CNN & Transformer, whose
    # classifier class is MedViLL's own on another trunk) is a MedViLL task checkpoint
    assert sorted(c.path.name for c in find_checkpoints(tiny_demo_dir)) == sorted(
        [f"{t}-MedViLL-BAR" for t in pipe.tasks] + ["classification-FT-only"])
    with pytest.raises(ValueError, match="TieNet.*MedViLL task models"):
        Pipeline.from_pretrained(tiny_demo_dir / "finetune" / "classification-TieNet")
    with pytest.raises(ValueError, match="CNN & Transformer baseline.*MedViLL task models"):
        Pipeline.from_pretrained(tiny_demo_dir / "finetune" / "classification-CNN-Transformer")


def test_single_checkpoint_and_missing_task_error(tiny_demo_dir, records, tmp_path):
    vqa = Pipeline.from_pretrained(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR", device="cpu")
    assert vqa.tasks == ("vqa",)
    for call in (lambda: vqa.classify(records[0].image), lambda: vqa.retrieve("a report", [records[0].image]),
                 lambda: vqa.generate(records[0].image)):
        with pytest.raises(MissingTaskError, match="no (classification|retrieval|generation) checkpoint.*vqa"):
            call()
    with pytest.raises(ValueError, match="pre-training checkpoint"):
        Pipeline.from_pretrained(tiny_demo_dir / "pretrain-bar")
    with pytest.raises(FileNotFoundError, match="no fine-tuned checkpoint"):
        Pipeline.from_pretrained(tmp_path)  # a folder without any


def test_several_checkpoints_without_default_need_a_name(tiny_demo_dir, tmp_path):
    for name in ("classification-FT-only", "classification-MedViLL-BAR"):
        shutil.copytree(tiny_demo_dir / "finetune" / name, tmp_path / "finetune" / name.replace("MedViLL-BAR", "other"))
    with pytest.raises(ValueError, match="several classification checkpoints.*model=NAME"):
        Pipeline.from_pretrained(tmp_path)
    pipe = Pipeline.from_pretrained(tmp_path, model="other")
    assert pipe.checkpoint_path("classification").name == "classification-other"


# ------------------------------------------------------------------ preprocessing

def test_preprocessing_is_the_training_preprocessing(pipe, records, tiny_demo_dir, tmp_path):
    tok = MedTokenizer.from_pretrained(pipe.checkpoint_path("classification"))
    ds = ImageTextDataset([r.image for r in records[:2]], [r.text for r in records[:2]], np.zeros((2, 14)), tok, 64, 64)
    for i in range(2):
        for x in kinds(records[i].image):
            assert torch.equal(pipe.preprocess(x, "classification"), ds[i]["images"])
    # a 16-bit and an RGB file with margins: path, PIL and array all give what training reads
    rng = np.random.default_rng(0)
    deep = np.zeros((90, 70), dtype=np.uint16)
    deep[6:84, 4:66] = rng.integers(300, 4000, (78, 62))
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgb = np.zeros((70, 90, 3), dtype=np.uint8)
    rgb[3:67, 5:85] = rng.integers(10, 250, (64, 80, 3))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for f in ("deep.png", "rgb.png"):
        want = load_image(tmp_path / f, 64)
        for x in kinds(tmp_path / f):
            assert torch.equal(pipe.preprocess(x), want), (f, type(x))
    # the checkpoint records that training read the original files
    info = json.loads((pipe.checkpoint_path("classification") / INPUT_INFO).read_text())
    assert info["cache"] is None and info["image_size"] == 64
    with pytest.raises(TypeError, match="file path, a PIL image or a numpy array"):
        pipe.preprocess(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        pipe.preprocess(np.zeros((4, 4, 2), dtype=np.uint8))


def test_model_trained_on_a_prepared_cache_gets_the_cache_preprocessing(records, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(records[:3], cache, Preprocess(image_size=96, crop_margins=True), workers=1, progress=False)
    prepared = load_records("synthetic", cache, "test")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from medvill.data.prepare import training_input_settings

    (ckpt / INPUT_INFO).write_text(json.dumps(training_input_settings(cache, 64)))
    inputs = ModelInput.for_checkpoint(ckpt, 64)
    assert inputs.cache is not None and inputs.cache.image_size == 96
    for raw, cached in zip(records[:3], prepared, strict=True):
        training = load_image(cached.image, 64)  # what training read: the cached image, resized
        assert torch.equal(inputs(raw.image), training)
        assert torch.equal(inputs(np.asarray(Image.open(raw.image))), training)
        assert torch.equal(inputs(cached.image), training)  # a prepared image is not prepared twice
    assert not torch.equal(ModelInput(64)(records[0].image), load_image(prepared[0].image, 64))  # the two differ


# ------------------------------------------------------------------ tasks

def test_every_method_on_paths_pil_and_arrays(pipe, records):
    r = records[0]
    probs = [pipe.classify(x, r.text) for x in kinds(r.image)]
    assert list(probs[0]) == list(CHEXPERT_OBSERVATIONS) and all(0 < p < 1 for p in probs[0].values())
    assert all(p == probs[0] for p in probs)
    reports = [pipe.generate(x, max_length=6) for x in kinds(r.image)]
    assert isinstance(reports[0], str) and reports[0] and all(t == reports[0] for t in reports)
    answers = [pipe.answer(x, "is there a pleural effusion?") for x in kinds(r.image)]
    assert answers[0].answer == answers[0].top[0][0] and 0 < answers[0].probability <= 1
    assert all(a == answers[0] for a in answers)
    pool = [q.text for q in records[:6]]
    ranked = [[(h.index, round(h.score, 5)) for h in pipe.retrieve(x, pool, k=None)] for x in kinds(r.image)]
    assert sorted(i for i, _ in ranked[0]) == list(range(6)) and all(rk == ranked[0] for rk in ranked)
    maps = [pipe.explain(x, r.text) for x in kinds(r.image)]
    assert all(np.array_equal(m.maps, maps[0].maps) for m in maps)


def test_report_query_ranks_a_pool_of_mixed_image_inputs(pipe, records):
    pool = [records[0].image, Image.open(records[1].image), np.asarray(Image.open(records[2].image)),
            str(records[3].image)]
    hits = pipe.retrieve(records[1].text, pool, k=2)
    assert [h.rank for h in hits] == [1, 2] and hits[0].score >= hits[1].score
    assert hits[0].item is pool[hits[0].index] and abs(hits[0].probability - 1 / (1 + np.exp(-hits[0].score))) < 1e-9
    full = pipe.retrieve(records[1].text, [records[i].image for i in range(4)], k=None)
    assert {h.index: round(h.score, 5) for h in full} == {h.index: round(h.score, 5) for h in
                                                           pipe.retrieve(records[1].text, pool, k=None)}
    with pytest.raises(TypeError, match="an image query ranks reports"):
        pipe.retrieve(records[0].image, [records[1].image])
    long_report = " ".join([records[1].text] * 3)  # longer than a file name may be: still a report query
    assert len(pipe.retrieve(long_report, pool, k=None)) == 4
    assert pipe.retrieve(str(records[1].image), [records[0].text])[0].index == 0  # an existing file: an image query


def test_batch_equals_one_by_one(pipe, records):
    rs = records[:5]  # batch_size 2: batches of 2, 2, 1
    batch = pipe.classify([r.image for r in rs], [r.text for r in rs])
    for r, b in zip(rs, batch, strict=True):
        single = pipe.classify(r.image, r.text)
        assert np.allclose(list(single.values()), list(b.values()), atol=1e-5)
    assert pipe.generate([r.image for r in rs], max_length=5) == [pipe.generate(r.image, max_length=5) for r in rs]
    beams = pipe.generate([r.image for r in rs[:3]], num_beams=2, max_length=4)
    assert beams == [pipe.generate(r.image, num_beams=2, max_length=4) for r in rs[:3]]
    answers = pipe.answer([r.image for r in rs], "is the heart enlarged?")
    assert [a.answer for a in answers] == [pipe.answer(r.image, "is the heart enlarged?").answer for r in rs]
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        pipe.answer([r.image for r in rs[:3]], ["a?", "b?"])


def test_retrieval_caches_cnn_features(tiny_demo_dir, records):
    pipe = Pipeline.from_pretrained(tiny_demo_dir, device="cpu", batch_size=4)
    pool = [r.image for r in records[:6]]
    first = pipe.retrieve(records[0].text, pool, k=None)
    assert pipe.cnn_passes == 6
    # files are keyed by path, in-memory images by their preprocessed pixels
    again = pipe.retrieve(records[1].text, pool + [Image.open(records[2].image)], k=None)
    assert pipe.cnn_passes == 7 and len(again) == 7
    pipe.retrieve(records[1].text, [np.asarray(Image.open(records[2].image))] + pool)  # same pixels: cached
    assert pipe.cnn_passes == 7
    assert again[[h.index for h in again].index(6)].score == pytest.approx(
        again[[h.index for h in again].index(2)].score, abs=1e-6)
    pipe.retrieve(records[0].image, [r.text for r in records[:3]])  # image query: its features are cached too
    assert pipe.cnn_passes == 7
    assert [h.index for h in pipe.retrieve(records[0].text, pool, k=None)] == [h.index for h in first]
    small = Pipeline.from_pretrained(tiny_demo_dir, device="cpu", feature_cache_size=2)
    small.retrieve(records[0].text, pool)
    small.retrieve(records[0].text, pool)
    assert small.cnn_passes == 6 + 4  # it keeps only the 2 most recently used images


def test_explain_returns_attention_on_the_visual_grid(pipe, records):
    r = records[0]
    maps = pipe.explain(r.image, r.text)
    tok = MedTokenizer.from_pretrained(pipe.checkpoint_path("classification"))
    assert isinstance(maps, AttentionMaps) and maps.tokens == tok.tokens(r.text)
    assert maps.maps.shape == (2, 2, len(maps.tokens), 4, 4)  # tiny: 2 layers, 2 heads, 64 px / 16 = 4x4 grid
    assert (maps.maps >= 0).all() and (maps.maps.sum(axis=(-1, -2)) <= 1 + 1e-5).all()
    assert maps.image.shape == (64, 64) and maps.image.dtype == np.uint8
    assert np.array_equal(maps.image, np.asarray(Preprocess(image_size=64)(r.image)))
    word = next(t for t in maps.tokens if t.isalpha())
    assert np.allclose(maps.map(word, 1, 0), maps.maps[1, 0, maps.tokens.index(word)])
    assert np.allclose(maps.map(0), maps.maps[:, :, 0].mean(axis=(0, 1)))
    gen = pipe.explain(r.image, r.text, task="generation")
    assert gen.scheme == "s2s" and gen.maps.shape[2] == len(maps.tokens)
    with pytest.raises(KeyError, match="not among"):
        maps.map("zzzz")


# ------------------------------------------------------------------ command line

def test_generate_command(tiny_demo_dir, records, tmp_path):
    out = tmp_path / "reports.jsonl"
    args = ["generate", str(records[0].image), str(records[1].image), "--checkpoint", str(tiny_demo_dir),
            "--max-length", "5", "--output", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["image"] for row in rows] == [str(records[0].image), str(records[1].image)]
    assert all(row["report"] and row["report"] in result.output for row in rows)
    bad = CliRunner().invoke(app, ["generate", str(records[0].image), "--checkpoint",
                                   str(tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR")])
    assert bad.exit_code == 2 and "no generation checkpoint" in bad.output


def test_smaller_weights_in_the_pipeline_and_the_command(tiny_demo_dir, records, tmp_path):
    """weights='int8' / 'bf16' convert every loaded model; generation still gives reports and
    classification stays close to fp32; bad values and int8 on a GPU are refused up front."""
    from medvill.modeling.weights import Bf16Linear

    images = [r.image for r in records[:3]]
    fp32 = Pipeline.from_pretrained(tiny_demo_dir, device="cpu")
    ref = fp32.classify(images[0], records[0].text)
    for weights in ("bf16", "int8"):
        low = Pipeline.from_pretrained(tiny_demo_dir, device="cpu", weights=weights)
        assert low.weights == weights
        reports = low.generate(images, max_length=5)
        assert len(reports) == 3 and all(isinstance(r, str) for r in reports)
        query = low._get("generation").model.medvill.encoder.layer[0].attention.self.qkv
        assert isinstance(query, Bf16Linear if weights == "bf16" else torch.ao.nn.quantized.dynamic.Linear)
        probs = low.classify(images[0], records[0].text)
        assert max(abs(probs[k] - ref[k]) for k in ref) < 0.05
    with pytest.raises(ValueError, match="weights must be one of fp32, bf16, int8"):
        Pipeline.from_pretrained(tiny_demo_dir, device="cpu", weights="fp16")
    with pytest.raises(ValueError, match="CPU only"):
        Pipeline.from_pretrained(tiny_demo_dir, device="cuda", weights="int8")
    with pytest.raises(ValueError, match="CPU only"):
        Pipeline.from_pretrained(tiny_demo_dir, device="cpu", weights="int8").to("cuda")
    out = tmp_path / "reports.jsonl"
    args = ["generate", str(images[0]), "--checkpoint", str(tiny_demo_dir), "--max-length", "5", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--weights", "int8", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["report"]
    bad = CliRunner().invoke(app, [*args, "--weights", "int4"])
    assert bad.exit_code == 2 and "weights must be one of fp32, bf16, int8" in bad.output


def test_classify_gives_the_evaluation_probabilities(pipe, records):
    """The Pipeline (its own batching, preprocessing and tokenisation) reproduces what the
    evaluation loop computes on the same test split."""
    from torch.utils.data import DataLoader

    from medvill.data.task_data import ImageTextCollator
    from medvill.modeling.heads import MedViLLForClassification
    from medvill.tasks.classification import ClassificationTask, binary_targets

    ckpt = pipe.checkpoint_path("classification")
    model, tok = MedViLLForClassification.from_pretrained(ckpt), MedTokenizer.from_pretrained(ckpt)
    ds = ImageTextDataset([r.image for r in records], [r.text for r in records], binary_targets(records), tok, 64, 64)
    loader = DataLoader(ds, batch_size=8, collate_fn=ImageTextCollator(tok.pad_id))
    want, _ = ClassificationTask().predict(model, loader)
    got = pipe.classify([r.image for r in records], [r.text for r in records])
    assert np.allclose(np.array([list(g.values()) for g in got]), want, atol=1e-5)
