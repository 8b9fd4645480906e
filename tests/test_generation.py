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


# ------------------------------------------------------------------ batches, the preallocated cache

@pytest.fixture(scope="module")
def varied():
    """A tiny model whose reports depend on the image and end at different lengths: a plain
    pooled-pixel trunk instead of the CNN (whose untrained features barely differ) and weights
    large enough for the image to matter."""
    cfg = preset_config("tiny").model
    cfg = dataclasses.replace(cfg, vocab_size=40, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
                              mask_token_id=4)
    torch.manual_seed(0)
    m = MedViLLForPretraining(cfg).eval()
    m.medvill.visual.trunk = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(cfg.grid_size),
                                                 torch.nn.Conv2d(3, m.medvill.visual.out_channels, 1))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, 1.5 / mod.in_features**0.5)
            if isinstance(mod, torch.nn.Embedding):
                mod.weight.normal_(0, 1.0)
        m.mlm_head.bias.zero_()
    imgs = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 8
    return m, imgs


def _with_sep_bias(model, value):
    with torch.no_grad():
        model.mlm_head.bias[3] = value


def test_batched_greedy_equals_one_at_a_time(varied):
    """Reports that end at different steps leave the batch; each equals its batch-1 decoding
    and the naive decoder's, token for token."""
    model, imgs = varied
    _with_sep_bias(model, 0.0)
    cfg = GenerationConfig(max_length=12)
    batch = generate(model, imgs, cfg)
    assert len({len(r) for r in batch}) >= 3 and max(len(r) for r in batch) == 12  # ends at several steps
    assert batch == [generate(model, imgs[i:i + 1], cfg)[0] for i in range(len(imgs))]
    assert batch == generate_naive(model, imgs, cfg)
    assert generate(model, imgs[[4, 0, 2]], cfg) == [batch[4], batch[0], batch[2]]  # any order, any subset


def test_batched_beam_equals_one_at_a_time(varied):
    """An image whose search has ended leaves the batch; every image gets its batch-1 result."""
    model, imgs = varied
    _with_sep_bias(model, 2.5)
    try:
        cfg = GenerationConfig(max_length=12, num_beams=3)
        batch = generate(model, imgs, cfg)
        assert len({len(r) for r in batch}) >= 3  # searches end at different steps
        assert batch == [generate(model, imgs[i:i + 1], cfg)[0] for i in range(len(imgs))]
        assert batch == generate_naive(model, imgs, cfg)
    finally:
        _with_sep_bias(model, 0.0)


def test_preallocated_cache_equals_concatenation():
    """A DecodingCache written in place gives the encoder the same keys, values and outputs as
    the concatenated tuple cache, step after step, and through row gathers (beams, drops)."""
    from medvill.modeling.encoder import BertEncoder, DecodingCache

    cfg = preset_config("tiny").model
    torch.manual_seed(0)
    enc = BertEncoder(cfg).eval()
    g = torch.Generator().manual_seed(3)
    prefix = torch.randn(3, 5, cfg.hidden_size, generator=g)
    with torch.no_grad():
        past = enc(prefix, torch.ones(3, 5, 5, dtype=torch.bool), use_cache=True).past_key_values
        cache = DecodingCache(past, capacity=5 + 6)
        tuples = past
        for step, rows in enumerate([None, torch.tensor([2, 0, 1]), torch.tensor([1, 1, 2, 0]), torch.tensor([3, 0])]):
            if rows is not None:  # reorder, repeat and drop rows
                cache.gather(rows)
                tuples = tuple((k[rows], v[rows]) for k, v in tuples)
            x = torch.randn(len(tuples[0][0]), 2, cfg.hidden_size, generator=g)
            mask = torch.ones(1, 1, 2, cache.length + 2, dtype=torch.bool)
            mask[..., 0, -1] = False  # the token does not see the [MASK] after it
            fast = enc(x, mask, past_key_values=cache)
            slow = enc(x, mask, past_key_values=tuples, use_cache=True)
            assert torch.allclose(fast.last_hidden_state, slow.last_hidden_state, atol=1e-6), step
            cache.advance(1)  # keep the token, drop the [MASK]
            tuples = tuple((k[:, :, :-1], v[:, :, :-1]) for k, v in slow.past_key_values)
            for i, (k, v) in enumerate(tuples):
                assert torch.equal(cache.keys[i][: cache.rows, :, : cache.length], k)
                assert torch.equal(cache.values[i][: cache.rows, :, : cache.length], v)
        assert cache.length == 5 + 4
        with pytest.raises(RuntimeError, match="decoding cache full"):
            for _ in range(2):
                enc(x[:2], torch.ones(1, 1, 2, cache.length + 2, dtype=torch.bool), past_key_values=cache)
                cache.advance(2)


# ------------------------------------------------------------------ smaller weights

def test_weight_formats_convert_the_transformer_and_keep_outputs_close(model, varied):
    import copy

    from medvill.modeling.weights import Bf16Linear, check_weights, convert_weights, weight_bytes

    with_cnn = convert_weights(copy.deepcopy(model), "int8")
    trunk = [m for m in with_cnn.medvill.visual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert trunk and all(m.weight.dtype == torch.float32 for m in trunk)  # the CNN stays fp32
    assert isinstance(with_cnn.medvill.embeddings.visual_projection, torch.ao.nn.quantized.dynamic.Linear)
    model, imgs = varied
    _with_sep_bias(model, 0.0)
    fp32 = model.medvill.encoder
    for weights, kind in (("bf16", Bf16Linear), ("int8", torch.ao.nn.quantized.dynamic.Linear)):
        m = convert_weights(copy.deepcopy(model), weights)
        linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        assert not linears  # every Linear converted (the pixel trunk has none; a CNN is left alone)
        attn = m.medvill.encoder.layer[0].attention.self
        assert isinstance(attn.qkv, kind) and not hasattr(attn, "query")  # one fused product per layer
        assert m.medvill.visual.channels_last  # the fp32 CNN runs NHWC
        assert isinstance(m.mlm_head.decoder, kind)  # the tied decoder gets its own copy; the embeddings stay fp32
        assert m.medvill.embeddings.word_embeddings.weight.dtype == torch.float32
        assert weight_bytes(m.medvill.encoder) < 0.6 * weight_bytes(fp32)
        with torch.no_grad():
            feats = model.medvill.encode_image(imgs)
            ids = torch.full((len(imgs), 3), 7)
            valid = torch.ones_like(ids, dtype=torch.bool)
            ref, low = (mm.sequence_logprobs(ids, valid, feats) for mm in (model, m))
        assert low.dtype == torch.float32 and 0 < (low - ref).abs().max() < 0.25 * ref.abs().max()
        assert len(generate(m, imgs, GenerationConfig(max_length=6))) == len(imgs)
    assert check_weights("int8", "cpu") == "int8" and convert_weights(model, "fp32") is model
    with pytest.raises(ValueError, match="one of fp32, bf16, int8"):
        check_weights("fp16")
    with pytest.raises(ValueError, match="CPU only"):
        check_weights("int8", "cuda")


def test_fused_qkv_and_the_once_made_mask_keep_the_outputs(model, images):
    """fuse_qkv (the inference formats) changes only float rounding; the additive mask the
    encoder makes once per call gives exactly what SDPA gives for the boolean mask."""
    import copy

    from medvill.modeling.weights import fuse_qkv

    fused = fuse_qkv(copy.deepcopy(model))
    with torch.no_grad():
        feats = model.medvill.encode_image(images)
        ids = torch.randint(5, model.config.vocab_size, (len(images), 6), generator=torch.Generator().manual_seed(0))
        valid = torch.ones_like(ids, dtype=torch.bool)
        ref = model.sequence_logprobs(ids, valid, feats)
        torch.testing.assert_close(fused.sequence_logprobs(ids, valid, feats), ref, rtol=1e-5, atol=1e-5)
    cfg = GenerationConfig(max_length=8)
    assert generate(fused, images, cfg) == generate(model, images, cfg)

    layer = model.medvill.encoder.layer[0]
    h = torch.randn(2, 5, model.config.hidden_size)
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, :, torch.arange(5), torch.arange(5)] = True
    bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
    with torch.no_grad():
        assert torch.equal(layer(h, mask)[0], layer(h, mask, bias=bias)[0])


def test_evaluation_decodes_at_most_decode_batch_size_rows_at_once(model, images, monkeypatch):
    """eval.decode_batch_size caps the rows (images x beams) of one generate call; the reports
    are the same as a whole loader batch decoded together, in index order."""
    import medvill.tasks.generation as tg
    from medvill.config import ConfigError, load_config

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    batch = {"images": torch.cat([images, images.flip(0)]), "index": torch.tensor([5, 0, 3, 1, 4, 2])}
    calls = []
    real = tg.generate
    monkeypatch.setattr(tg, "generate", lambda m, imgs, cfg: calls.append(len(imgs)) or real(m, imgs, cfg))
    task = tg.GenerationTask()
    greedy, beams = GenerationConfig(max_length=5), GenerationConfig(max_length=5, num_beams=2)
    whole = task.generate_reports(model, [batch], Tok(), greedy)
    assert calls == [6]
    calls.clear()
    assert task.generate_reports(model, [batch], Tok(), greedy, max_rows=4) == whole
    assert calls == [4, 2]
    calls.clear()
    assert task.generate_reports(model, [batch], Tok(), beams, max_rows=4) == task.generate_reports(
        model, [batch], Tok(), beams)
    assert calls[:3] == [2, 2, 2]  # 2 beams: 2 images (4 rows) a call
    with pytest.raises(ConfigError, match="decode_batch_size"):
        load_config("tiny", None, ["eval.decode_batch_size=0"])
