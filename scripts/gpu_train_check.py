"""GPU check of the training options: memory and speed of the base configuration, exact resume.

    PYTHONPATH=src python3 scripts/gpu_train_check.py --out OUT [--smoke]

1. The paper's base configuration (ResNet-50 at 512 px, BERT-base, k = 180 of 256 visual
   tokens, 253 report tokens, BAR pre-training) trained through ``medvill.train.loop.fit`` for
   a few steps on random images and reports (memory and speed do not depend on the content):
   peak GPU memory (``torch.cuda.max_memory_allocated``) and the median step time for each
   per-GPU batch size and option (bf16 / fp16 / fp32, gradient checkpointing, channels_last).
   An out-of-memory run is reported as such.
2. Exact resume on the GPU: a tiny pre-training run (dropout on, so the CUDA generator
   matters) of 12 steps, resumed from its step-4 checkpoint (the step-8 one removed) and
   compared with the uninterrupted run, in bf16 and fp16 (gradient-scaler state), in
   deterministic mode.

Writes ``OUT/gpu_train_check.json`` and prints a table.  ``--smoke`` runs small sizes (on the
CPU too) to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from medvill.config import MaskScheme, ModelConfig, PretrainConfig, TrainConfig, load_config
from medvill.data.pairs import ReportPairCollator
from medvill.modeling.heads import MedViLLForPretraining
from medvill.recipes.pretrain import run_pretraining
from medvill.tasks.pretrain import PretrainTask
from medvill.train.loop import fit


class RandomPairs(Dataset):
    """``n`` examples of the model's shapes: random images (a pool of 8), random report ids
    with 15 % MLM labels, half matched."""

    def __init__(self, n: int, cfg: ModelConfig, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.n, self.cfg = n, cfg
        self.images = [torch.randn(3, cfg.image_size, cfg.image_size, generator=g) for _ in range(8)]
        self.ids = torch.randint(1000, cfg.vocab_size, (n, cfg.max_text_len), generator=g)
        self.ids[:, -1] = cfg.sep_token_id
        self.chosen = torch.rand(n, cfg.max_text_len, generator=g) < 0.15

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i].numpy()
        labels = torch.where(self.chosen[i], self.ids[i], -100).numpy()
        labels[-1] = -100
        return {"images": self.images[i % 8], "text_ids": ids, "mlm_labels": labels, "is_matched": i % 2,
                "index": i, "text_index": i}


def measure(mcfg: ModelConfig, batch: int, steps: int, mixed_precision: str, checkpointing: bool,
            channels_last: bool, k: int, cpu: bool) -> dict:
    row = {"batch": batch, "mixed_precision": mixed_precision, "gradient_checkpointing": checkpointing,
           "channels_last": channels_last}
    warm = 2
    try:
        torch.manual_seed(0)
        model = MedViLLForPretraining(mcfg, load_pretrained_backbone=False)
        tcfg = TrainConfig(batch_size=batch, max_steps=warm + steps, lr=1e-5, warmup_steps=1, log_every=1,
                           mixed_precision=mixed_precision, gradient_checkpointing=checkpointing,
                           channels_last=channels_last, progress=False, cpu=cpu)
        loader = DataLoader(RandomPairs(batch * (warm + steps), mcfg), batch_size=batch, shuffle=True,
                            drop_last=True, collate_fn=ReportPairCollator(mcfg.pad_token_id),
                            generator=torch.Generator().manual_seed(0), num_workers=2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            result = fit(model, PretrainTask(PretrainConfig(mask=MaskScheme.BAR, visual_tokens_sampled=k)), loader,
                         tcfg, tmp, lambda m, d: None, console=Console(quiet=True))
        times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(result.history, result.history[1:])][warm - 1:]
        step_s = statistics.median(times)
        row.update(status="ok", step_s=round(step_s, 4), samples_per_s=round(batch / step_s, 1),
                   loss_first=round(result.history[0]["loss"], 4), loss_last=round(result.history[-1]["loss"], 4))
        if torch.cuda.is_available():
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
    except Exception as exc:  # report and go on with the next configuration
        row.update(status=f"error: {type(exc).__name__}: {exc}"[:400])
        traceback.print_exc()
    finally:
        model = None  # noqa: F841
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def resume_check(mixed_precision: str, deterministic: bool, work: Path, cpu: bool) -> dict:
    row = {"mixed_precision": mixed_precision, "deterministic": deterministic}
    sets = ["train.max_steps=12", "train.checkpoint_every=4", "train.keep_checkpoints=0", "train.progress=false",
            f"train.deterministic={str(deterministic).lower()}", f"train.mixed_precision={mixed_precision}",
            "model.hidden_dropout_prob=0.1", "data.synthetic_n=64", "pretrain.mask=bi_s2s",
            f"train.cpu={str(cpu).lower()}"]
    a, b = work / f"a-{mixed_precision}-{deterministic}", work / f"b-{mixed_precision}-{deterministic}"
    quiet = Console(quiet=True)
    try:
        run_pretraining(load_config("tiny", None, sets), a, console=quiet)
        shutil.copytree(a / "checkpoints", b / "checkpoints")
        shutil.rmtree(b / "checkpoints" / "step-00000008")
        run = run_pretraining(load_config("tiny", None, sets + ["train.resume=auto"]), b, console=quiet)
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        diff = max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa)
        row.update(status="ok", resumed_from=Path(run.result.resumed_from).name,
                   bitwise=all(torch.equal(wa[n], wb[n]) for n in wa), max_abs_diff=diff)
    except Exception as exc:
        row.update(status=f"error: {type(exc).__name__}: {exc}"[:400])
        traceback.print_exc()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu-train-check"))
    ap.add_argument("--smoke", action="store_true", help="small sizes: checks the script (CPU too)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=None, help="only the first N memory rows")
    ap.add_argument("--no-resume", action="store_true", help="skip the resume checks")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp())
    os.environ.setdefault("MEDVILL_CACHE", str(work / "cache"))
    cpu = not torch.cuda.is_available()
    base = dataclasses.replace(load_config("base").model, backbone_pretrained=False)
    if args.smoke:
        base = dataclasses.replace(load_config("tiny").model, vocab_size=2000, backbone_pretrained=False)
    k = 180 if not args.smoke else 12
    env = {"gpu": torch.cuda.get_device_name() if not cpu else None, "torch": torch.__version__,
           "python": platform.python_version(), "model": "tiny (smoke)" if args.smoke else "base",
           "command": " ".join(["PYTHONPATH=src python3 scripts/gpu_train_check.py", *sys.argv[1:]])}
    print(json.dumps(env))
    plan = [  # (batch, precision, checkpointing, channels_last)
        (16, "bf16", False, False), (32, "bf16", False, False), (32, "bf16", True, False),
        (16, "fp16", False, False), (64, "bf16", True, False), (32, "bf16", False, True),
    ]
    if args.smoke:
        plan = [(4, "no", False, False), (4, "bf16", True, True)]
    plan = plan[: args.rows]
    rows = []
    t0 = time.perf_counter()
    for batch, mp, ckpt, cl in plan:
        row = measure(base, batch, args.steps, mp, ckpt, cl, k, cpu)
        rows.append(row)
        print(json.dumps(row), flush=True)
    resume = []
    for mp, det in [] if args.no_resume else ([("bf16", True), ("fp16", True)] if not cpu else [("no", True)]):
        r = resume_check(mp, det, work, cpu)
        resume.append(r)
        print(json.dumps(r), flush=True)
    out = {"environment": env, "train_steps": rows, "resume": resume, "wall_s": round(time.perf_counter() - t0, 1)}
    (args.out / "gpu_train_check.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{'batch':>5} {'precision':>9} {'ckpt':>5} {'NHWC':>5} {'peak GiB':>9} {'step s':>7} "
          f"{'samples/s':>9}  status")
    for r in rows:
        print(f"{r['batch']:>5} {r['mixed_precision']:>9} {str(r['gradient_checkpointing']):>5} "
              f"{str(r['channels_last']):>5} {r.get('peak_gib', '-'):>9} {r.get('step_s', '-'):>7} "
              f"{r.get('samples_per_s', '-'):>9}  {r['status']}")
    for r in resume:
        print(f"resume {r['mixed_precision']} deterministic={r['deterministic']}: {r}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
