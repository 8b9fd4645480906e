"""Image preprocessing and DataLoader throughput against the train step's consumption.

Source radiographs as in ``prepare_throughput.py`` (``--n`` synthetic chest films upsampled to
``--source-size`` px, ``--source-format`` jpeg or 16-bit PNG; made once under ``--workdir``),
each paired with a synthetic report and its labels.  Measured in one run:

* prepare: ``medvill.data.prepare.prepare_cache`` from the sources into a fresh cache
  (margins cut, keep-aspect resize to the preset's image size, 8-bit PNG), all usable CPUs;
* DataLoader over the raw sources (every image preprocessed on the fly) and over the prepared
  cache: ``ReportPairDataset`` + ``ReportPairCollator`` exactly as ``medvill pretrain`` builds them
  (image decode, tensor, tokens, MLM masking, IRM pairing, batching), for each ``--workers``
  count; images/s over one full epoch, timed on the second epoch so that worker start-up is
  excluded (``persistent_workers``), with the in-memory pixel cache
  (``medvill.data.transforms.PIXEL_CACHE``) off; then over the raw sources with it on (what
  the second epoch of a data set that fits in it costs);
* the train step of the same preset (``_common.measure_train_step``: samples/s of a full
  pre-training step on this device).

``loader/train`` is loader images/s divided by train samples/s; the summary
``loader_over_train`` uses the prepared cache (what training reads after ``medvill prepare``)
with the largest worker count.  On a CPU-only machine the loader and the train step share the
cores when training, so the ratio measured apart is an upper bound there.

    python benchmarks/bench_data.py [--preset base] [--n 256] [--workers 0 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_BATCH,
    command,
    console,
    fmt,
    machine,
    measure_train_step,
    peak_memory,
    pick_device,
    print_table,
    usable_cpus,
    write_json,
)


def source_records(workdir: Path, n: int, side: int, fmt_name: str, seed: int):
    """``n`` records: the synthetic source films of ``prepare_throughput`` with reports and labels
    of the synthetic cases they were made from."""
    from prepare_throughput import make_sources

    from medvill.data.records import Record, read_jsonl_records

    sources = make_sources(workdir, n, side, seed)[fmt_name]
    bases_dir = workdir / f"bases-seed{seed}"
    base = {}
    for split in ("train", "validate", "test"):
        for r in read_jsonl_records(bases_dir / f"{split}.jsonl", split=split):
            base[Path(r.image).name] = r
    bases = sorted((bases_dir / "images").glob("*.png"))  # make_sources uses base i % len(bases)
    out = []
    for i, path in enumerate(sources):
        b = base[bases[i % len(bases)].name]
        out.append(Record(id=path.stem, image=path, text=b.text, labels=b.labels, split="train"))
    return out


def loader_rate(records, tokenizer, mcfg, batch_size: int, workers: int, seed: int) -> float:
    """Images/s of the second full epoch of the pre-training DataLoader."""
    from torch.utils.data import DataLoader

    from medvill.data.pairs import MLMSpec, ReportPairCollator, ReportPairDataset

    dataset = ReportPairDataset(records, tokenizer, mcfg.image_size, mcfg.max_text_len, MLMSpec(), seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=ReportPairCollator(tokenizer.pad_id), persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    for _ in loader:  # first epoch: worker start-up, file cache warm
        pass
    dataset.set_epoch(1)
    t = time.perf_counter()
    n = sum(len(batch["images"]) for batch in loader)
    rate = n / (time.perf_counter() - t)
    del loader
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("tiny", "small", "base"), default="base")
    ap.add_argument("--n", type=int, default=256, help="source images (default 256)")
    ap.add_argument("--source-size", type=int, default=2048, help="source width in pixels (default 2048)")
    ap.add_argument("--source-format", choices=("jpeg", "png16"), default="jpeg")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="DataLoader worker counts (default: 0 and the number of usable CPUs)")
    ap.add_argument("--batch-size", type=int, default=None, help="train and loader batch (default: per device)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="train step device")
    ap.add_argument("--amp", choices=("fp32", "bf16", "fp16"), default="fp32", help="train step autocast")
    ap.add_argument("--steps", type=int, default=3, help="timed train steps (best is reported)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "medvill-bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 16 small sources")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.config import preset_config
    from medvill.data.prepare import load_prepared, prepare_cache
    from medvill.data.transforms import PIXEL_CACHE, Preprocess
    from medvill.tokenization import MedTokenizer

    device = pick_device(args.device)
    preset = "tiny" if args.quick else args.preset
    n = 16 if args.quick else args.n
    side = 256 if args.quick else args.source_size
    workers = sorted(set(args.workers if args.workers is not None else [0, usable_cpus()]))
    batch = args.batch_size or DEFAULT_BATCH[device.type][preset]
    steps = 1 if args.quick else args.steps
    cfg = preset_config(preset)
    mcfg = cfg.model

    records = source_records(args.workdir, n, side, args.source_format, args.seed)
    tokenizer = MedTokenizer.train([r.text for r in records], cfg.tokenizer.vocab_size, 1, cfg.tokenizer.lowercase)

    cache = args.workdir / f"prepared-{preset}-{args.source_format}-n{n}-side{side}"
    shutil.rmtree(cache, ignore_errors=True)
    with peak_memory(torch.device("cpu")) as prep_mem:
        summary = prepare_cache(records, cache, Preprocess(image_size=mcfg.image_size), workers=usable_cpus(),
                                progress=False)
    if summary.n_written != n:
        raise RuntimeError(f"prepare wrote {summary.n_written} of {n} images: {summary.describe()}")
    prepared = load_prepared(cache)

    rows_raw = []
    runs = (("raw sources, preprocessed on the fly", records, 0), ("prepared cache", prepared, 0),
            ("raw sources, second epoch from the in-memory pixel cache", records, PIXEL_CACHE.max_bytes))
    for label, recs, cache_bytes in runs:
        # the process-wide pixel cache would serve the timed second epoch from memory: off
        # except for the row that measures it (a loader worker inherits the setting)
        PIXEL_CACHE.clear()
        limit, PIXEL_CACHE.max_bytes = PIXEL_CACHE.max_bytes, cache_bytes
        try:
            for w in workers:
                console.print(f"[dim]loader: {label}, {w} workers ...[/dim]")
                with peak_memory(torch.device("cpu")) as mem:
                    rate = loader_rate(recs, tokenizer, mcfg, batch, w, args.seed)
                rows_raw.append((f"DataLoader, {label}, workers={w}", rate, mem, label == "prepared cache", w))
        finally:
            PIXEL_CACHE.max_bytes = limit
            PIXEL_CACHE.clear()

    console.print(f"[dim]train step: {preset}, batch {batch} ...[/dim]")
    train = measure_train_step(preset, batch, device, args.amp, "sdpa", steps, warmup=1)
    consume = train.samples_per_s

    rows = [[f"prepare ({args.source_format} {side} px -> {mcfg.image_size} px PNG), workers={usable_cpus()}",
             summary.images_per_second, summary.images_per_second / consume, str(prep_mem)]]
    rows += [[name, rate, rate / consume, str(mem)] for name, rate, mem, _, _ in rows_raw]
    rows.append([f"train step {preset} ({device.type}, {args.amp}, batch {batch}): consumption", consume, "reference",
                 f"{train.peak_memory_bytes / 2**20:,.0f} MiB"])
    machine_line = machine(device)
    cmd = command(__file__, argv)
    print_table(
        f"Data pipeline vs train step ({n} source images, {preset} preset)", machine_line, cmd,
        ["stage", "images/s", "loader/train", "peak memory"], rows,
        notes=["loader: ReportPairDataset + ReportPairCollator as medvill pretrain builds them, second epoch "
               "(worker start-up excluded); prepare: wall time of prepare_cache into a fresh folder",
               f"peak memory: {prep_mem.method} (loader workers not included)"],
    )
    best = [r for r in rows_raw if r[3] and r[4] == max(workers)][0]
    summary_value = best[1] / consume
    write_json(args.json, {
        "benchmark": "data", "machine": machine_line, "command": cmd, "preset": preset, "n": n,
        "prepare_images_per_s": summary.images_per_second,
        "loaders": [{"what": name, "images_per_s": rate, "workers": w, "peak_memory_bytes": mem.bytes}
                    for name, rate, mem, _, w in rows_raw],
        "train_samples_per_s": consume, "train": {k: v for k, v in vars(train).items() if k != "profile_table"},
        "summary": {"loader_over_train": summary_value},
    })
    console.print(f"loader_over_train: {fmt(summary_value)} (target 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
