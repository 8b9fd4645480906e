"""Image-report contrastive loss (label-aware ITC) and hard negatives: pure functions, and the
pre-training model and task that use them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medvill.config import ConfigError, MaskScheme, load_config
from medvill.data.pairs import ReportPairCollator, ReportPairDataset
from medvill.data.splits import load_split
from medvill.modeling import MedViLLForPretraining, PreTrainedModel
from medvill.modeling.contrastive import label_aware_itc_loss, same_group, sample_hard_negatives
from medvill.recipes.common import build_tokenizer, model_config_for
from medvill.recipes.pretrain import run_pretraining
from medvill.tasks.pretrain import PretrainTask
from medvill.train.loop import fit


def test_label_aware_targets_spread_over_the_label_set():
    groups = torch.tensor([0, 0, 1])
    # rows: images; columns: reports. Image 0 and 1 share a label set, so reports 0 and 1 both match them.
    perfect = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    instance = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    assert label_aware_itc_loss(perfect, groups) < 0.7  # ln 2 for the shared pair is the floor
    assert label_aware_itc_loss(perfect, groups) < label_aware_itc_loss(instance, groups)
    # hand value: row 0 target (0.5, 0.5, 0); log-softmax of (5, 5, -5) = (-ln2 - e, ...)
    row = torch.tensor([5.0, 5.0, -5.0]).log_softmax(0)
    expected_row0 = -(0.5 * row[0] + 0.5 * row[1])
    expected = (2 * expected_row0 - torch.tensor([-5.0, -5.0, 5.0]).log_softmax(0)[2]) / 3  # both directions equal
    assert label_aware_itc_loss(perfect, groups).item() == pytest.approx(expected.item(), rel=1e-5)
    assert same_group(groups).tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    with pytest.raises(ValueError, match="must be"):
        label_aware_itc_loss(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_hard_negatives_come_from_other_label_sets_and_follow_similarity():
    groups = torch.tensor([0, 1, 0, 2])
    sim = torch.tensor([[0.0, 9.0, 50.0, -9.0]] * 4)  # column 2 is most similar but shares row 0's label set
    rows, candidates = torch.tensor([0]), torch.tensor([1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    picks = [sample_hard_negatives(sim, groups, rows, candidates, gen).item() for _ in range(200)]
    assert 2 not in picks  # same label set: never a negative
    assert picks.count(1) > 190  # exp(9) against exp(-9): the similar report almost always
    again = [sample_hard_negatives(sim, groups, rows, candidates, torch.Generator().manual_seed(0)).item()
             for _ in range(3)]
    assert len(set(again)) == 1  # seeded: repeatable
    none = sample_hard_negatives(sim, torch.tensor([0, 0, 0, 0]), rows, candidates)
    assert none.tolist() == [-1]  # nothing eligible: the caller keeps its own negative


def _tiny(root, steps=2, **over):
    items = [f"data.root={root}", f"train.max_steps={steps}", "train.progress=false", "pretrain.itc_weight=1"]
    return load_config("tiny", None, items + [f"{k}={v}" for k, v in over.items()])


def _batch(cfg, n=8, seed=0):
    records = load_split(cfg, "train")[:n]
    tok = build_tokenizer(cfg, [r.text for r in records])
    mcfg = model_config_for(cfg, tok)
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, seed=seed, contrastive=True)
    return mcfg, ds, ReportPairCollator(tok.pad_id)([ds[i] for i in range(len(ds))])


def test_contrastive_batches_carry_the_own_report_and_the_label_set(synthetic_root):
    cfg = _tiny(synthetic_root)
    mcfg, ds, batch = _batch(cfg)
    for row, i in enumerate(batch["index"].tolist()):
        own = ds.text_ids[i]
        assert batch["report_ids"][row, : len(own)].tolist() == own.tolist()  # unmasked, its own image's report
        assert int(batch["report_valid"][row].sum()) == len(own)
    same = [ds.label_sets[a] == ds.label_sets[b] for a in range(len(ds)) for b in range(len(ds))]
    groups = batch["label_group"]
    assert same == [bool(groups[a] == groups[b]) for a in range(len(ds)) for b in range(len(ds))]


def test_hard_negatives_replace_the_mismatched_reports(synthetic_root):
    cfg = _tiny(synthetic_root)
    mcfg, ds, batch = _batch(cfg, n=16)
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg, contrastive_dim=16)
    args = dict(text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=MaskScheme.BAR,
                images=batch["images"], mlm_labels=batch["mlm_labels"], is_matched=batch["is_matched"],
                report_ids=batch["report_ids"], report_valid=batch["report_valid"], label_groups=batch["label_group"])
    out = model(**args, hard_negatives=True, generator=torch.Generator().manual_seed(1))
    mismatched = int((batch["is_matched"] == 0).sum())
    assert 0 < out.hard_negatives <= mismatched
    assert out.itc_loss is not None and math.isfinite(out.itc_loss.item()) and 0 <= out.itc_accuracy.item() <= 1
    plain = model(**args)
    assert plain.hard_negatives == 0 and torch.equal(plain.itc_loss, out.itc_loss)
    with pytest.raises(ValueError, match="report_ids"):
        model(text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=MaskScheme.BAR,
              images=batch["images"], hard_negatives=True)


def test_swapped_in_reports_are_matched_reports_of_another_label_set():
    from medvill.modeling.heads import _swap_in_hard_negatives

    groups = torch.tensor([0, 1, 0, 2, 1])
    is_matched = torch.tensor([1, 1, 0, 1, 0])
    text_ids = torch.arange(5)[:, None].repeat(1, 4)  # row r holds token r
    text_valid = torch.ones(5, 4, dtype=torch.bool)
    text_valid[3, 2:] = False
    sim = torch.zeros(5, 5)
    new_ids, new_valid, n = _swap_in_hard_negatives(sim, groups, is_matched, text_ids, text_valid,
                                                    torch.Generator().manual_seed(0))
    assert n == 2
    for r in (2, 4):
        donor = int(new_ids[r, 0])
        assert is_matched[donor] == 1 and groups[donor] != groups[r]
        assert torch.equal(new_valid[r], text_valid[donor])
    assert torch.equal(new_ids[[0, 1, 3]], text_ids[[0, 1, 3]])  # matched rows untouched
    assert torch.equal(text_ids[2], torch.full((4,), 2))  # the input is not modified in place


def test_contrastive_pretraining_aligns_images_and_reports(synthetic_root, tmp_path):
    """On a fixed small set the contrastive loss falls and the in-batch top-1 label-set
    accuracy rises well above chance; the checkpoint records its projections and reloads."""
    cfg = _tiny(synthetic_root, steps=150, **{"train.log_every": 10, "train.batch_size": 16, "train.lr": 2e-3,
                                              "pretrain.irm_negatives": "hard"})
    records = load_split(cfg, "train")[:32]
    tok = build_tokenizer(cfg, [r.text for r in records])
    mcfg = model_config_for(cfg, tok)
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, contrastive=True)
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ReportPairCollator(tok.pad_id), drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg, contrastive_dim=32)
    h = fit(model, PretrainTask(cfg.pretrain), loader, cfg.train, tmp_path / "run", lambda *a: None).history
    first, last = np.mean([e["itc_loss"] for e in h[:3]]), np.mean([e["itc_loss"] for e in h[-3:]])
    assert last < 0.6 * first, (first, last)
    # chance: the share of a batch that has the row's label set (about 0.2 here)
    assert np.mean([e["itc_acc"] for e in h[-3:]]) > np.mean([e["itc_acc"] for e in h[:2]]) + 0.2, h
    out = run_pretraining(_tiny(synthetic_root, steps=2, **{"train.eval_every": 1}), tmp_path / "ckpt")
    loaded = PreTrainedModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.contrastive_dim == cfg.pretrain.itc_dim and hasattr(loaded, "itc_text_proj")
    assert [e["step"] for e in out.result.validation] == [1, 2]
    assert {"mlm_acc", "irm_auroc", "itc_acc"} <= set(out.result.validation[-1])


def test_hard_negatives_need_the_contrastive_loss():
    with pytest.raises(ConfigError, match="itc_weight"):
        load_config("tiny", None, ["pretrain.irm_negatives=hard"])
    with pytest.raises(ConfigError, match="irm_negatives"):
        load_config("tiny", None, ["pretrain.irm_negatives=semi"])
