"""medvill's CPU dropout: the mask's statistics, the gradient, reproducibility, and that the
model's dropout (hidden states and attention probabilities) no longer goes through torch's
``bernoulli_`` mask on the CPU."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from medvill.config import MaskScheme, ModelConfig, preset_config
from medvill.modeling.dropout import Dropout, drop_threshold, dropout, keep_mask
from medvill.modeling.heads import MedViLLForPretraining


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_the_mask_drops_p_of_the_elements_and_keeps_the_mean(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of the 4 elements a random word gives
    keep, scale = keep_mask((n,), p)
    drop = drop_threshold(p)
    assert scale == 65536 / (65536 - drop)
    assert abs(drop / 65536 - p) <= 1 / 131072
    frac = 1 - keep.float().mean().item()
    assert abs(frac - drop / 65536) < 5 * math.sqrt(p * (1 - p) / n)
    # each of the four 16-bit lanes of a 64-bit word is uniform (the sign bit too)
    for lane in range(4):
        lane_frac = 1 - keep[lane::4].float().mean().item()
        assert abs(lane_frac - p) < 5 * math.sqrt(p * (1 - p) / (n / 4)), lane
    out = dropout(torch.ones(n), p)
    assert abs(out.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / n)
    assert set(out.unique().tolist()) == {0.0, torch.tensor(scale).item()}  # float32 of the scale


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x, 0.25)
    g = torch.randn_like(out)
    out.backward(g)
    kept = out.detach() != 0
    scale = 65536 / (65536 - drop_threshold(0.25))
    torch.testing.assert_close(out.detach(), torch.where(kept, x.detach() * scale, 0.0))
    torch.testing.assert_close(x.grad, torch.where(kept, g * scale, 0.0))


def test_seeded_reproducible_and_edge_probabilities():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    b = dropout(x, 0.1)
    assert torch.equal(a, b)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)
    m = Dropout(0.2)
    assert m.p == 0.2 and not list(m.parameters())
    assert m.eval()(x) is x


def test_model_dropout_on_the_cpu_never_draws_torchs_mask(monkeypatch):
    cfg = dataclasses.replace(preset_config("tiny").model, vocab_size=50, pad_token_id=0, unk_token_id=1,
                              cls_token_id=2, sep_token_id=3, mask_token_id=4,
                              hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    model = MedViLLForPretraining(cfg, load_pretrained_backbone=False).train()
    ids = torch.randint(5, 50, (2, 6))
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)

    def refuse(*args, **kwargs):
        raise AssertionError("torch's CPU dropout mask was drawn")

    monkeypatch.setattr(F, "dropout", refuse)
    monkeypatch.setattr(torch.Tensor, "bernoulli_", refuse)
    torch.manual_seed(5)
    out = model.medvill(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.BAR, images=images)
    out.last_hidden_state.sum().backward()
    torch.manual_seed(5)
    again = model.medvill(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.BAR, images=images)
    assert torch.equal(out.last_hidden_state, again.last_hidden_state)  # the seed fixes every mask
    model.eval()
    with torch.no_grad():
        a = model.medvill(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.BAR, images=images)
        b = model.medvill(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.BAR, images=images)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert not torch.allclose(a.last_hidden_state, out.last_hidden_state)  # training dropped something


def test_attention_dropout_drops_probabilities_not_scores():
    """The training attention path: softmax, then the mask on the probabilities, then x V."""
    from medvill.modeling.encoder import BertSelfAttention

    cfg = ModelConfig(hidden_size=16, num_attention_heads=2, attention_probs_dropout_prob=0.4)
    att = BertSelfAttention(cfg).train()
    h = torch.randn(2, 5, 16)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[:, :, :, 4] = False
    torch.manual_seed(11)
    ctx, _, _ = att(h, mask)
    q, k, v = (att._split(lin(h)) for lin in (att.query, att.key, att.value))
    probs = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.manual_seed(11)
    keep, scale = keep_mask(probs.shape, 0.4)
    expect = ((probs * keep * scale) @ v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(ctx, expect)
