"""Pre-training end to end on the synthetic data: losses fall, the CNN trains, checkpoints load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import MaskScheme, load_config
from medvill.data.pairs import ReportPairCollator, ReportPairDataset
from medvill.data.splits import load_split
from medvill.modeling import MedViLLForPretraining, PreTrainedModel
from medvill.recipes.common import build_tokenizer, model_config_for
from medvill.recipes.pretrain import run_pretraining
from medvill.tasks.pretrain import PretrainTask
from medvill.tokenization import MedTokenizer
from medvill.train.loop import fit

SCHEMES = [s.value for s in MaskScheme]


def tiny_run_cfg(root, mask, steps, **train):
    overrides = [f"data.root={root}", f"pretrain.mask={mask}", f"train.max_steps={steps}", "train.progress=false"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config("tiny", None, overrides)


def mean(history, key, part):
    vals = [h[key] for h in history]
    n = max(1, len(vals) // 4)
    chunk = vals[:n] if part == "first" else vals[-n:]
    return sum(chunk) / len(chunk)


class BothPairs(ReportPairDataset):
    """Every image twice: once with its own report, once with a fixed label-aware negative.

    Pairs and MLM masks stay the same every epoch, so a tiny model can fit them in seconds;
    and since each image (and each report) occurs both matched and mismatched, neither
    modality alone tells the pair type: the IRM loss can only fall if the summary token
    sees both the image and the report under the active mask scheme.
    """

    def __len__(self):
        return 2 * len(self.records)

    def __getitem__(self, k):
        return self.make_item(k // 2, k % 2 == 0, np.random.default_rng([self.seed, k]))


def fit_both_pairs(root, mask, steps=200, n_images=8):
    cfg = tiny_run_cfg(root, mask, steps, log_every=10, batch_size=16)
    records = load_split(cfg, "train")[:n_images]
    tok = build_tokenizer(cfg, [r.text for r in records])
    mcfg = model_config_for(cfg, tok)
    ds = BothPairs(records, tok, mcfg.image_size, mcfg.max_text_len)
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ReportPairCollator(tok.pad_id),
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg)
    return fit(model, PretrainTask(cfg.pretrain), loader, cfg.train, root.parent / f"run-{mask}", lambda *a: None)


@pytest.mark.parametrize("mask", SCHEMES)
def test_tiny_pretraining_lowers_mlm_and_irm_loss(synthetic_root, mask):
    result = fit_both_pairs(synthetic_root, mask)
    h = result.history
    assert result.steps == 200 and len(h) == 20
    first_mlm, last_mlm = mean(h, "mlm_loss", "first"), mean(h, "mlm_loss", "last")
    first_irm, last_irm = mean(h, "irm_loss", "first"), mean(h, "irm_loss", "last")
    assert last_mlm < 0.6 * first_mlm, (first_mlm, last_mlm)
    assert h[0]["irm_loss"] > 0.6 and first_irm > last_irm + 0.2 and last_irm < 0.45, (first_irm, last_irm)
    if mask == "bi_s2s":
        share = sum(x["s2s_batch"] for x in h) / len(h)
        assert 0.5 < share < 0.95


def test_irm_cannot_learn_from_cls_under_s2s(synthetic_root, monkeypatch):
    """Negative control: under S2S the CLS token sees no text (the original code's blind
    spot), so a matching head on CLS stays at chance; medvill reads SEP_L instead."""
    import medvill.modeling.medvill as mv

    original = mv.summary_indices

    def cls_only(scheme, layout, text_valid):
        return [original(MaskScheme.BI, layout, text_valid)[0]]

    monkeypatch.setattr(mv, "summary_indices", cls_only)
    h = fit_both_pairs(synthetic_root, "s2s").history
    assert mean(h, "irm_loss", "last") > 0.6


def test_backbone_weights_change_and_artifacts_are_written(synthetic_root, tmp_path):
    cfg = tiny_run_cfg(synthetic_root, "bar", 3, log_every=1)
    out = tmp_path / "ckpt"
    torch.manual_seed(cfg.train.seed)
    init_dir = tmp_path / "init"
    run_pretraining(tiny_run_cfg(synthetic_root, "bar", 0), init_dir)
    run_pretraining(cfg, out)
    before = PreTrainedModel.from_pretrained(init_dir)
    after = PreTrainedModel.from_pretrained(out)
    b, a = dict(before.medvill.visual.named_parameters()), dict(after.medvill.visual.named_parameters())
    assert all(not torch.equal(b[k], a[k]) for k in b), "a backbone parameter did not train"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "run_config.yaml",
            "metrics.jsonl"} <= names
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all("mlm_loss" in e and "irm_loss" in e for e in log)
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["pretrain"]["mask"] == "bar" and saved["model"]["vocab_size"] == after.config.vocab_size
    tok = MedTokenizer.from_pretrained(out)
    assert tok.vocab_size == after.config.vocab_size


@pytest.mark.parametrize("mask", SCHEMES)
def test_cli_pretrain_writes_a_loadable_checkpoint(synthetic_root, tmp_path, mask):
    out = tmp_path / mask
    result = CliRunner().invoke(app, [
        "pretrain", "--dataset", "synthetic", "--root", str(synthetic_root), "--preset", "tiny", "--mask", mask,
        "--max-steps", "2", "--output", str(out), "--set", "train.log_every=1",
    ])
    assert result.exit_code == 0, result.output
    model = MedViLLForPretraining.from_pretrained(out)
    assert model.config.backbone == "small_cnn"


def test_cli_rejects_a_bad_config_key(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--output", str(tmp_path / "x"),
                                      "--set", "train.learning_rate=1"])
    assert result.exit_code == 2
    assert "train.learning_rate" in result.output


def test_cli_synth_writes_the_data_set_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    args = ["synth", "--output", str(out), "--n", "12", "--image-size", "64", "--seed", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {"train.jsonl", "validate.jsonl", "test.jsonl", "trainset.json", "testset.json", "meta.json"} <= {
        p.name for p in out.iterdir()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_prepare_then_pretrain_from_the_cache(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["prepare", "--dataset", "synthetic", "--root", str(synthetic_root),
                                      "--output", str(cache), "--image-size", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (cache / "prepare.json").is_file() and "160 written" in " ".join(result.output.split())
    again = CliRunner().invoke(app, ["prepare", "--dataset", "synthetic", "--root", str(synthetic_root),
                                     "--output", str(cache), "--image-size", "64", "--workers", "1"])
    assert again.exit_code == 0 and "160 reused" in " ".join(again.output.split())
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["pretrain", "--root", str(cache), "--preset", "tiny", "--max-steps", "2",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    bad = CliRunner().invoke(app, ["prepare", "--dataset", "mimic", "--output", str(tmp_path / "m")])
    assert bad.exit_code == 2 and "--root" in bad.output


def test_cli_demo_runs_the_whole_pipeline_on_the_tiny_preset(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--output", str(out), "--bootstrap", "3"])
    assert result.exit_code == 0, result.output
    for name in ("results.md", "results.csv", "results.json"):
        assert (out / name).is_file()
    data = json.loads((out / "results.json").read_text())
    assert set(data["tasks"]) == {"classification", "retrieval", "vqa", "generation"}
    for task in data["tasks"].values():  # default: the paper's BAR against Fine-tuning Only
        assert task["models"] == ["MedViLL-BAR", "FT-only"]
    assert (out / "pretrain-bar" / "model.safetensors").is_file() and not (out / "pretrain-s2s").exists()
    assert data["pretrain_validation"]["bar"] and "irm_auroc" in data["pretrain_validation"]["bar"][-1]
    assert data["samples"]["reports"] and data["samples"]["vqa"]["questions"]
    md = (out / "results.md").read_text()
    assert "## retrieval" in md and "r2i_mrr" in md and "closed_accuracy" in md and "bleu4" in md
    assert "image_only_auroc_micro" in md and "ce_f1_micro_5" in md and "## What the models say" in md


def test_cli_demo_full_compares_every_mask_and_baseline(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--full", "--output", str(out), "--bootstrap", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    medvill = ["MedViLL-BAR", "MedViLL-S2S", "MedViLL-Bi", "MedViLL-Bi&S2S", "MedViLL-NonCross", "FT-only"]
    assert data["tasks"]["classification"]["models"] == [*medvill, "CNN&Transformer", "TieNet"]
    assert data["tasks"]["retrieval"]["models"] == data["tasks"]["vqa"]["models"] == [*medvill, "CNN&Transformer"]
    assert data["tasks"]["generation"]["models"] == [*medvill, "TieNet"]
    assert all((out / f"pretrain-{m}" / "model.safetensors").is_file() for m in
               ("bar", "s2s", "bi", "bi_s2s", "non_crossing"))


def test_demo_results_do_not_depend_on_the_number_of_worker_processes(tmp_path, monkeypatch):
    """Two spawned one-thread workers give the same tables as one one-thread process."""
    from medvill.recipes import demo

    monkeypatch.setattr(demo, "_cpus", lambda: 2)  # each of 2 workers: 1 thread
    monkeypatch.setenv("MEDVILL_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tables = []
        for workers in (1, 2):
            cfg = load_config("tiny", None, ["train.progress=false"])
            result = demo.run_demo(cfg, tmp_path / f"w{workers}", n_bootstrap=2, workers=workers)
            tables.append({t: json.loads(table.to_json())["cells"] for t, table in result.tables.items()})
    finally:
        torch.set_num_threads(threads)
    assert tables[0] == tables[1] and set(tables[0]) == {"classification", "retrieval", "vqa", "generation"}
    with pytest.raises(ValueError, match="workers"):
        demo.run_demo(load_config("tiny", None, []), tmp_path / "w0", workers=0)


def test_unreadable_images_are_checked_before_the_first_step(synthetic_root, tmp_path):
    """A zero-byte, a truncated and a text-named-.png image: skipped and counted under
    data.policy=skip (the run trains and writes its model), named before any step under error."""
    import shutil

    from medvill.data.common import DataError

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    images = [root / r["image"] for r in rows[:3]]
    images[0].write_bytes(b"")
    images[1].write_bytes(images[1].read_bytes()[:60])
    images[2].write_text("this is not an image")
    cfg = load_config("tiny", None, [f"data.root={root}", "train.max_steps=2", "train.progress=false"])
    n_all = len(rows)
    kept = load_split(cfg, "train")
    assert len(kept) == n_all - 3 and not {r.image for r in kept} & set(images)
    run = run_pretraining(cfg, tmp_path / "skip")
    assert run.num_train == n_all - 3 and (tmp_path / "skip" / "model.safetensors").is_file()
    strict = load_config("tiny", None, [f"data.root={root}", "train.max_steps=2", "train.progress=false",
                                        "data.policy=error"])
    with pytest.raises(DataError, match=r"3 unreadable images in the train split, e\.g\. .*\.png"):
        run_pretraining(strict, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()


def _die(console=None):
    import os

    os._exit(3)


def _fine(x, console=None):
    return x * 2


def _span(seconds, console=None):
    import time

    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


def test_a_demo_worker_that_dies_is_a_named_error():
    from rich.console import Console

    from medvill.recipes.demo import WorkerDiedError, _Job, _Runner

    with pytest.raises(WorkerDiedError, match="died .* while training .*classification-FT-only"):
        with _Runner(2, Console(quiet=True)) as runner:
            list(runner.run({"classification-FT-only": _Job(_die, ()), "other": _Job(_fine, (1,))}))


@pytest.mark.parametrize("workers", [1, 2])
def test_demo_jobs_start_when_what_they_need_has_finished(workers):
    """The demo's schedule: Fine-tuning Only trains beside the pre-training; a MedViLL fine-tune
    starts only once its pre-training has finished; a job may only need one listed before it."""
    from rich.console import Console

    from medvill.recipes.demo import _Job, _Runner

    jobs = {"pretrain": _Job(_span, (2.0,)), "ft-only": _Job(_span, (0.1,)),
            "medvill": _Job(_span, (0.1,), needs=("pretrain",))}
    with _Runner(workers, Console(quiet=True)) as runner:
        spans = {name: value for name, value, seconds in runner.run(jobs)}
    assert set(spans) == set(jobs)
    assert spans["medvill"][0] >= spans["pretrain"][1]
    if workers == 2:  # the job that needs nothing did not wait for the pre-training
        assert spans["ft-only"][0] < spans["pretrain"][1]
    with pytest.raises(ValueError, match="'medvill' needs \\['pretrain'\\], which is not listed before it"):
        with _Runner(workers, Console(quiet=True)) as runner:
            list(runner.run({"medvill": jobs["medvill"], "pretrain": jobs["pretrain"]}))
