"""One 100-candidate retrieval trial, with and without per-image feature caching.

A pool of ``--candidates`` synthetic image-report pairs (``medvill.data.synthetic``, made once
under ``--workdir`` and reused) and one trial in both directions, as the evaluation runs it:
report-to-image (a report query against every candidate image) and image-to-report (an image
query against every candidate report); ``2 x candidates`` pair scores.

* cached: :class:`medvill.tasks.retrieval.PairScorer`, which loads and encodes every pool image
  once (its CNN features are kept) and scores each distinct (image, report) pair once;
* uncached: every pair scored from scratch: the image loaded and run through the CNN for each
  pair, no pair reused.

Both produce the same scores (asserted to float tolerance) and the same metrics; the table gives
wall time (image loading, CNN and transformer; best of ``--repeats``), pairs/s, CNN passes,
the speedup and peak memory.  Random weights (``--preset``, default ``small``: a base trial takes
minutes on a CPU; ``--preset base`` for the paper's model).

    python benchmarks/bench_retrieval.py [--preset small] [--candidates 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_model_config,
    best_time,
    command,
    console,
    machine,
    peak_memory,
    pick_device,
    print_table,
    write_json,
)


def synthetic_pool(workdir: Path, n: int, image_size: int, seed: int):
    """``n`` synthetic records (all splits), generated once into ``workdir``."""
    from medvill.data.records import read_jsonl_records
    from medvill.data.synthetic import generate_synthetic

    root = workdir / f"retrieval-synth-n{n}-px{image_size}-seed{seed}"
    if not (root / "meta.json").is_file():
        console.print(f"[dim]making {n} synthetic pairs at {image_size} px in {root} ...[/dim]")
        generate_synthetic(root, n=n, image_size=image_size, seed=seed)
    records = []
    for split in ("train", "validate", "test"):
        records += read_jsonl_records(root / f"{split}.jsonl", split=split)
    return records[:n]


class UncachedScorer:
    """Scores every pair from the image file: load, CNN, transformer; nothing kept."""

    def __init__(self, model, records, text_ids, pad_id: int, image_size: int, batch_size: int):
        self.model, self.records, self.text_ids, self.pad_id = model, records, text_ids, pad_id
        self.image_size, self.batch_size = image_size, batch_size
        self.device = next(model.parameters()).device
        self.cnn_passes = 0

    @torch.no_grad()
    def scores(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        from medvill.data.pairs import pad_stack
        from medvill.data.transforms import load_image

        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            images = torch.stack([load_image(self.records[i].image, self.image_size) for i, _ in chunk]).to(self.device)
            ids = pad_stack([self.text_ids[j] for _, j in chunk], self.pad_id).to(self.device)
            lengths = torch.tensor([len(self.text_ids[j]) for _, j in chunk], device=self.device)
            valid = torch.arange(ids.shape[1], device=self.device)[None] < lengths[:, None]
            out += self.model(ids, valid, images=images).logits.float().cpu().tolist()
            self.cnn_passes += len(chunk)
        return np.array(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (both scorers)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "medvill-bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 20 candidates")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.data.pairs import encode_reports
    from medvill.metrics import ranking_metrics
    from medvill.modeling.heads import MedViLLForRetrieval
    from medvill.recipes.common import model_config_for
    from medvill.tasks.retrieval import PairScorer, make_trials
    from medvill.tokenization import MedTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    preset = "tiny" if args.quick else args.preset
    n = 20 if args.quick else args.candidates
    cfg, mcfg = bench_model_config(preset)
    records = synthetic_pool(args.workdir, n, mcfg.image_size, args.seed)
    tokenizer = MedTokenizer.train([r.text for r in records], cfg.tokenizer.vocab_size, 1, cfg.tokenizer.lowercase)
    mcfg = model_config_for(dataclasses.replace(cfg, model=mcfg), tokenizer)
    torch.manual_seed(args.seed)
    model = MedViLLForRetrieval(mcfg, load_pretrained_backbone=False).to(device).eval()
    trial = make_trials(records, n_candidates=n, seed=args.seed, max_queries=1)[0]
    r2i = [(int(c), trial.query) for c in trial.candidates]  # report query, candidate images
    i2r = [(trial.query, int(c)) for c in trial.candidates]  # image query, candidate reports

    state: dict = {}

    def cached() -> None:
        scorer = PairScorer(model, records, tokenizer, mcfg.image_size, mcfg.max_text_len, args.batch_size)
        state["cached"] = (scorer.scores(r2i), scorer.scores(i2r), scorer.cnn_passes, len(scorer.cache))

    text_ids = encode_reports(tokenizer, [r.text for r in records], mcfg.max_text_len)

    def uncached() -> None:
        scorer = UncachedScorer(model, records, text_ids, tokenizer.pad_id, mcfg.image_size, args.batch_size)
        state["uncached"] = (scorer.scores(r2i), scorer.scores(i2r), scorer.cnn_passes, len(r2i) + len(i2r))

    from medvill.data.transforms import PIXEL_CACHE

    timing, memory = {}, {}
    limit, PIXEL_CACHE.max_bytes = PIXEL_CACHE.max_bytes, 0  # every load reads its file (no in-memory pixel cache)
    PIXEL_CACHE.clear()
    try:
        for name, fn in (("cached", cached), ("uncached", uncached)):
            with peak_memory(device) as mem:
                timing[name] = best_time(fn, device, args.repeats)
            memory[name] = mem
    finally:
        PIXEL_CACHE.max_bytes = limit
    (c_r2i, c_i2r, c_cnn, c_pairs), (u_r2i, u_i2r, u_cnn, u_pairs) = state["cached"], state["uncached"]
    for a, b, what in ((c_r2i, u_r2i, "report-to-image"), (c_i2r, u_i2r, "image-to-report")):
        if not np.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise AssertionError(f"{what}: cached and uncached scores differ by up to {np.abs(a - b).max():.2e}")
    metrics = {d: ranking_metrics(s, trial.positive, 5) for d, s in (("r2i", c_r2i), ("i2r", c_i2r))}
    metrics_uncached = {d: ranking_metrics(s, trial.positive, 5) for d, s in (("r2i", u_r2i), ("i2r", u_i2r))}

    scored = len(r2i) + len(i2r)
    speedup = timing["uncached"] / timing["cached"]
    rows = [
        ["cached (PairScorer)", timing["cached"], scored / timing["cached"], c_cnn, c_pairs, speedup,
         str(memory["cached"])],
        ["uncached", timing["uncached"], scored / timing["uncached"], u_cnn, u_pairs, "reference",
         str(memory["uncached"])],
    ]
    machine_line = machine(device)
    cmd = command(__file__, argv)
    print_table(
        f"One {n}-candidate retrieval trial, both directions ({preset}, {mcfg.image_size} px, "
        f"K={mcfg.num_visual_tokens}; random weights)",
        machine_line, cmd, ["scorer", "time s", "pairs/s", "CNN passes", "transformer pairs", "speedup", "peak memory"],
        rows,
        notes=[f"{scored} pair scores per trial; same scores asserted (atol 1e-4); time includes image loading "
               f"(from the files, no in-memory pixel cache); best of {args.repeats}; batch {args.batch_size} pairs",
               f"metrics{' (same for both)' if metrics == metrics_uncached else ' (cached)'}: "
               f"R2I MRR {metrics['r2i']['mrr']:.3f}, I2R MRR {metrics['i2r']['mrr']:.3f}",
               f"peak memory: {memory['cached'].method}"],
    )
    if metrics != metrics_uncached:
        console.print(f"note: tied scores ranked differently: {metrics} vs {metrics_uncached}")
    write_json(args.json, {"benchmark": "retrieval", "machine": machine_line, "command": cmd, "preset": preset,
                           "candidates": n, "timing_s": timing, "speedup": speedup,
                           "cnn_passes": {"cached": c_cnn, "uncached": u_cnn},
                           "peak_memory_bytes": {k: m.bytes for k, m in memory.items()}, "metrics": metrics,
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
