"""Free-running decoding: the KV-cached decoder equals naive re-encoding, token for token."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medvill.config import preset_config
from medvill.generation import GenerationConfig, generate, generate_naive
from medvill.modeling import MedViLLForPretraining


@pytest.fixture(scope="module")
def model():
    cfg = preset_config("tiny").model
    cfg = dataclasses.replace(cfg, vocab_size=40, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
                              mask_token_id=4)
    torch.manual_seed(0)
    m = MedViLLForPretraining(cfg).eval()
    with torch.no_grad():  # spread the output distribution so decoding paths differ
        m.mlm_head.bias.normal_(0, 2.0)
        m.mlm_head.bias[3] = -5.0
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_cached_greedy_equals_naive(model, images):
    cfg = GenerationConfig(max_length=12)
    fast = generate(model, images, cfg)
    slow = generate_naive(model, images, cfg)
    assert fast == slow
    assert all(len(r) == 12 for r in fast)  # no [SEP] reached with this bias
    assert all(t not in (0, 2, 4, 1) for r in fast for t in r)  # never emits specials


@pytest.mark.parametrize("beams,ngram", [(3, 0), (3, 2)])
def test_cached_beam_equals_naive(model, images, beams, ngram):
    cfg = GenerationConfig(max_length=8, num_beams=beams, no_repeat_ngram_size=ngram)
    assert generate(model, images, cfg) == generate_naive(model, images, cfg)


def test_no_repeat_ngram_blocks_repeats(model, images):
    out = generate(model, images, GenerationConfig(max_length=12, no_repeat_ngram_size=2))
    for row in out:
        grams = list(zip(row, row[1:]))
        assert len(grams) == len(set(grams))


def test_stops_at_sep_after_min_length(model, images):
    with torch.no_grad():
        old = model.mlm_head.bias[3].item()
        model.mlm_head.bias[3] = 50.0
    try:
        assert all(len(r) == 1 for r in generate(model, images, GenerationConfig(max_length=10)))
        assert generate(model, images, GenerationConfig(max_length=10, min_length=0)) == [[], [], []]
        out = generate(model, images, GenerationConfig(max_length=10, min_length=3))
        assert all(len(r) == 3 for r in out)
        assert generate(model, images, GenerationConfig(max_length=10, min_length=2, num_beams=2)) == generate_naive(
            model, images, GenerationConfig(max_length=10, min_length=2, num_beams=2))
    finally:
        with torch.no_grad():
            model.mlm_head.bias[3] = old


def test_generation_feeds_back_its_own_tokens_not_a_reference(model, images):
    """Each step sees only the generated prefix: regenerating from scratch reproduces the
    tokens, and the prediction at step t does not depend on anything after t."""
    cfg = GenerationConfig(max_length=6)
    full = generate(model, images, cfg)
    short = generate(model, images, dataclasses.replace(cfg, max_length=3))
    assert [r[:3] for r in full] == short


def test_one_pass_perplexity_equals_n_passes(model, images):
    from medvill.generation import reference_nll, reference_nll_naive

    ids = torch.randint(5, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 5:] = False
    ids[1, 4] = 3  # SEP_L closes the shorter report
    ids[~valid] = 0
    fast, n_fast = reference_nll(model, images, ids, valid)
    slow, n_slow = reference_nll_naive(model, images, ids, valid)
    assert torch.equal(n_fast, n_slow) and n_fast.tolist() == [7, 5, 7]
    assert torch.allclose(fast, slow, atol=1e-4), (fast, slow)
