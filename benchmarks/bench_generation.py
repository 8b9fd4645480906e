"""KV-cached against naive report decoding (``medvill.generation``): tokens/s and their ratio.

The model is the ``--preset`` (default ``base``: ResNet-50 at 512 px, BERT-base, 30,522-token
vocabulary) with random weights: the speed does not depend on the weights, and ``min_length =
max_length = N`` makes both decoders run the full N steps (no early [SEP]).  For each N in
``--lengths`` (default 64 and 128) greedy decoding of ``--batch-size`` images runs through
``generate`` (keys/values of earlier positions cached; each step encodes only the new token
and the next [MASK]) and ``generate_naive`` (re-encodes the whole sequence every step), each
timed end to end (CNN and prefix included; best of ``--repeats``), and the two must produce
identical tokens (asserted).  ``setup s`` is the cached decoder's fixed cost (CNN features and
the encoded image prefix), measured apart: the part of the cached time that no step saves.

    python benchmarks/bench_generation.py [--preset base] [--lengths 64 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_model_config,
    best_time,
    command,
    console,
    fmt,
    machine,
    peak_memory,
    pick_device,
    print_table,
    sync,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("tiny", "small", "base"), default="base")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128], help="new tokens per report")
    ap.add_argument("--batch-size", type=int, default=1, help="images decoded together")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per decoder (best is reported)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--attn", choices=("sdpa", "eager", "flex"), default="sdpa", help="model.attn_implementation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 4 and 8 tokens")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.generation import GenerationConfig, _Decoder, generate, generate_naive
    from medvill.modeling.heads import MedViLLForPretraining

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    preset = "tiny" if args.quick else args.preset
    lengths = [4, 8] if args.quick else args.lengths
    _, mcfg = bench_model_config(preset, args.attn)
    if max(lengths) + 1 > mcfg.max_text_len:
        raise SystemExit(f"--lengths: at most {mcfg.max_text_len - 1} new tokens with the {preset} preset")
    torch.manual_seed(0)
    model = MedViLLForPretraining(mcfg, load_pretrained_backbone=False).to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, mcfg.image_size, mcfg.image_size, generator=g).to(device)

    with torch.no_grad():
        generate(model, images, GenerationConfig(max_length=2, min_length=2))  # warm-up (allocator, kernels)
        setup_s = best_time(lambda: _Decoder(model, images, cached=True), device, args.repeats)

    rows, results = [], []
    for n in lengths:
        cfg = GenerationConfig(max_length=n, min_length=n)
        out: dict[str, list[list[int]]] = {}
        timing: dict[str, float] = {}
        memory = {}
        for name, fn in (("cached", generate), ("naive", generate_naive)):
            with peak_memory(device) as mem:
                timing[name] = best_time(lambda fn=fn, name=name: out.__setitem__(name, fn(model, images, cfg)),
                                         device, args.repeats)
            memory[name] = mem
        sync(device)
        if out["cached"] != out["naive"]:
            raise AssertionError(f"{n} tokens: cached and naive decoding disagree")
        if any(len(seq) != n for seq in out["cached"]):
            raise AssertionError(f"{n} tokens: a report stopped early ({[len(s) for s in out['cached']]})")
        tokens = n * args.batch_size
        speedup = timing["naive"] / timing["cached"]
        for name in ("cached", "naive"):
            rows.append([f"{name}, {n} new tokens", timing[name], tokens / timing[name],
                         speedup if name == "cached" else "reference", str(memory[name])])
        results.append({"new_tokens": n, "cached_s": timing["cached"], "naive_s": timing["naive"],
                        "cached_tokens_per_s": tokens / timing["cached"],
                        "naive_tokens_per_s": tokens / timing["naive"],
                        "speedup": speedup, "identical_tokens": True,
                        "peak_memory_bytes": {k: m.bytes for k, m in memory.items()}})

    machine_line = machine(device)
    cmd = command(__file__, argv)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print_table(
        f"Report generation, KV-cached vs naive ({preset}: {params:.1f}M parameters, vocabulary {mcfg.vocab_size}, "
        f"K={mcfg.num_visual_tokens} visual tokens, batch {args.batch_size}, greedy, attention {args.attn})",
        machine_line, cmd, ["decoder", "time s", "tokens/s", "speedup", "peak memory"], rows,
        notes=[f"identical tokens asserted for every length; end-to-end generate() time, best of {args.repeats}; "
               f"setup (CNN + encoded prefix, paid once per report by the cached decoder): {fmt(setup_s)} s",
               f"peak memory: {memory['cached'].method}"],
    )
    by_len = {r["new_tokens"]: r["speedup"] for r in results}
    summary = {"generation_speedup_128": by_len.get(128) if preset == "base" else None}
    write_json(args.json, {"benchmark": "generation", "machine": machine_line, "command": cmd, "preset": preset,
                           "batch_size": args.batch_size, "setup_s": setup_s, "results": results, "summary": summary})
    value = summary["generation_speedup_128"]
    console.print(f"generation_speedup_128: {fmt(value) if value is not None else 'not measured (needs base and 128)'}"
                  " (target 25)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
