"""Attention masks: exact matrices for every scheme, and information flow through the model."""

from __future__ import annotations

import random

import pytest
import torch

from medvill.config import MaskScheme
from medvill.modeling.masks import SequenceLayout, build_attention_mask, resolve_scheme, summary_indices
from medvill.modeling.medvill import MedViLLModel


def as_matrix(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows.split()], dtype=torch.bool)


# Layout for k = 2 visual tokens and a text part of length 3:
#   0 CLS | 1 v1 | 2 v2 | 3 SEP_V | 4 w1 | 5 w2 | 6 w3
# Example 0: all three text tokens real (w1 w2 SEP_L).  Example 1: w1 SEP_L PAD.
TEXT_VALID = torch.tensor([[True, True, True], [True, True, False]])
LAYOUT = SequenceLayout(num_visual=2, text_len=3)

EXPECTED = {
    MaskScheme.BI: (
        """1111111 1111111 1111111 1111111 1111111 1111111 1111111""",
        """1111110 1111110 1111110 1111110 1111110 1111110 0000000""",
    ),
    MaskScheme.S2S: (
        """1111000 1111000 1111000 1111000 1111100 1111110 1111111""",
        """1111000 1111000 1111000 1111000 1111100 1111110 0000000""",
    ),
    MaskScheme.BAR: (
        """1111111 1111111 1111111 1111111 1111100 1111110 1111111""",
        """1111110 1111110 1111110 1111110 1111100 1111110 0000000""",
    ),
}


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_exact_mask_matrices(scheme):
    mask = build_attention_mask(scheme, LAYOUT, TEXT_VALID)
    assert mask.dtype == torch.bool and mask.shape == (2, 7, 7)
    full, padded = EXPECTED[scheme]
    assert torch.equal(mask[0], as_matrix(full))
    assert torch.equal(mask[1], as_matrix(padded))


def test_exact_non_crossing_matrix():
    # 0 CLS | 1 v1 | 2 v2 | 3 SEP_V | 4 CLS_L | 5 w1 | 6 w2 | 7 w3
    layout = SequenceLayout(num_visual=2, text_len=3, cls_l=True)
    mask = build_attention_mask(MaskScheme.NON_CROSSING, layout, TEXT_VALID)
    full = """11110000 11110000 11110000 11110000 00001111 00001111 00001111 00001111"""
    padded = """11110000 11110000 11110000 11110000 00001110 00001110 00001110 00000000"""
    assert torch.equal(mask[0], as_matrix(full))
    assert torch.equal(mask[1], as_matrix(padded))


def test_mask_argument_errors():
    with pytest.raises(ValueError, match="resolve_scheme"):
        build_attention_mask(MaskScheme.BI_S2S, LAYOUT, TEXT_VALID)
    with pytest.raises(ValueError, match="CLS_L"):
        build_attention_mask(MaskScheme.NON_CROSSING, LAYOUT, TEXT_VALID)
    with pytest.raises(ValueError, match="columns"):
        build_attention_mask(MaskScheme.BI, SequenceLayout(2, 4), TEXT_VALID)


def test_bi_s2s_is_s2s_three_quarters_of_the_time():
    rng = random.Random(0)
    draws = [resolve_scheme(MaskScheme.BI_S2S, 0.75, rng) for _ in range(4000)]
    assert set(draws) == {MaskScheme.S2S, MaskScheme.BI}
    assert abs(draws.count(MaskScheme.S2S) / len(draws) - 0.75) < 0.03
    assert resolve_scheme(MaskScheme.BAR, 0.75, rng) == MaskScheme.BAR


def test_summary_tokens_see_both_modalities():
    """The IRM summary position(s) must see visual and text tokens under each scheme."""
    for scheme in (MaskScheme.BI, MaskScheme.S2S, MaskScheme.BAR, MaskScheme.NON_CROSSING):
        layout = SequenceLayout(2, 3, cls_l=scheme == MaskScheme.NON_CROSSING)
        mask = build_attention_mask(scheme, layout, TEXT_VALID)
        idx = summary_indices(scheme, layout, TEXT_VALID)
        for b in range(2):
            sees = torch.zeros(layout.length, dtype=torch.bool)
            for pos in idx:
                sees |= mask[b, pos[b]]
            assert sees[layout.visual_slice()].all(), scheme
            n_text = int(TEXT_VALID[b].sum())
            assert sees[layout.text_start : layout.text_start + n_text].all(), scheme
    # under S2S the summary is SEP_L, the last real text token of each example
    s2s = summary_indices(MaskScheme.S2S, LAYOUT, TEXT_VALID)[0]
    assert s2s.tolist() == [LAYOUT.text_start + 2, LAYOUT.text_start + 1]


# ----------------------------------------------------------------------------- information flow

K = 4  # visual tokens
T = 6  # text tokens (5 words + SEP_L)


@pytest.fixture(scope="module")
def flow_model():
    from medvill.config import preset_config

    cfg = preset_config("tiny").model
    cfg.vocab_size = 50
    cfg.pad_token_id, cfg.unk_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id = 0, 1, 2, 3, 4
    torch.manual_seed(0)
    model = MedViLLModel(cfg).eval()
    return model


def run(model, scheme, feats, ids, valid, layer=-1):
    with torch.no_grad():
        out = model(ids, valid, scheme, visual_features=feats, output_hidden_states=True)
    return out.hidden_states[layer][0], out.layout


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, K, 32, generator=g)
    ids = torch.randint(5, 50, (1, T), generator=g)
    valid = torch.ones(1, T, dtype=torch.bool)
    return feats, ids, valid


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(dim=-1) > 1e-6  # (S,) which positions changed


def perturb_text(ids, j):
    ids2 = ids.clone()
    ids2[0, j] = 5 + (ids[0, j] - 5 + 7) % 45
    return ids2


@pytest.mark.parametrize("scheme", [MaskScheme.S2S, MaskScheme.BAR, MaskScheme.BI, MaskScheme.NON_CROSSING])
def test_text_perturbation_reaches_exactly_the_allowed_outputs(flow_model, scheme):
    feats, ids, valid = inputs()
    base, layout = run(flow_model, scheme, feats, ids, valid)
    j = 2
    pos = layout.text_start + j
    diff = changed(base, run(flow_model, scheme, feats, perturb_text(ids, j), valid)[0])
    vis = torch.zeros(layout.length, dtype=torch.bool)
    vis[: layout.num_v_group] = True
    text_before = torch.zeros_like(vis)
    text_before[layout.text_start - int(layout.cls_l) : pos] = True
    if scheme == MaskScheme.S2S:
        assert not diff[vis].any(), "S2S: a text change reached a visual output"
        assert not diff[text_before].any(), "S2S: a later text token reached an earlier one"
        assert diff[pos:].all()
    elif scheme == MaskScheme.NON_CROSSING:
        assert not diff[vis].any(), "Non-crossing: a text change crossed into the visual stream"
        assert diff[~vis].all()  # CLS_L and every text token see the whole report
    elif scheme == MaskScheme.BI:
        assert diff.all()
    elif scheme == MaskScheme.BAR:
        assert diff[vis].all()  # visual rows see the whole report
        assert diff[pos:].all()


@pytest.mark.parametrize("scheme", [MaskScheme.S2S, MaskScheme.BAR, MaskScheme.BI, MaskScheme.NON_CROSSING])
def test_visual_perturbation(flow_model, scheme):
    feats, ids, valid = inputs()
    base, layout = run(flow_model, scheme, feats, ids, valid)
    feats2 = feats.clone()
    feats2[0, 1] += 1.0
    diff = changed(base, run(flow_model, scheme, feats2, ids, valid)[0])
    vis = torch.zeros(layout.length, dtype=torch.bool)
    vis[: layout.num_v_group] = True
    assert diff[vis].all()
    if scheme == MaskScheme.NON_CROSSING:
        assert not diff[~vis].any(), "Non-crossing: a visual change crossed into the text stream"
    else:
        assert diff[~vis].all()


def test_bar_later_text_reaches_earlier_text_through_visual_tokens_from_layer_two(flow_model):
    """BAR (paper eq. 14): T->T is causal, but V rows read the whole report, so a later
    word reaches an earlier one via a visual token.  Layer 1 keeps the earlier word clean;
    from layer 2 on it changes.  This is the paper's definition, documented and kept."""
    feats, ids, valid = inputs()
    j_late, j_early = 4, 1
    ids2 = perturb_text(ids, j_late)
    for layer, expect in ((1, False), (2, True)):
        a, layout = run(flow_model, MaskScheme.BAR, feats, ids, valid, layer=layer)
        b, _ = run(flow_model, MaskScheme.BAR, feats, ids2, valid, layer=layer)
        assert bool(changed(a, b)[layout.text_start + j_early]) is expect, layer
    # under S2S the same change never reaches the earlier word, at any depth
    a, layout = run(flow_model, MaskScheme.S2S, feats, ids, valid)
    b, _ = run(flow_model, MaskScheme.S2S, feats, ids2, valid)
    assert not changed(a, b)[layout.text_start + j_early]


@pytest.mark.parametrize("scheme", [MaskScheme.S2S, MaskScheme.BAR, MaskScheme.BI, MaskScheme.NON_CROSSING])
def test_padding_never_changes_real_outputs(flow_model, scheme):
    feats, ids, valid = inputs()
    valid = valid.clone()
    valid[0, 4:] = False  # the last two text positions are padding
    base, layout = run(flow_model, scheme, feats, ids, valid)
    ids2 = ids.clone()
    ids2[0, 4:] = torch.tensor([11, 13])
    after, _ = run(flow_model, scheme, feats, ids2, valid)
    real = torch.ones(layout.length, dtype=torch.bool)
    real[layout.text_start + 4 :] = False
    assert not changed(base, after)[real].any()
    assert torch.isfinite(after).all()
