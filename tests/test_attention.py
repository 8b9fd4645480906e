"""Attention kernels: sdpa, eager and FlexAttention agree; block masks skip exactly the empty blocks."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from medvill.config import ConfigError, MaskScheme, ModelConfig, preset_config
from medvill.generation import GenerationConfig, generate, generate_naive
from medvill.modeling import MedViLLForPretraining
from medvill.modeling import encoder as encoder_mod
from medvill.modeling.encoder import ensure_nonempty_rows, flex_block_mask
from medvill.modeling.masks import SequenceLayout, build_attention_mask, scheme_mask_mod

SCHEMES = (MaskScheme.BI, MaskScheme.S2S, MaskScheme.BAR, MaskScheme.NON_CROSSING)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def tiny_model_cfg(vocab: int = 60, impl: str = "sdpa") -> ModelConfig:
    cfg = preset_config("tiny").model
    return dataclasses.replace(cfg, vocab_size=vocab, pad_token_id=0, unk_token_id=1, cls_token_id=2,
                               sep_token_id=3, mask_token_id=4, attn_implementation=impl)


def batch(b: int = 3, t: int = 11, vocab: int = 60, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[-1, t - 4 :] = False  # one padded report
    ids[~valid] = 0
    return ids, valid, torch.randn(b, 3, size, size, generator=g)


def text_valid_of(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None] < torch.tensor(lengths)[:, None]


@pytest.fixture
def unfused_flex(monkeypatch):
    """FlexAttention's reference implementation: runs on the CPU in seconds (no compilation)."""
    monkeypatch.setattr(encoder_mod, "FLEX_COMPILE", False)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_index_function_is_the_dense_mask(scheme):
    from torch.nn.attention.flex_attention import create_mask

    layout = SequenceLayout(num_visual=5, text_len=7, cls_l=scheme == MaskScheme.NON_CROSSING)
    valid = text_valid_of([7, 3, 1], 7)
    dense = build_attention_mask(scheme, layout, valid)
    s = layout.length
    # FlexAttention evaluates the index function with vmap over (b, h, q, kv)
    got = create_mask(scheme_mask_mod(scheme, layout, valid), 3, 1, s, s, device="cpu")[:, 0]
    assert torch.equal(got, dense)
    got_pad = create_mask(scheme_mask_mod(scheme, layout, valid, pad_rows_attend_self=True), 3, 1, s, s, device="cpu")
    assert torch.equal(got_pad[:, 0], ensure_nonempty_rows(dense[:, None])[:, 0])
    assert not torch.equal(got_pad[:, 0], dense)  # the PAD rows differ: they attend themselves


@pytest.mark.parametrize("scheme", SCHEMES)
def test_block_mask_skips_exactly_the_fully_masked_blocks(scheme):
    """Paper-sized layout (k = 180 visual tokens, 253 text positions): a 128 x 128 block is
    computed iff at least one of its entries is allowed."""
    layout = SequenceLayout(num_visual=180, text_len=253, cls_l=scheme == MaskScheme.NON_CROSSING)
    valid = text_valid_of([253, 90], 253)
    dense = ensure_nonempty_rows(build_attention_mask(scheme, layout, valid)[:, None])  # (B, 1, S, S)
    s = layout.length
    block = 128
    n = -(-s // block)
    padded = torch.zeros(2, n * block, n * block, dtype=torch.bool)
    padded[:, :s, :s] = dense[:, 0]
    expected = padded.view(2, n, block, n, block).any(dim=4).any(dim=2)  # (B, n, n)
    for mod in (scheme_mask_mod(scheme, layout, valid, pad_rows_attend_self=True), None):
        bm = flex_block_mask(dense, mod)
        assert torch.equal(bm.to_dense()[:, 0].bool(), expected)
    if scheme == MaskScheme.BI:
        assert expected[0].all()  # nothing to skip without padding
    else:
        assert not expected[0].all()  # S2S / BAR / Non-crossing skip blocks even without padding
    assert not expected[1].all()  # the padded example's PAD columns form empty blocks


def _outputs(model, ids, valid, images, scheme, backward: bool):
    with torch.set_grad_enabled(backward):
        out = model(ids, valid, scheme, images=images, mlm_labels=ids.masked_fill(~valid, -100),
                    is_matched=torch.tensor([1, 0, 1], device=ids.device), num_visual_sampled=12,
                    generator=torch.Generator().manual_seed(3))
    grads = {}
    if backward:
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    return out.base.last_hidden_state.detach(), out.loss.detach(), grads


def _compare(results: dict, ref: str, valid: torch.Tensor, atol: float) -> None:
    ref_hidden, ref_loss, ref_grads = results[ref]
    n_head = ref_hidden.shape[1] - valid.shape[1]
    real = torch.cat([torch.ones(valid.shape[0], n_head, dtype=torch.bool, device=valid.device), valid], 1)
    for impl, (hidden, loss, grads) in results.items():
        assert torch.allclose(hidden[real], ref_hidden[real], atol=atol), impl
        assert torch.allclose(hidden, ref_hidden, atol=atol), impl  # PAD rows follow the same rule too
        assert torch.allclose(loss, ref_loss, atol=atol), impl
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            assert torch.allclose(g, ref_grads[name], atol=atol, rtol=1e-3), (impl, name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sdpa_and_eager_agree_forward_and_backward(scheme):
    torch.manual_seed(0)
    model = MedViLLForPretraining(tiny_model_cfg()).train()  # tiny: dropout 0, so train mode is deterministic
    ids, valid, images = batch()
    results = {}
    for impl in ("sdpa", "eager"):
        model.config.attn_implementation = impl
        results[impl] = _outputs(model, ids, valid, images, scheme, backward=True)
    assert results["sdpa"][2]  # gradients were compared
    _compare(results, "sdpa", valid, atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_flex_agrees_with_sdpa_forward(scheme, unfused_flex):
    torch.manual_seed(0)
    model = MedViLLForPretraining(tiny_model_cfg()).eval()
    ids, valid, images = batch()
    results = {}
    for impl in ("sdpa", "flex"):
        model.config.attn_implementation = impl
        results[impl] = _outputs(model, ids, valid, images, scheme, backward=False)
    _compare(results, "sdpa", valid, atol=1e-5)


def test_flex_training_on_the_cpu_is_a_clear_error(unfused_flex):
    model = MedViLLForPretraining(tiny_model_cfg(impl="flex")).train()
    ids, valid, images = batch()
    with pytest.raises(RuntimeError, match="no CPU backward.*attn_implementation=sdpa"):
        model(ids, valid, MaskScheme.BAR, images=images)


def test_flex_decoding_gives_the_same_tokens(unfused_flex):
    torch.manual_seed(0)
    model = MedViLLForPretraining(tiny_model_cfg()).eval()
    _, _, images = batch(b=2)
    cfg = GenerationConfig(max_length=6, min_length=6)
    model.config.attn_implementation = "sdpa"
    ref = generate(model, images, cfg)
    model.config.attn_implementation = "flex"
    assert generate(model, images, cfg) == ref  # prefix through flex, cached steps through SDPA
    assert generate_naive(model, images, cfg) == ref  # every step through flex


def test_flex_refuses_attention_dropout_in_training(unfused_flex):
    cfg = dataclasses.replace(tiny_model_cfg(impl="flex"), attention_probs_dropout_prob=0.1)
    model = MedViLLForPretraining(cfg).train()
    ids, valid, images = batch()
    with pytest.raises(RuntimeError, match="attention_probs_dropout_prob=0"):
        model(ids, valid, MaskScheme.BAR, images=images)
    with torch.no_grad():
        model.eval()(ids, valid, MaskScheme.BAR, images=images)  # no dropout in eval: fine


def test_unknown_attention_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        dataclasses.replace(tiny_model_cfg(), attn_implementation="flash").validate()
    model = MedViLLForPretraining(tiny_model_cfg())
    model.config.attn_implementation = "flash"
    ids, valid, images = batch()
    with pytest.raises(ValueError, match="attn_implementation"):
        model(ids, valid, MaskScheme.BI, images=images)


def _compiled_flex_matches_sdpa(device: str, backward: bool, schemes=SCHEMES) -> None:
    torch.manual_seed(0)
    model = MedViLLForPretraining(tiny_model_cfg()).to(device).train(backward)
    ids, valid, images = (x.to(device) for x in batch())
    results = {}
    for scheme in schemes:
        for impl in ("sdpa", "flex"):
            model.config.attn_implementation = impl
            results[impl] = _outputs(model, ids, valid, images, scheme, backward)
        _compare(results, "sdpa", valid, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile needs a C compiler")
def test_compiled_flex_matches_sdpa_on_cpu():
    """The fused (compiled) kernel with block skipping, forward only (no CPU backward);
    compiling takes about a minute on 2 cores."""
    _compiled_flex_matches_sdpa("cpu", backward=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_flex_matches_sdpa_on_cuda():
    """Forward and backward (gradients of every parameter) on the GPU, for BAR (pre-training)
    and S2S (generation); benchmarks/bench_attention.py checks every scheme's kernel at full size
    (each scheme compiles its own kernel: tens of seconds)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _compiled_flex_matches_sdpa("cuda", backward=True, schemes=(MaskScheme.BAR, MaskScheme.S2S))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_eager_never_calls_sdpa(monkeypatch, checkpointing):
    """The configured kernel reaches every layer, gradient checkpointing included."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = MedViLLForPretraining(tiny_model_cfg(impl="eager")).train()
    model.medvill.encoder.gradient_checkpointing = checkpointing
    ids, valid, images = batch()
    model(ids, valid, MaskScheme.BAR, images=images, mlm_labels=ids.masked_fill(~valid, -100)).loss.backward()
    assert calls == []
    model.config.attn_implementation = "sdpa"
    model(ids, valid, MaskScheme.BAR, images=images, mlm_labels=ids.masked_fill(~valid, -100)).loss.backward()
    assert len(calls) >= model.config.num_hidden_layers


def test_padding_must_be_left_aligned():
    layout = SequenceLayout(num_visual=2, text_len=4)
    holes = torch.tensor([[True, False, True, False]])
    with pytest.raises(ValueError, match="left-aligned"):
        build_attention_mask(MaskScheme.BAR, layout, holes)
