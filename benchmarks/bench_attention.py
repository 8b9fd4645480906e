"""FlexAttention block masks against SDPA with the boolean mask: same numbers, and speed.

For each mask scheme at the paper's pre-training sizes (``--visual`` 180 sampled visual tokens,
``--text`` 253 text positions with reports of random length between ``--min-fill`` and full,
12 heads of 64), one attention call of ``torch.nn.functional.scaled_dot_product_attention``
(the dense boolean mask) and of the compiled ``flex_attention`` (a ``BlockMask`` built from the
scheme's index function, ``medvill.modeling.masks.scheme_mask_mod``; fully masked 128 x 128
blocks are skipped).  Reported per scheme:

* the share of blocks skipped, and the time to build the block mask (paid once per batch);
* forward (+ backward with ``--backward``, default on CUDA) time of each kernel, median of
  ``--repeats`` after warm-up (the first flex call compiles; that time is shown apart);
* the relative error ``|out - ref| / |ref|`` of both kernels (and of their input gradients)
  against SDPA in float64 on the CPU (``--dtype`` bf16 by default on CUDA, fp32 on the CPU):
  flex must be as close as SDPA (asserted: at most 2x SDPA's error plus a small floor).

``--diagnostics`` adds two flex timings that say where its time goes: the same block mask with
the mask looked up in the dense boolean tensor instead of the index function, and flex with no
mask at all (the kernel's floor at this size; a different result, so only timed).

FlexAttention has no CPU backward in torch 2.14 and compiles for a long time on a CPU:
``--quick`` (small sizes, forward only) runs its unfused reference on the CPU as a smoke test.

    python benchmarks/bench_attention.py [--batch-size 32] [--dtype bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DTYPES, command, console, machine, pick_device, print_table, sync, write_json  # noqa: E402


def median_time(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=None, help="default: CUDA 32, CPU 2")
    ap.add_argument("--visual", type=int, default=180, help="visual tokens (k)")
    ap.add_argument("--text", type=int, default=253, help="text positions (padded report length)")
    ap.add_argument("--min-fill", type=float, default=0.5, help="shortest report as a share of --text")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: CUDA bf16, CPU fp32")
    ap.add_argument("--schemes", nargs="+", default=["bi", "s2s", "bar", "non_crossing"])
    ap.add_argument("--backward", action=argparse.BooleanOptionalAction, default=None,
                    help="time forward + backward (default: on CUDA only; FlexAttention has no CPU backward)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diagnostics", action="store_true",
                    help="also time flex with a dense-lookup mask and with no mask (where its time goes)")
    ap.add_argument("--quick", action="store_true", help="smoke test: small sizes, unfused flex on the CPU")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.config import MaskScheme
    from medvill.modeling import encoder
    from medvill.modeling.encoder import ensure_nonempty_rows, flex_block_mask
    from medvill.modeling.masks import SequenceLayout, build_attention_mask, scheme_mask_mod

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.quick:
        args.visual, args.text, args.heads, args.head_dim, args.repeats = 12, 20, 2, 16, 2
        args.batch_size = args.batch_size or 2
    backward = cuda if args.backward is None else args.backward
    if backward and not cuda:
        raise SystemExit("--backward needs CUDA: FlexAttention has no CPU backward")
    if args.quick and not cuda:
        encoder.FLEX_COMPILE = False  # the unfused reference: no compilation, a smoke test only
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    b = args.batch_size or (32 if cuda else 2)
    h, d = args.heads, args.head_dim
    flex = encoder._flex_attention()
    g = torch.Generator().manual_seed(args.seed)

    rows, results = [], []
    for name in args.schemes:
        scheme = MaskScheme(name)
        layout = SequenceLayout(args.visual, args.text, cls_l=scheme == MaskScheme.NON_CROSSING)
        lengths = torch.randint(int(args.min_fill * args.text), args.text + 1, (b,), generator=g)
        valid = (torch.arange(args.text)[None] < lengths[:, None]).to(device)
        dense = ensure_nonempty_rows(build_attention_mask(scheme, layout, valid)[:, None])  # (B, 1, S, S)
        mod = scheme_mask_mod(scheme, layout, valid, pad_rows_attend_self=True)
        build_s = median_time(lambda: flex_block_mask(dense, mod), device, 3)
        block_mask = flex_block_mask(dense, mod)
        s = layout.length
        q, k, v = (torch.randn(b, h, s, d, generator=g).to(device, dtype).requires_grad_(backward) for _ in range(3))
        grad_out = torch.randn(b, h, s, d, generator=g).to(device, dtype)

        masks = {"flex": block_mask}
        if args.diagnostics:
            masks["flex_lookup"] = flex_block_mask(dense)
            masks["flex_nomask"] = None

        def run(kind: str):
            for t in (q, k, v):
                t.grad = None
            if kind == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
            else:
                out = flex(q, k, v, block_mask=masks[kind])
            if backward:
                out.backward(grad_out)
            return out

        # reference: float64 SDPA (math) on the CPU, same inputs
        q64, k64, v64 = (t.detach().double().cpu().requires_grad_(backward) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=dense.cpu())
        ref_grads = None
        if backward:
            ref.backward(grad_out.double().cpu())
            ref_grads = [q64.grad, k64.grad, v64.grad]
        errors, grad_errors, timing = {}, {}, {}
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            run("flex")
            sync(device)
            compile_s = time.perf_counter() - t0
            for kind in ("sdpa", "flex"):
                out = run(kind)
                errors[kind] = rel_err(out.detach(), ref.detach())
                if backward:
                    grad_errors[kind] = max(rel_err(t.grad, r) for t, r in zip((q, k, v), ref_grads, strict=True))
                run(kind)  # warm-up
                timing[kind] = median_time(lambda kind=kind: run(kind), device, args.repeats)
            for kind in masks:
                if kind != "flex":
                    run(kind)  # compile / warm-up
                    run(kind)
                    timing[kind] = median_time(lambda kind=kind: run(kind), device, args.repeats)
        floor = 1e-5 if dtype == torch.float32 else 2e-3
        for label, errs in (("output", errors), ("input gradients", grad_errors)):
            if errs and errs["flex"] > 2 * errs["sdpa"] + floor:
                raise AssertionError(f"{name}: flex {label} error {errs['flex']:.2e} vs SDPA {errs['sdpa']:.2e}")
        sparsity = 1.0 - float(block_mask.to_dense().float().mean())  # blocks never computed
        speedup = timing["sdpa"] / timing["flex"]
        rows.append([name, f"{sparsity:.0%}", build_s * 1e3, timing["sdpa"] * 1e3, timing["flex"] * 1e3, speedup,
                     f"{errors['sdpa']:.1e} / {errors['flex']:.1e}",
                     f"{grad_errors['sdpa']:.1e} / {grad_errors['flex']:.1e}" if backward else "-", compile_s]
                    + ([timing["flex_lookup"] * 1e3, timing["flex_nomask"] * 1e3] if args.diagnostics else []))
        results.append({"scheme": name, "seq_len": s, "block_sparsity": sparsity, "block_mask_build_s": build_s,
                        "sdpa_s": timing["sdpa"], "flex_s": timing["flex"], "flex_speedup": speedup,
                        "flex_lookup_s": timing.get("flex_lookup"), "flex_nomask_s": timing.get("flex_nomask"),
                        "rel_err": errors, "grad_rel_err": grad_errors, "first_flex_call_s": compile_s})

    machine_line = machine(device)
    cmd = command(__file__, argv)
    what = "forward + backward" if backward else "forward"
    print_table(
        f"Attention kernels: SDPA (boolean mask) vs FlexAttention (block mask), {what}, batch {b}, {h} heads x {d}, "
        f"{str(dtype).replace('torch.', '')}",
        machine_line, cmd,
        ["scheme", "blocks skipped", "mask build ms", "sdpa ms", "flex ms", "flex speedup",
         "rel. error sdpa / flex", "grad rel. error sdpa / flex", "first flex call s"]
        + (["flex lookup-mask ms", "flex no-mask ms"] if args.diagnostics else []),
        rows,
        notes=[f"S = 1 + {args.visual} + 1 + {args.text} (+1 CLS_L for non_crossing); report lengths uniform in "
               f"[{int(args.min_fill * args.text)}, {args.text}]; median of {args.repeats}; errors against float64 "
               "SDPA on the CPU" + ("; unfused flex (--quick on the CPU): its times mean nothing" if args.quick and
                                    not cuda else "")],
    )
    write_json(args.json, {"benchmark": "attention", "machine": machine_line, "command": cmd, "batch_size": b,
                           "heads": h, "head_dim": d, "dtype": str(dtype), "backward": backward, "results": results})
    console.print("flex equal to sdpa within tolerance for every scheme")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
