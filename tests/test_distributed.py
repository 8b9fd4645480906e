"""Two CPU processes (gloo) train exactly like one process with the same global batch.

The workers are started with ``torch.multiprocessing`` and the environment variables that
``torchrun`` / ``accelerate launch`` set; the loop's Accelerator then runs as MULTI_CPU.
The CNN's BatchNorm is frozen (``train.batchnorm=frozen``) so that the result does not depend
on how the global batch is split (per-process batch statistics would make it differ).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from medvill.config import MaskScheme, PretrainConfig, load_config
from medvill.data.pairs import MLMSpec, ReportPairCollator, ReportPairDataset
from medvill.data.task_data import ImageTextCollator, ImageTextDataset
from medvill.modeling.heads import MedViLLForClassification, MedViLLForPretraining
from medvill.modeling.pretrained import unique_state_dict
from medvill.recipes.common import model_config_for
from medvill.tasks.classification import ClassificationTask, binary_targets
from medvill.tasks.generation import GenerationTask
from medvill.tasks.pretrain import PretrainTask
from medvill.tokenization import MedTokenizer
from medvill.train.loop import fit

PER_PROCESS_BATCH = 4
STEPS = 4  # 16 training examples / global batch 8 = 2 steps per epoch: two epochs


def train_cfg(batch_size: int):
    return load_config("tiny", None, [
        f"train.batch_size={batch_size}", f"train.max_steps={STEPS}", "train.lr=3e-3", "train.warmup_steps=1",
        "train.log_every=1", "train.eval_every=2", "train.progress=false", "train.batchnorm=frozen", "train.cpu=true",
    ]).train


def train_classifier(init: Path, records, out: Path, batch_size: int):
    """Fine-tune the saved initial model; return (model, result, eval forward passes)."""
    torch.set_num_threads(1)
    tok = MedTokenizer.from_pretrained(init)
    model = MedViLLForClassification.from_pretrained(init)
    mcfg = model.config
    train, val = records[:16], records
    make = lambda rs: ImageTextDataset([r.image for r in rs], [r.text for r in rs], binary_targets(rs), tok,  # noqa: E731
                                       mcfg.image_size, mcfg.max_text_len)
    loader = DataLoader(make(train), batch_size=batch_size, shuffle=True, drop_last=True,
                        collate_fn=ImageTextCollator(tok.pad_id), generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(make(val), batch_size=4, shuffle=False, collate_fn=ImageTextCollator(tok.pad_id))
    task = ClassificationTask()
    eval_passes = []
    model.register_forward_hook(lambda m, args, output: None if m.training else eval_passes.append(len(args[0])))
    result = fit(model, task, loader, train_cfg(batch_size), out, lambda m, d: None,
                 evaluate=lambda m: task.metrics(*task.predict(m, val_loader)), select_metric="auroc_micro")
    return model, result, eval_passes


def train_mlm_tasks(init: Path, records, out: Path) -> dict[str, torch.Tensor]:
    """Pre-training and report generation (whose matching head is unused) for 2 steps each."""
    tok = MedTokenizer.from_pretrained(init)
    mcfg = MedViLLForClassification.from_pretrained(init).config
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg)
    cfg = train_cfg(PER_PROCESS_BATCH)
    cfg.max_steps, cfg.eval_every = 2, 0
    for task, matching in ((PretrainTask(PretrainConfig(mask=MaskScheme.BI_S2S, visual_tokens_sampled=8)), True),
                           (GenerationTask(), False)):
        ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, MLMSpec(), matching=matching)
        loader = DataLoader(ds, batch_size=PER_PROCESS_BATCH, shuffle=True, drop_last=True,
                            collate_fn=ReportPairCollator(tok.pad_id), generator=torch.Generator().manual_seed(0))
        fit(model, task, loader, cfg, out / task.name, lambda m, d: None)
    return unique_state_dict(model)


def _worker(rank: int, world: int, port: int, init: str, records, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    model, result, eval_passes = train_classifier(Path(init), records, Path(out) / "run", PER_PROCESS_BATCH)
    save_file(unique_state_dict(model), str(Path(out) / f"rank{rank}.safetensors"))
    save_file(train_mlm_tasks(Path(init), records, Path(out) / "mlm"), str(Path(out) / f"mlm{rank}.safetensors"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({
        "selection": result.selection, "history": result.history, "eval_examples": sum(eval_passes),
        "distributed": torch.distributed.is_initialized() and torch.distributed.get_world_size()}))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def initial_model(fake_records, tmp_path_factory) -> Path:
    cfg = load_config("tiny")
    tok = MedTokenizer.train([r.text for r in fake_records], cfg.tokenizer.vocab_size, 1, True)
    torch.manual_seed(0)
    model = MedViLLForClassification(model_config_for(cfg, tok))
    return model.save_pretrained(tmp_path_factory.mktemp("init") / "model", tokenizer=tok)


@pytest.mark.slow  # two spawned interpreters: about 40 s measured on the shared 2-core machine
def test_two_processes_equal_one_process_with_the_same_global_batch(fake_records, initial_model, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(initial_model), fake_records, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert [r["distributed"] for r in ranks] == [2, 2]

    # the processes stay in lockstep: bitwise the same weights, the same log and selection
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    logs = [[{k: v for k, v in h.items() if k != "elapsed_s"} for h in r["history"]] for r in ranks]
    assert logs[0] == logs[1] and ranks[0]["selection"] == ranks[1]["selection"]
    # pre-training and report generation (a head without gradient) also train in lockstep
    mlm = [load_file(str(tmp_path / f"mlm{r}.safetensors")) for r in range(2)]
    assert all(torch.equal(mlm[0][k], mlm[1][k]) for k in mlm[0])

    # validation was split between the processes (24 examples, 6 batches: 3 each) and gathered
    assert [r["eval_examples"] for r in ranks] == [12 * 2, 12 * 2]  # 2 validations of 12 examples each

    # one process with the whole global batch (8) gives the same training
    model, result, eval_passes = train_classifier(initial_model, fake_records, tmp_path / "single",
                                                  2 * PER_PROCESS_BATCH)
    assert sum(eval_passes) == 24 * 2
    single = unique_state_dict(model)
    moved = 0.0
    init = load_file(str(initial_model / "model.safetensors"))
    for name, w in single.items():
        torch.testing.assert_close(weights[0][name], w, rtol=1e-4, atol=2e-5, msg=name)
        moved = max(moved, (w - init[name]).abs().max().item())
    assert moved > 1e-3  # training really changed the weights
    hist = ranks[0]["history"]
    assert [h["step"] for h in hist] == [h["step"] for h in result.history] == [1, 2, 3, 4]
    for h2, h1 in zip(hist, result.history, strict=True):
        assert h2["lr"] == pytest.approx(h1["lr"], rel=1e-12)  # one schedule step per optimiser step
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
    sel2, sel1 = ranks[0]["selection"], result.selection
    assert sel2["best_step"] == sel1["best_step"]
    for e2, e1 in zip(sel2["evaluations"], sel1["evaluations"], strict=True):
        assert e2["step"] == e1["step"] and e2["auroc_micro"] == pytest.approx(e1["auroc_micro"], abs=1e-6)
