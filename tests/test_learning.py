"""The fixes that let the models learn (issue: models that learn), each with a test that
would fail without it: report generation learns from every token and learns to stop,
classification from the image alone, thresholds chosen on validation, a VQA model that reads
the question, length-grouped batches, and the in-memory image cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader

from medvill.config import ConfigError, MaskScheme, load_config
from medvill.data.pairs import (
    LengthGroupedSampler,
    MLMSpec,
    ReportPairCollator,
    ReportPairDataset,
    blank_reports,
    mask_tokens,
)
from medvill.data.splits import load_split
from medvill.generation import GenerationConfig, generate, reference_nll
from medvill.inference import Pipeline
from medvill.metrics.classification import classification_metrics, select_micro_threshold, select_thresholds
from medvill.metrics.generation import clinical_efficacy
from medvill.modeling.heads import MedViLLForPretraining
from medvill.modeling.masks import pseudo_mask_attention
from medvill.recipes.common import build_tokenizer, model_config_for
from medvill.recipes.evaluate import run_evaluation
from medvill.recipes.finetune import run_finetuning
from medvill.tasks.classification import read_thresholds
from medvill.tasks.generation import GenerationTask
from medvill.train.loop import fit


def tiny(root, steps, *extra):
    return load_config("tiny", None, [f"data.root={root}", f"train.max_steps={steps}", "train.progress=false",
                                      "train.log_every=5", *extra])


# ----------------------------------------------------------------------------- generation


def test_pseudo_mask_queries_see_exactly_the_tokens_before_them():
    valid = torch.tensor([[True, True, True, False]])
    m = pseudo_mask_attention(2, valid)[0]  # V = 2 rows, 4 real, 4 queries
    nv, n = 2, 4
    for t in range(3):
        q = nv + n + t
        assert m[q, :nv].all()  # the image
        assert m[q, nv:nv + t].all() and not m[q, nv + t:nv + n].any()  # real tokens before t only
        assert m[q, q] and m[q, nv + n:].sum() == 1  # itself, no other query
    assert not m[:nv, nv:].any()  # V sees no text (S2S)
    assert not m[nv + 3].any() and not m[nv + n + 3].any()  # PAD rows closed
    assert not m[:, nv + 3].any()  # PAD column closed


def test_full_objective_scores_every_token_including_sep(synthetic_root):
    cfg = tiny(synthetic_root, 0)
    records = load_split(cfg, "train")[:4]
    tok = build_tokenizer(cfg, [r.text for r in records])
    mcfg = model_config_for(cfg, tok)
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg).eval()
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, matching=False)
    b = ReportPairCollator(tok.pad_id)([ds[i] for i in range(4)])
    out = model(b["text_ids"], b["text_valid"], MaskScheme.S2S, images=b["images"], matching=False, all_tokens=True)
    nll, n = reference_nll(model, b["images"], b["text_ids"], b["text_valid"])
    assert out.mlm_loss.item() == pytest.approx((nll.sum() / n.sum()).item(), rel=1e-5)
    assert int(n.sum()) == int(b["text_valid"].sum())  # SEP_L counted: the end of a report is a target
    # the gradient reaches the SEP_L prediction: its logit row changes the loss
    model.train()
    out = model(b["text_ids"], b["text_valid"], MaskScheme.S2S, images=b["images"], matching=False, all_tokens=True)
    out.loss.backward()
    assert model.mlm_head.bias.grad[tok.sep_id].abs() > 0


def test_sparse_generation_mlm_can_mask_the_end_token():
    rng = np.random.default_rng(0)
    ids = np.array([5, 6, 7, 8, 102])
    hits = 0
    for _ in range(200):
        _, labels = mask_tokens(ids, rng, MLMSpec(prob=0.4), 103, np.arange(5, 50))
        hits += labels[-1] == 102
    assert hits > 20  # pre-training never targets SEP_L (ids[:-1]); generation's mask_end=True does


def test_generation_finetuning_learns_to_end_reports(synthetic_root, tmp_path):
    """After a short fine-tuning on a few reports, free-running greedy decoding reproduces
    each report and ends it with [SEP] where the reference ends, well before the length limit
    (the old sparse objective never targeted [SEP], so every report ran to the limit)."""
    cfg = tiny(synthetic_root, 200, "train.batch_size=8", "train.lr=5e-3", "train.warmup_steps=10")
    records = load_split(cfg, "train")
    tok = build_tokenizer(cfg, [r.text for r in records])
    records = [r for r in records if len(tok.encode_batch([r.text])[0]) <= 40][:4]  # well under the limit
    mcfg = model_config_for(cfg, tok)
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, matching=False)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=ReportPairCollator(tok.pad_id),
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg)
    h = fit(model, GenerationTask("full"), loader, cfg.train, tmp_path / "gen", lambda *a: None).history
    assert h[-1]["mlm_loss"] < 0.5 * h[0]["mlm_loss"]
    images = torch.stack([ds[i]["images"] for i in range(4)])
    out = generate(model, images, GenerationConfig(max_length=mcfg.max_text_len - 1))
    assert out == [ids[:-1].tolist() for ids in ds.text_ids]  # every report, ended where it ends


def test_generation_objective_is_validated():
    with pytest.raises(ConfigError, match="generation_objective"):
        load_config("tiny", None, ["finetune.generation_objective=teacher"])
    with pytest.raises(ConfigError, match="image_only_prob"):
        load_config("tiny", None, ["finetune.image_only_prob=1.5"])


# ----------------------------------------------------------------------------- classification


def test_blank_reports_keep_sep_only():
    ids = torch.tensor([[5, 6, 102, 0], [7, 102, 0, 0]])
    valid = ids != 0
    new_ids, new_valid = blank_reports(ids, valid, torch.tensor([True, False]), 102, 0)
    assert new_ids.tolist() == [[102, 0, 0, 0], [7, 102, 0, 0]]
    assert new_valid.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert ids[0, 0] == 5  # not in place


def test_thresholds_are_chosen_on_validation_to_maximise_f1():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    p = np.array([[0.30, 0.1], [0.25, 0.2], [0.10, 0.9], [0.05, 0.3]])
    t = select_thresholds(y, p)
    assert t[0] == pytest.approx(0.25) and t[1] == pytest.approx(0.9)
    m = classification_metrics(y, p, thresholds=t, names=("a", "b"))
    # at 0.5 only the 0.9 is positive: tp 1 of 3 positives -> F1 0.5; the chosen thresholds separate all
    assert m["f1_micro"] == pytest.approx(0.5) and m["f1_micro_val_thr"] == pytest.approx(1.0)
    assert select_thresholds(np.zeros((3, 1)), np.ones((3, 1)) * 0.7)[0] == 0.5  # no positive: the default


def test_micro_f1_uses_the_shared_threshold_that_maximises_micro_f1():
    """Per-label thresholds maximise each label's F1 (macro), not the pooled micro F1: here a
    weak label's best threshold is low and its false positives cost micro F1.  The shared
    threshold is the best of every possible one, and ``f1_micro_val_thr`` uses it."""
    rng = np.random.default_rng(0)
    y = np.zeros((200, 2), dtype=int)
    y[:100, 0] = 1  # a well-read label
    y[rng.choice(200, 60, replace=False), 1] = 1  # a label the model barely reads
    p = np.empty((200, 2))
    p[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.6, 1.0, 200), rng.uniform(0.0, 0.4, 200))
    p[:, 1] = 0.05 * y[:, 1] + rng.uniform(0.0, 0.4, 200)  # its best F1: call nearly everything positive

    def micro(t):
        return f1_score(y.ravel(), (p >= np.broadcast_to(t, (2,))[None, :]).astype(int).ravel())

    per_label, shared = select_thresholds(y, p), select_micro_threshold(y, p)
    grid = np.unique(p)
    assert micro(shared) == pytest.approx(max(micro(g) for g in grid))
    assert micro(shared) > micro(per_label)  # the case the shared threshold exists for
    m = classification_metrics(y, p, names=("a", "b"), thresholds=per_label, micro_threshold=shared)
    assert m["f1_micro_val_thr"] == pytest.approx(micro(shared))
    assert m["f1_macro_val_thr"] == pytest.approx(f1_score(y, (p >= per_label[None, :]).astype(int), average="macro"))
    assert classification_metrics(y, p, names=("a", "b"), thresholds=per_label)["f1_micro_val_thr"] == pytest.approx(
        micro(per_label))  # older checkpoints without the shared threshold
    assert select_micro_threshold(np.zeros((3, 2)), p[:3]) == 0.5  # no positive: the default


def test_classification_image_only_training_thresholds_and_metrics(synthetic_root, tmp_path):
    cfg = tiny(synthetic_root, 8, "train.eval_every=4", "finetune.image_only_prob=0.5")
    out = tmp_path / "cls"
    run = run_finetuning("classification", cfg, "scratch", out)
    evaluations = run.result.selection["evaluations"]
    assert {"auroc_micro", "image_only_auroc_micro", "image_only_f1_micro"} <= set(evaluations[-1])
    thresholds = read_thresholds(out)
    assert set(thresholds) == {"image_report", "image_only", "image_report_micro", "image_only_micro"}
    assert thresholds["image_only"].shape == (14,) and thresholds["image_only_micro"].shape == ()
    # the saved thresholds are those of the saved (selected) model on the validation split
    from medvill.modeling.heads import MedViLLForClassification
    from medvill.tasks.common import loader, record_dataset
    from medvill.tasks.registry import task_spec
    from medvill.tokenization import MedTokenizer

    task = task_spec("classification").medvill.make_task(None, out)
    model = MedViLLForClassification.from_pretrained(out)
    tok = MedTokenizer.from_pretrained(out)
    val = load_split(cfg, "validate")
    probs, targets = task.predict(model, loader(record_dataset(val, tok, model.config), cfg, tok, train=False))
    assert np.allclose(thresholds["image_report"], select_thresholds(targets, probs))
    assert thresholds["image_report_micro"] == pytest.approx(select_micro_threshold(targets, probs))
    metrics = run_evaluation("classification", out, cfg, split="test", n_bootstrap=3)
    for name in ("auroc_micro", "f1_micro_val_thr", "image_only_auroc_micro", "image_only_f1_micro_val_thr"):
        assert metrics[name]["n"] == 3
    # image_only metrics are those of empty reports, as Pipeline.classify(image) gives
    pipe = Pipeline.from_pretrained(out, device="cpu")
    test = load_split(cfg, "test")
    pipe_probs = np.array([[c[name] for name in c] for c in pipe.classify([r.image for r in test])])
    from medvill.metrics import classification_metrics as cm

    empty_reports = loader(record_dataset(test, tok, model.config, image_only=True), cfg, tok, train=False)
    io_probs, io_targets = task.predict(model, empty_reports)
    # the same probabilities up to float rounding (batch composition); compared as probabilities,
    # because a barely trained model's near-tied probabilities let rounding reorder a pair
    np.testing.assert_allclose(pipe_probs, io_probs, atol=1e-5)
    full = cm(io_targets.astype(int), io_probs)
    assert full["auroc_micro"] == pytest.approx(metrics["image_only_auroc_micro"]["full"], abs=1e-9)


def test_training_with_empty_reports_draws_rows_per_step():
    from medvill.tasks.classification import ClassificationTask

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, ids, valid, images=None):
            seen.append(valid.sum(1).tolist())
            return type("O", (), {"logits": torch.zeros(len(ids), 14, requires_grad=True)})()

    task = ClassificationTask(image_only_prob=0.5, seed=0, sep_id=102, pad_id=0)
    batch = {"text_ids": torch.full((64, 5), 7), "text_valid": torch.ones(64, 5, dtype=torch.bool),
             "images": torch.zeros(64, 3, 8, 8), "targets": torch.zeros(64, 14)}
    task.training_step(Spy(), batch, 0)
    task.training_step(Spy(), batch, 0)
    task.training_step(Spy(), batch, 1)
    assert seen[0] == seen[1] and seen[0] != seen[2]  # a function of the step: repeatable, not constant
    assert 16 < seen[0].count(1) < 48 and set(seen[0]) == {1, 5}


# ----------------------------------------------------------------------------- clinical efficacy


def test_clinical_efficacy_variants_by_hand():
    nan = np.nan
    g = np.full((3, 14), nan)
    r = np.full((3, 14), nan)
    # report 0: generated Cardiomegaly (2) + Edema (5); reference Cardiomegaly + Pleural Effusion (10)
    g[0, [2, 5]] = 1
    r[0, [2, 10]] = 1
    # report 1: nothing on either side; report 2: generated Fracture (12), reference none
    g[2, 12] = 1
    m = clinical_efficacy(g, r)
    assert m["ce_precision"] == pytest.approx(1 / 3) and m["ce_recall"] == pytest.approx(1 / 2)
    assert m["ce_f1"] == m["ce_f1_micro"] == pytest.approx(0.4)
    assert m["ce_f1_example"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["ce_f1_macro"] == pytest.approx(1.0 / 14)  # only Cardiomegaly scores (F1 1)
    # common five: Cardiomegaly, Edema, Pleural Effusion involved -> tp 1, fp 1, fn 1
    assert m["ce_f1_micro_5"] == pytest.approx(0.5)


def test_finetune_backbone_lr_is_the_cnn_rate_while_fine_tuning(tiny_demo_dir, synthetic_root, tmp_path):
    """``finetune.backbone_lr`` reaches the optimizer: at 0 the pre-trained CNN's convolutions
    stay exactly as pre-trained while the rest of the model trains; the saved run config says
    which rate trained it."""
    import yaml
    from safetensors.torch import load_file

    init = tiny_demo_dir / "pretrain-bar"
    cfg = tiny(synthetic_root, 3, "train.lr=1e-2", "train.backbone_lr=1e-2", "train.warmup_steps=0",
               "finetune.backbone_lr=0")
    out = tmp_path / "vqa"
    run_finetuning("vqa", cfg, str(init), out)
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    convs = [k for k in after if ".visual.trunk." in f".{k}" and k.endswith("weight") and after[k].ndim == 4]
    assert convs and all(torch.equal(after[k], before[k]) for k in convs)
    shared = [k for k in after if k in before and ".visual." not in f".{k}" and "embeddings.word" in k]
    assert shared and not all(torch.equal(after[k], before[k]) for k in shared)  # the transformer moved
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["train"]["backbone_lr"] == 0 and saved["finetune"]["backbone_lr"] == 0
    with pytest.raises(ConfigError, match="finetune.backbone_lr"):
        load_config("tiny", None, ["finetune.backbone_lr=-1"])


# ----------------------------------------------------------------------------- VQA


def test_vqa_reads_the_question(synthetic_root, tmp_path):
    """After a short fine-tuning from scratch, two different questions about the same image
    get different answers, and open answers seen in training are predicted."""
    cfg = tiny(synthetic_root, 150, "train.eval_every=150", "train.lr=3e-3", "train.batch_size=16",
               "train.warmup_steps=10")
    out = tmp_path / "vqa"
    run_finetuning("vqa", cfg, "scratch", out)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    from medvill.data.splits import load_vqa_split

    items = load_vqa_split(cfg, "train")
    images = sorted({str(it.image) for it in items})[:10]
    modality = pipe.answer(images, ["What imaging modality is this?"] * len(images))
    presence = pipe.answer(images, ["Is there a pneumothorax?"] * len(images))
    assert all(a.answer == "x-ray" for a in modality), [a.answer for a in modality]
    assert all(b.answer in ("yes", "no") for b in presence), [b.answer for b in presence]
    answers = json.loads((out / "answers.json").read_text())
    assert set(it.answer for it in items) <= set(answers)  # every training answer is a class


# ----------------------------------------------------------------------------- batching and images


def test_length_grouped_sampler_is_a_seeded_permutation_with_less_padding():
    lengths = np.random.default_rng(0).integers(5, 80, 640)
    s = LengthGroupedSampler(lengths, batch_size=32, group=4, seed=3)
    first = list(s)
    assert sorted(first) == list(range(640)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    padded = np.mean([lengths[first[i:i + 32]].max() for i in range(0, 640, 32)])
    random = np.mean([lengths[i:i + 32].max() for i in range(0, 640, 32)])
    assert padded < 0.85 * random


def test_length_grouped_loaders_train_and_evaluate_in_dataset_order(synthetic_root, tmp_path):
    cfg = tiny(synthetic_root, 4, "train.eval_every=2", "train.length_grouping=2")
    run = run_finetuning("classification", cfg, "scratch", tmp_path / "cls")
    assert run.result.steps == 4
    grouped = run_evaluation("classification", tmp_path / "cls", cfg, split="test", n_bootstrap=2)
    plain = run_evaluation("classification", tmp_path / "cls", tiny(synthetic_root, 4), split="test", n_bootstrap=2)
    assert grouped["auroc_micro"]["full"] == pytest.approx(plain["auroc_micro"]["full"], abs=1e-6)


def test_pixel_cache_returns_the_same_tensor_and_notices_a_changed_file(tmp_path):
    from PIL import Image

    from medvill.data.transforms import PIXEL_CACHE, load_image

    path = tmp_path / "x.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))).save(path)
    a = load_image(path, 32)
    n = len(PIXEL_CACHE.items)
    b = load_image(path, 32)
    assert torch.equal(a, b) and len(PIXEL_CACHE.items) == n
    import os
    import time

    Image.fromarray(np.full((64, 64), 200, dtype=np.uint8)).save(path)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    c = load_image(path, 32)
    assert not torch.equal(a, c)
