"""Mixed precision, gradient accumulation, gradient checkpointing, channels_last, BatchNorm modes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from medvill.config import ConfigError, load_config
from medvill.data.task_data import ImageTextCollator, ImageTextDataset
from medvill.modeling.heads import MedViLLForClassification
from medvill.recipes.common import model_config_for
from medvill.tasks.classification import ClassificationTask, binary_targets
from medvill.tokenization import MedTokenizer
from medvill.train.loop import fit
from medvill.train.memory import apply_memory_options


@pytest.fixture(scope="module")
def setup(fake_records):
    cfg = load_config("tiny")  # no dropout
    tok = MedTokenizer.train([r.text for r in fake_records], cfg.tokenizer.vocab_size, 1, True)
    mcfg = model_config_for(cfg, tok)
    torch.manual_seed(0)
    model = MedViLLForClassification(mcfg)
    ds = ImageTextDataset([r.image for r in fake_records], [r.text for r in fake_records],
                          binary_targets(fake_records), tok, mcfg.image_size, mcfg.max_text_len)
    return model, ds, ImageTextCollator(tok.pad_id)


def train(setup, tmp_path, batch_size, *overrides):
    model, ds, collate = setup
    model = copy.deepcopy(model)
    cfg = load_config("tiny", None, [f"train.batch_size={batch_size}", "train.progress=false", "train.log_every=1",
                                     "train.warmup_steps=1", "train.lr=3e-3", *overrides]).train
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    result = fit(model, ClassificationTask(), loader, cfg, tmp_path, lambda m, d: None)
    return model, result


def batch_of(setup, n=8):
    _, ds, collate = setup
    return collate([ds[i] for i in range(n)])


def test_bf16_autocast_on_cpu_trains(setup, tmp_path):
    model, _, _ = setup
    dtypes = set()
    probe = copy.deepcopy(model)
    probe.classifier.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype) if m.training else None)
    ds = setup[1]
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True, collate_fn=setup[2],
                        generator=torch.Generator().manual_seed(0))
    cfg = load_config("tiny", None, ["train.mixed_precision=bf16", "train.max_steps=18", "train.lr=3e-3",
                                     "train.progress=false", "train.log_every=3", "train.warmup_steps=1"]).train
    result = fit(probe, ClassificationTask(), loader, cfg, tmp_path, lambda m, d: None)
    assert dtypes == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in probe.parameters())  # fp32 master weights
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0] and losses == sorted(losses, reverse=True)  # falls at every log


def test_gradient_accumulation_equals_the_larger_batch(setup, tmp_path):
    # BatchNorm frozen: with batch statistics, 2 x 4 examples is not the same computation as 8
    big, rb = train(setup, tmp_path / "b", 8, "train.max_steps=4", "train.batchnorm=frozen")
    acc, ra = train(setup, tmp_path / "a", 4, "train.max_steps=4", "train.grad_accum=2", "train.batchnorm=frozen")
    assert [h["step"] for h in ra.history] == [1, 2, 3, 4]
    for h2, h1 in zip(ra.history, rb.history, strict=True):
        assert h2["lr"] == h1["lr"] and h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
    init = setup[0].state_dict()
    for (name, a), b in zip(acc.state_dict().items(), big.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=name)
    assert max((b - init[n]).abs().max().item() for n, b in big.state_dict().items()) > 1e-3


def _loss_and_grads(model, batch, seed=0):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks
    logits = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"].float())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(setup):
    model = copy.deepcopy(setup[0])
    for m in model.modules():  # with dropout, the recomputation must replay the same masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    batch = batch_of(setup)
    cfg = load_config("tiny").train
    loss0, grads0 = _loss_and_grads(model, batch)
    layer_calls = []
    # a pre-hook: the recomputation stops early (once the saved tensors are rebuilt), before a forward hook
    model.medvill.encoder.layer[0].register_forward_pre_hook(lambda *a: layer_calls.append(1))
    cfg.gradient_checkpointing = True
    apply_memory_options(model, cfg)
    loss1, grads1 = _loss_and_grads(model, batch)
    assert len(layer_calls) == 2  # forward, then the recomputation in backward
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys()
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-7, msg=n)
    with torch.no_grad():  # inference: no recomputation
        layer_calls.clear()
        model.eval()
        model(batch["text_ids"], batch["text_valid"], images=batch["images"])
    assert len(layer_calls) == 1


def test_channels_last_gives_the_same_outputs(setup):
    model = copy.deepcopy(setup[0]).eval()
    batch = batch_of(setup)
    with torch.no_grad():
        ref = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
    cfg = load_config("tiny").train
    cfg.channels_last = True
    apply_memory_options(model, cfg)
    conv = model.medvill.visual.trunk.body[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_hook(
        lambda m, args, out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        out = model(batch["text_ids"], batch["text_valid"], images=batch["images"]).logits
    assert seen == [True]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_frozen_batchnorm_keeps_running_statistics_and_trains_affine(setup, tmp_path):
    model, _ = train(setup, tmp_path, 8, "train.max_steps=2", "train.batchnorm=frozen")
    bn_before = setup[0].medvill.visual.trunk.body[1]
    bn = model.medvill.visual.trunk.body[1]
    assert torch.equal(bn.running_mean, bn_before.running_mean) and int(bn.num_batches_tracked) == 0
    assert not torch.equal(bn.weight, bn_before.weight)
    model, _ = train(setup, tmp_path, 8, "train.max_steps=2")  # default: batch statistics
    assert int(model.medvill.visual.trunk.body[1].num_batches_tracked) == 2


def test_sync_batchnorm_needs_gpus(setup):
    cfg = load_config("tiny", None, ["train.batchnorm=sync"]).train
    model = copy.deepcopy(setup[0])
    assert apply_memory_options(model, cfg, num_processes=1) is model  # nothing to synchronise
    with pytest.raises(ConfigError, match="SyncBatchNorm"):
        apply_memory_options(model, cfg, num_processes=2, device_type="cpu")
    with pytest.raises(ConfigError, match="train.batchnorm"):
        load_config("tiny", None, ["train.batchnorm=group"])


def test_mixed_precision_no_survives_yaml_booleans():
    # YAML 1.1 reads a bare `no` as False; the string key takes it back
    assert load_config("tiny", None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config("tiny", None, ["train.mixed_precision=fp8"])
