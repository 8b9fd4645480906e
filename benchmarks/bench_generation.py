"""Report decoding (``medvill.generation``): KV-cached against naive, against the memory bound,
with smaller weights, and in batches.

The model is the ``--preset`` (default ``base``: ResNet-50 at 512 px, BERT-base, 30,522-token
vocabulary) with random weights: the speed does not depend on the weights, and ``min_length =
max_length = N`` makes every decoder run the full N steps (no early [SEP]).  Every time is
``generate`` end to end (CNN and image prefix included): the best of ``--repeats`` runs for the
cached batch-1 decodes (a few seconds each), of ``--naive-repeats`` for the naive ones, one run
per batch; ``setup`` is the part of that run spent before the first step (CNN features and the
encoded image prefix).

1. Cached vs naive, fp32, batch 1, for each N in ``--lengths``: ``generate`` (keys and values
   of earlier positions cached) and ``generate_naive`` (re-encodes the whole sequence every
   step); identical tokens asserted.
2. The bound: a cached step reads every weight of the transformer and the MLM head once, and
   the cached keys/values of every row; at this machine's measured memory bandwidth (a 512 MiB
   copy, read + write bytes per second: ``_common.memory_bandwidth``) those bytes take the
   bound time.  ``fraction of bound`` = bound time / measured time per step (N = the longest
   length), per weight format of ``--weights`` (:mod:`medvill.modeling.weights`), with each
   format's speedup over naive fp32 decoding and whether its tokens equal fp32's.
3. Batches: reports/s at each of ``--batch-sizes`` for the formats of ``--batch-weights``, the
   longest length.  In fp32 a batch's reports must equal the same images decoded one at a time
   and in the smaller batch (asserted); the other formats quantise each batch's activations
   together, so only their agreement is shown.

    python benchmarks/bench_generation.py [--preset base] [--lengths 64 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_model_config,
    command,
    console,
    fmt,
    machine,
    memory_bandwidth,
    peak_memory,
    pick_device,
    print_table,
    sync,
    write_json,
)

#: the weight format whose speedup is the summary line (BENCHMARKS.md: the fastest format that
#: keeps the generation metrics of a trained checkpoint within their bootstrap std)
SUMMARY_WEIGHTS = "int8"


@dataclasses.dataclass
class Run:
    tokens: list[list[int]]
    time_s: float
    setup_s: float
    peak_bytes: int


def timed_generate(model, images: torch.Tensor, cfg, device: torch.device, repeats: int, naive: bool = False) -> Run:
    """``generate`` (or ``generate_naive``) end to end, best of ``repeats``, with the setup time of
    that run (the decoder's construction: CNN features and the encoded prefix)."""
    from medvill import generation

    setups: list[float] = []
    base = generation._Decoder

    class Timed(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            sync(device)
            t = time.perf_counter()
            super().__init__(*args, **kwargs)
            sync(device)
            setups.append(time.perf_counter() - t)

    generation._Decoder = Timed
    best: Run | None = None
    try:
        for _ in range(max(1, repeats)):
            setups.clear()
            with peak_memory(device) as mem:
                sync(device)
                t = time.perf_counter()
                out = (generation.generate_naive if naive else generation.generate)(model, images, cfg)
                sync(device)
                elapsed = time.perf_counter() - t
            if best is None or elapsed < best.time_s:
                best = Run(out, elapsed, sum(setups), mem.bytes)
    finally:
        generation._Decoder = base
    assert best is not None
    return best


def bytes_per_step(model, rows: int, new_tokens: int) -> tuple[float, float]:
    """``(weights, keys/values)``: bytes one cached step reads, averaged over ``new_tokens`` steps
    of ``rows`` rows: every weight of the transformer and the MLM head once (as stored: fp32,
    bf16 or int8), the embedding rows of the new tokens, and the cached keys and values of
    every row (fp32) that the two queries attend."""
    from medvill.modeling.weights import weight_bytes

    cfg = model.config
    emb = model.medvill.embeddings
    weights = (weight_bytes(model.medvill.encoder) + weight_bytes(model.mlm_head) + weight_bytes(emb.LayerNorm)
               + 2 * 3 * rows * cfg.hidden_size * 4)  # word + position + type rows of the 2 new tokens
    prefix = cfg.num_visual_tokens + 2  # [CLS] v_1..v_K [SEP_V]
    # step 0 attends prefix + 1 positions (its [MASK]); step t >= 1 prefix + t + 1 (t - 1 cached tokens,
    # the token just chosen and the next [MASK])
    positions = sum(prefix + (1 if t == 0 else t + 1) for t in range(new_tokens)) / new_tokens
    kv = 2 * cfg.num_hidden_layers * rows * positions * cfg.hidden_size * 4
    return float(weights), kv


def same_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def agreement(runs: list[list[int]], ref: list[list[int]]) -> str:
    """``identical``, or how many reports are identical and the first token that differs."""
    same = sum(r == f for r, f in zip(runs, ref, strict=True))
    if same == len(ref):
        return "identical"
    first = min(same_prefix_len(r, f) for r, f in zip(runs, ref, strict=True) if r != f)
    return f"{same}/{len(ref)} same, token {first} differs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("tiny", "small", "base"), default="base")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128], help="new tokens per report")
    ap.add_argument("--weights", nargs="+", default=["fp32", "bf16", "int8"], help="weight formats of table 2")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="reports decoded together")
    ap.add_argument("--batch-weights", nargs="+", default=["fp32", "bf16", "int8"], help="formats of table 3")
    ap.add_argument("--summary-weights", default=SUMMARY_WEIGHTS,
                    help="the format whose speedup is generation_speedup_128")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each cached batch-1 decode (best is kept)")
    ap.add_argument("--naive-repeats", type=int, default=1, help="timed runs of each naive decode (best is kept)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--attn", choices=("sdpa", "eager", "flex"), default="sdpa", help="model.attn_implementation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 4 and 8 tokens, batches 1 2 4")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.generation import GenerationConfig
    from medvill.modeling.heads import MedViLLForPretraining
    from medvill.modeling.weights import WEIGHT_FORMATS, check_weights, convert_weights, weight_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    preset = "tiny" if args.quick else args.preset
    lengths = [4, 8] if args.quick else sorted(args.lengths)
    batch_sizes = [1, 2, 4] if args.quick else sorted(args.batch_sizes)
    formats = [w for w in WEIGHT_FORMATS if w in {"fp32", *args.weights}]
    for w in {*args.weights, *args.batch_weights, args.summary_weights}:
        check_weights(w)
    skipped = [w for w in formats if w == "int8" and device.type != "cpu"]
    formats = [w for w in formats if w not in skipped]
    _, mcfg = bench_model_config(preset, args.attn)
    if max(lengths) + 1 > mcfg.max_text_len:
        raise SystemExit(f"--lengths: at most {mcfg.max_text_len - 1} new tokens with the {preset} preset")
    n_max = max(lengths)

    def build(weights: str):
        torch.manual_seed(0)
        model = MedViLLForPretraining(mcfg, load_pretrained_backbone=False).to(device).eval()
        return convert_weights(model, weights)

    g = torch.Generator().manual_seed(0)
    # at least two images: batch 1 decodes two one at a time
    images = torch.randn(max(2, *batch_sizes), 3, mcfg.image_size, mcfg.image_size, generator=g).to(device)
    copy_bw, read_bw = memory_bandwidth(device, 64 if args.quick else 512)
    fixed = {n: GenerationConfig(max_length=n, min_length=n) for n in lengths}

    # 1. cached vs naive, fp32, batch 1 ------------------------------------------------------
    models = {"fp32": build("fp32")}
    model = models["fp32"]
    with torch.no_grad():
        timed_generate(model, images[:1], GenerationConfig(max_length=2, min_length=2), device, 1)  # warm-up
    rows1, results = [], []
    cached: dict[int, Run] = {}
    naive: dict[int, Run] = {}
    for n in lengths:
        cached[n] = timed_generate(model, images[:1], fixed[n], device, args.repeats)
        naive[n] = timed_generate(model, images[:1], fixed[n], device, args.naive_repeats, naive=True)
        if cached[n].tokens != naive[n].tokens:
            raise AssertionError(f"{n} tokens: cached and naive decoding disagree")
        if any(len(seq) != n for seq in cached[n].tokens):
            raise AssertionError(f"{n} tokens: a report stopped early ({[len(s) for s in cached[n].tokens]})")
        speedup = naive[n].time_s / cached[n].time_s
        for name, run in (("cached", cached[n]), ("naive", naive[n])):
            rows1.append([f"{name}, {n} new tokens", run.time_s, n / run.time_s,
                          speedup if name == "cached" else "reference", f"{run.peak_bytes / 2**20:,.0f} MiB"])
        results.append({"new_tokens": n, "cached_s": cached[n].time_s, "naive_s": naive[n].time_s,
                        "setup_s": cached[n].setup_s, "cached_tokens_per_s": n / cached[n].time_s,
                        "naive_tokens_per_s": n / naive[n].time_s, "speedup": speedup, "identical_tokens": True,
                        "peak_memory_bytes": {"cached": cached[n].peak_bytes, "naive": naive[n].peak_bytes}})

    # 2. the bound, per weight format -------------------------------------------------------
    rows2, bounds = [], {}
    for w in formats:
        if w not in models:
            models[w] = build(w)
            timed_generate(models[w], images[:1], GenerationConfig(max_length=2, min_length=2), device, 1)
        run = cached[n_max] if w == "fp32" else timed_generate(models[w], images[:1], fixed[n_max], device,
                                                                args.repeats)
        wb, kv = bytes_per_step(models[w], 1, n_max)
        step_s = (run.time_s - run.setup_s) / n_max
        bound_s = (wb + kv) / copy_bw
        bounds[w] = {"weights": w, "new_tokens": n_max, "time_s": run.time_s, "setup_s": run.setup_s,
                     "step_s": step_s, "weight_bytes_per_step": wb, "kv_bytes_per_step": kv,
                     "bound_step_s": bound_s, "fraction_of_bound": bound_s / step_s,
                     "fraction_of_read_bound": (wb + kv) / read_bw / step_s,
                     "tokens_per_s": n_max / run.time_s, "speedup_vs_naive_fp32": naive[n_max].time_s / run.time_s,
                     "same_tokens_as_fp32": agreement(run.tokens, cached[n_max].tokens),
                     "model_weight_bytes": weight_bytes(models[w]), "peak_memory_bytes": run.peak_bytes}
        b = bounds[w]
        rows2.append([w, wb / 1e6, kv / 1e6, bound_s * 1e3, step_s * 1e3, b["fraction_of_bound"], run.setup_s,
                      b["tokens_per_s"], b["speedup_vs_naive_fp32"], b["same_tokens_as_fp32"],
                      f"{b['model_weight_bytes'] / 2**20:,.0f} MiB"])

    # 3. batches ---------------------------------------------------------------------------
    rows3, batches = [], []
    for w in [w for w in WEIGHT_FORMATS if w in args.batch_weights and w in formats]:
        if w not in models:
            models[w] = build(w)
        one = [timed_generate(models[w], images[i:i + 1], fixed[n_max], device, 1) for i in range(2)]
        prev: list[list[int]] = [r.tokens[0] for r in one]
        for bs in batch_sizes:
            if bs == 1:
                run = Run(prev, sum(r.time_s for r in one) / 2, sum(r.setup_s for r in one) / 2,
                          max(r.peak_bytes for r in one))
                same = "reference"
            else:
                run = timed_generate(models[w], images[:bs], fixed[n_max], device, 1)
                same = agreement(run.tokens[:len(prev)], prev)
                if w == "fp32" and same != "identical":
                    raise AssertionError(f"batch {bs}: fp32 reports differ from the same images in a smaller batch "
                                         f"or one at a time ({same})")
                prev = run.tokens
            wb, kv = bytes_per_step(models[w], bs, n_max)
            step_s = (run.time_s - run.setup_s) / n_max
            entry = {"weights": w, "batch_size": bs, "new_tokens": n_max, "time_s": run.time_s,
                     "setup_s": run.setup_s, "reports_per_s": bs / run.time_s, "tokens_per_s": bs * n_max / run.time_s,
                     "step_s": step_s, "fraction_of_bound": (wb + kv) / copy_bw / step_s,
                     "same_as_smaller_batches": same, "peak_memory_bytes": run.peak_bytes}
            batches.append(entry)
            rows3.append([w, str(bs), run.time_s, run.setup_s, entry["reports_per_s"], entry["tokens_per_s"],
                          step_s * 1e3, entry["fraction_of_bound"], same, f"{run.peak_bytes / 2**20:,.0f} MiB"])

    machine_line = machine(device)
    cmd = command(__file__, argv)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print_table(
        f"Report generation, KV-cached vs naive ({preset}: {params:.1f}M parameters, vocabulary {mcfg.vocab_size}, "
        f"K={mcfg.num_visual_tokens} visual tokens, batch 1, greedy, fp32, attention {args.attn})",
        machine_line, cmd, ["decoder", "time s", "tokens/s", "speedup", "peak memory"], rows1,
        notes=[f"identical tokens asserted for every length; end-to-end generate() time, best of {args.repeats} "
               f"(cached) and {args.naive_repeats} (naive); setup (CNN + encoded prefix, once per report): "
               f"{fmt(cached[n_max].setup_s)} s",
               "peak memory: peak RSS above the start (CPU) or CUDA max_memory_allocated"],
    )
    print_table(
        f"Cached decoding against the memory bound ({n_max} new tokens, batch 1): memory {copy_bw / 1e9:.1f} GB/s "
        f"(copy, read + write), {read_bw / 1e9:.1f} GB/s (read only)",
        machine_line, cmd,
        ["weights", "weights MB/step", "KV MB/step", "bound ms/step", "ms/step", "of bound", "setup s",
         "tokens/s", "speedup", "tokens vs fp32", "weight memory"], rows2,
        notes=["MB/step: read by one step, the weights as stored and the cached keys/values (mean over the steps); "
               "bound = those bytes / copy bandwidth; ms/step = (time - setup) / new tokens; speedup: over naive fp32",
               *(f"{w}: not measured on {device.type} (dynamic quantisation runs on the CPU only)" for w in skipped)],
    )
    print_table(
        f"Batched decoding ({n_max} new tokens per report, greedy)", machine_line, cmd,
        ["weights", "batch", "time s", "setup s", "reports/s", "tokens/s", "ms/step", "of bound",
         "tokens vs smaller batch", "peak memory"], rows3,
        notes=["one run each; batch 1: the mean of two images decoded one at a time; fp32 batches asserted "
               "identical to them and to the smaller batch's reports"],
    )
    full = preset == "base" and n_max == 128
    sw = args.summary_weights if args.summary_weights in bounds else "fp32"  # int8 is not measured on a GPU
    summary = {
        "generation_speedup_128": bounds[sw]["speedup_vs_naive_fp32"] if full else None,
        "generation_speedup_128_weights": sw,
        "generation_speedup_128_fp32": bounds["fp32"]["speedup_vs_naive_fp32"] if full else None,
        "decode_fraction_of_bound": bounds["fp32"]["fraction_of_bound"] if full else None,
    }
    write_json(args.json, {"benchmark": "generation", "machine": machine_line, "command": cmd, "preset": preset,
                           "copy_bandwidth_bytes_per_s": copy_bw, "read_bandwidth_bytes_per_s": read_bw,
                           "setup_s": cached[n_max].setup_s, "results": results, "bound": list(bounds.values()),
                           "batches": batches, "summary": summary})
    missing = "not measured (needs base and 128)"
    speed = summary["generation_speedup_128"]
    frac = summary["decode_fraction_of_bound"]
    console.print(f"generation_speedup_128: {fmt(speed) if speed is not None else missing} (target 25; "
                  f"{sw} weights)")
    console.print(f"decode_fraction_of_bound: {fmt(frac) if frac is not None else missing} (target 0.8; fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
