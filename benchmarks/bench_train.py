"""Pre-training step speed against this machine's measured dense-matmul rate.

First the hardware limit: the FLOP/s of a large square matrix product (``--gemm-n``, best of
``--gemm-repeats``) in fp32, and in the autocast type with ``--amp bf16|fp16``.  Then, for each
preset (tiny / small / base by default), one pre-training optimiser step as ``medvill pretrain``
takes it (MLM + IRM under BAR, k of K visual tokens, backward, clipping, AdamW), on a random
batch whose reports fill ``max_text_len`` (random weights; the speed does not depend on them):

* samples/s (best of ``--steps`` timed steps after ``--warmup``);
* FLOPs per step, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
  backward (matmuls, convolutions, attention; 2 per multiply-add; elementwise work and the
  optimiser are not counted, so they only show as a lower ratio);
* achieved FLOP/s and its ratio to the measured matmul rate (``gemm fraction``; on a GPU with
  ``--amp bf16`` this is the MFU against the measured bf16 rate);
* peak memory (see ``_common.py``).

The same command runs unchanged on a GPU (``--device auto`` picks CUDA when present).
``--profile`` adds a torch.profiler table of the top ops of one step of the last preset: what
bounds the step when the ratio is low.  ``--quick``: the tiny preset, small products, one
timed step (a smoke test, not a measurement).

    python benchmarks/bench_train.py [--presets tiny small base] [--amp bf16] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_BATCH,
    DTYPES,
    command,
    console,
    fmt,
    machine,
    matmul_rate,
    measure_train_step,
    pick_device,
    print_table,
    si,
    write_json,
)

PRESETS = ("tiny", "small", "base")


def dropout_ab(preset: str, batch_size: int, device: torch.device, amp: str, attn: str,
               channels_last: bool | None, rounds: int) -> dict:
    """Step times with torch's dropout (``F.dropout``; attention dropout inside SDPA) and with
    medvill's (:mod:`medvill.modeling.dropout`), alternating on one TrainStep."""
    import time

    import torch.nn.functional as F
    from _common import TrainStep, sync

    import medvill.modeling.dropout as md
    import medvill.modeling.encoder as enc

    step = TrainStep(preset, batch_size, device, amp, attn, channels_last=channels_last)
    if step.mcfg.hidden_dropout_prob == 0 and step.mcfg.attention_probs_dropout_prob == 0:
        raise SystemExit(f"--dropout-ab: the {preset} preset has no dropout")
    medvill_dropout, forward = md.dropout, enc.BertSelfAttention.forward

    def torch_attention(self, hidden, mask, past=None, output_attentions=False, impl="sdpa", block_mask=None,
                        bias=None):  # SDPA with its own dropout, as before medvill's
        q, k, v = (self._split(lin(hidden)) for lin in (self.query, self.key, self.value))
        p = self.dropout_p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, s, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, s, -1), (k, v), None

    def use(name: str) -> None:
        torch_dropout = name == "torch"
        md.dropout = (lambda x, p, training=True: F.dropout(x, p, training)) if torch_dropout else medvill_dropout
        enc.BertSelfAttention.forward = torch_attention if torch_dropout else forward

    times: dict[str, list[float]] = {"torch": [], "medvill": []}
    try:
        step()  # warm-up
        for _ in range(rounds):
            for name in times:
                use(name)
                sync(device)
                t = time.perf_counter()
                step()
                sync(device)
                times[name].append(time.perf_counter() - t)
    finally:
        use("medvill")
    return {"preset": preset, "batch_size": batch_size, "rounds": rounds, "times": times}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", choices=PRESETS, default=None, help="default: tiny small base")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="every preset's batch (default per device: CPU tiny 8, small 32, base 4; "
                         "CUDA tiny 128, small 128, base 32)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--amp", choices=("fp32", "bf16", "fp16"), default="fp32",
                    help="autocast type of the train step; its matmul rate is measured too")
    ap.add_argument("--attn", choices=("sdpa", "eager", "flex"), default="sdpa", help="model.attn_implementation")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="train.channels_last: the CNN in NHWC layout (default: the preset's setting, on)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per preset (best is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gemm-n", type=int, default=None, help="matrix side (default: CPU 4096, CUDA 8192)")
    ap.add_argument("--gemm-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="top ops of one step of the last preset (torch.profiler)")
    ap.add_argument("--dropout-ab", type=int, default=0, metavar="ROUNDS",
                    help="also time the last preset's step with torch's dropout and with medvill's, alternating "
                         "in one process for ROUNDS rounds (the preset must have dropout)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny preset, small products, one step")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 in matmuls or convolutions (torch's matmul default)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    presets = args.presets or (("tiny",) if args.quick else PRESETS)
    gemm_n = args.gemm_n or (256 if args.quick else 4096 if device.type == "cpu" else 8192)
    steps, warmup, repeats = (1, 1, 2) if args.quick else (args.steps, args.warmup, args.gemm_repeats)

    rates = {"fp32": matmul_rate(device, torch.float32, gemm_n, repeats)}
    if args.amp != "fp32":
        rates[args.amp] = matmul_rate(device, DTYPES[args.amp], gemm_n, repeats)
    limit = rates[args.amp]

    results = []
    for i, preset in enumerate(presets):
        bs = args.batch_size or DEFAULT_BATCH[device.type][preset]
        console.print(f"[dim]train step: {preset}, batch {bs}, {args.amp}, {args.attn} ...[/dim]")
        res = measure_train_step(preset, bs, device, args.amp, args.attn, steps, warmup,
                                 profile=args.profile and i == len(presets) - 1, channels_last=args.channels_last)
        results.append(res)

    ab = dropout_ab(presets[-1], args.batch_size or DEFAULT_BATCH[device.type][presets[-1]], device, args.amp,
                    args.attn, args.channels_last, args.dropout_ab) if args.dropout_ab else None

    machine_line = machine(device)
    cmd = command(__file__, argv)
    rows = [[f"matmul {n}x{n} {name}", None, None, None, None, si(r),
             "reference" if name == args.amp else r / limit, None]
            for name, r in rates.items() for n in [gemm_n]]
    for r in results:
        rows.append([f"train step {r.preset} ({r.params_m:.1f}M params, S={r.seq_len})", r.batch_size, r.step_s,
                     r.samples_per_s, f"{r.flops_per_step / 1e9:,.1f} G", si(r.achieved_flops),
                     r.achieved_flops / limit, f"{r.peak_memory_bytes / 2**20:,.0f} MiB"])
    label = "MFU" if device.type == "cuda" else "gemm fraction"
    print_table(
        "Pre-training step vs dense matmul", machine_line, cmd,
        ["what", "batch", "step s", "samples/s", "FLOP/step", "FLOP/s", f"{label} (vs {args.amp} matmul)",
         "peak memory"],
        rows,
        notes=[f"FLOPs: FlopCounterMode over forward + backward (2 per multiply-add); step: forward, backward, "
               f"clip, AdamW; best of {steps} after {warmup} warm-up; attention {args.attn}, {args.amp}"
               f", CNN {'channels_last' if all(r.channels_last for r in results) else 'NCHW'}",
               f"peak memory: {results[0].memory_method if results else '-'}"],
    )
    for r in results:
        if r.profile_table:
            console.print(f"[bold]top ops of one {r.preset} step (torch.profiler, by self time)[/bold]")
            print(r.profile_table, flush=True)

    if ab is not None:
        print_table(
            f"Dropout A/B: one {presets[-1]} step, torch's dropout against medvill's", machine_line, cmd,
            ["dropout", "best step s", "median step s", "samples/s (best)"],
            [[name, min(ts), sorted(ts)[len(ts) // 2], ab["batch_size"] / min(ts)] for name, ts in ab["times"].items()],
            notes=[f"{args.dropout_ab} rounds, alternating in one process (same model, batch and optimiser state "
                   "chain); torch: F.dropout and SDPA's own attention dropout (bernoulli_ masks)"],
        )

    by_preset = {r.preset: r for r in results}
    summary = {f"train_gemm_fraction_{p}": by_preset[p].achieved_flops / limit if p in by_preset else None
               for p in ("base", "small")}
    summary["train_samples_per_s_small"] = by_preset["small"].samples_per_s if "small" in by_preset else None
    write_json(args.json, {
        "benchmark": "train", "machine": machine_line, "command": cmd, "device": str(device),
        "amp": args.amp, "attn": args.attn, "channels_last": [r.channels_last for r in results], "matmul_n": gemm_n,
        "matmul_flops": rates,
        "results": [{k: v for k, v in vars(r).items() if k != "profile_table"} for r in results],
        "dropout_ab": ab,
        "summary": summary,
    })
    targets = {"base": "0.60" if device.type == "cpu" else "0.45, bf16 MFU on a GPU", "small": "0.40"}
    for p, target in targets.items():
        value = summary[f"train_gemm_fraction_{p}"]
        console.print(f"train_gemm_fraction_{p}: {fmt(value) if value is not None else f'not measured ({p} not run)'}"
                      f" (target {target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
