"""MLM masking statistics and image-report matching pairs."""

from __future__ import annotations

import numpy as np
import torch

from medvill.data.pairs import IGNORE_INDEX, MLMSpec, ReportPairCollator, ReportPairDataset, mask_tokens
from medvill.labels import positive_set
from medvill.tokenization import MedTokenizer


def test_mlm_masking_statistics():
    rng = np.random.default_rng(0)
    spec = MLMSpec()
    mask_id = 4
    candidates = np.arange(5, 1000)
    selected = total = n_mask = n_random = n_same = 0
    for _ in range(400):
        ids = rng.integers(5, 1000, size=100)
        inputs, labels = mask_tokens(ids, rng, spec, mask_id, candidates)
        sel = labels != IGNORE_INDEX
        selected += sel.sum()
        total += len(ids)
        assert np.array_equal(labels[sel], ids[sel])
        assert np.array_equal(inputs[~sel], ids[~sel])  # unselected tokens never change
        n_mask += (inputs[sel] == mask_id).sum()
        same = inputs[sel] == ids[sel]
        n_same += same.sum()
        n_random += (~same & (inputs[sel] != mask_id)).sum()
        assert np.isin(inputs[sel & (inputs != mask_id)], candidates).all()
    assert abs(selected / total - 0.15) < 0.005
    # random replacements that hit the original token count as "unchanged": tolerance covers it
    assert abs(n_mask / selected - 0.8) < 0.02
    assert abs(n_random / selected - 0.1) < 0.02
    assert abs(n_same / selected - 0.1) < 0.02


def test_short_reports_still_get_one_prediction():
    rng = np.random.default_rng(1)
    inputs, labels = mask_tokens(np.array([7, 8]), rng, MLMSpec(), 4, np.arange(5, 20))
    assert (labels != IGNORE_INDEX).sum() == 1


def make_dataset(records, seed=0):
    tok = MedTokenizer.train([r.text for r in records], vocab_size=120, min_frequency=1)
    return ReportPairDataset(records, tok, image_size=64, max_text_len=32, seed=seed), tok


def test_pretrain_items_never_mask_specials_and_negatives_differ_in_labels(fake_records):
    ds, tok = make_dataset(fake_records)
    matched = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            ids, labels = item["text_ids"], item["mlm_labels"]
            assert ids[-1] == tok.sep_id and labels[-1] == IGNORE_INDEX  # SEP_L never masked
            assert not np.isin(labels[labels != IGNORE_INDEX], list(tok.special_ids)).any()
            assert (ids == tok.mask_id).any() or (labels != IGNORE_INDEX).any() or not item["is_matched"]
            if item["is_matched"]:
                matched += 1
                assert item["text_index"] == i
            else:
                j = item["text_index"]
                assert positive_set(fake_records[j].labels) != positive_set(fake_records[i].labels)
                assert (labels == IGNORE_INDEX).all()  # MLM loss on matched pairs only
    assert 0.35 < matched / (4 * len(ds)) < 0.65


def test_items_are_deterministic_per_seed_epoch_index(fake_records):
    ds, _ = make_dataset(fake_records)
    a = ds[3]
    b = ds[3]
    assert np.array_equal(a["text_ids"], b["text_ids"]) and a["is_matched"] == b["is_matched"]
    ds.set_epoch(1)
    drawn = [(ds[i]["is_matched"], tuple(ds[i]["text_ids"])) for i in range(len(ds))]
    ds.set_epoch(0)
    assert drawn != [(ds[i]["is_matched"], tuple(ds[i]["text_ids"])) for i in range(len(ds))]


def test_collate_pads_at_the_end(fake_records):
    ds, tok = make_dataset(fake_records)
    batch = ReportPairCollator(tok.pad_id)([ds[i] for i in range(5)])
    lengths = batch["text_valid"].sum(1)
    for row in range(5):
        n = int(lengths[row])
        assert batch["text_valid"][row, :n].all() and not batch["text_valid"][row, n:].any()
        assert (batch["text_ids"][row, n:] == tok.pad_id).all()
        assert (batch["mlm_labels"][row, n:] == IGNORE_INDEX).all()
    assert batch["images"].shape == (5, 3, 64, 64) and batch["images"].dtype == torch.float32


def test_one_label_set_cannot_make_negatives(fake_records):
    import copy

    import pytest

    same = [copy.copy(r) for r in fake_records[:4]]
    for r in same:
        r.labels = fake_records[0].labels
    with pytest.raises(ValueError, match="two different positive label sets"):
        make_dataset(same)
