"""Throughput of the prepared-image cache (``medvill.data.prepare.prepare_cache``).

Makes ``--n`` synthetic chest radiographs per source format at a realistic detector size
(about 2048 x 2048 to 2048 x 2500 pixels: synthetic anatomy upsampled, plus detector noise and,
on every third image, a black frame), as 12-bit-in-16-bit PNG and as 8-bit JPEG (quality 95),
under a temporary folder (``--workdir``, default ``/tmp/medvill-bench``; sources are kept there
and reused by later runs with the same ``--n``/``--seed``).  Then it runs ``prepare_cache`` into
fresh output folders with ``workers=1`` and with ``workers=<CPUs>`` and prints images/s
(wall time of the whole call, worker start-up included; best of ``--repeat`` interleaved runs).

    .venv/bin/python benchmarks/prepare_throughput.py [--n 200] [--size 512] [--workers 1 16]

Only newly written images count (every run starts from an empty output folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medvill.data.prepare import prepare_cache
from medvill.data.records import Record
from medvill.data.transforms import Preprocess

FORMATS = ("png16", "jpeg")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _make_source(args: tuple[int, int, str, Path, Path]) -> None:
    """One source image: base anatomy ``i % bases`` upsampled to about ``side`` px + noise."""
    i, side, fmt, base_path, out = args
    rng = np.random.default_rng(i)
    base = Image.open(base_path).convert("F")
    h = side + int(rng.integers(0, side // 4))  # portrait-ish, like most chest films
    img = np.asarray(base.resize((side, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    img = np.clip(img + rng.normal(0.0, 0.004, img.shape).astype(np.float32), 0.0, 1.0)
    if i % 3 == 0:  # black frame / padding
        pad = side // 16
        img[:pad], img[-pad:], img[:, :pad], img[:, -pad:] = 0.0, 0.0, 0.0, 0.0
    if fmt == "png16":
        Image.fromarray(np.rint(img * 4095).astype(np.uint16)).save(out)
    else:
        Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(out, quality=95)


def make_sources(workdir: Path, n: int, side: int, seed: int) -> dict[str, list[Path]]:
    from medvill.data.synthetic import generate_synthetic

    key = f"n{n}-side{side}-seed{seed}"
    bases_dir = workdir / f"bases-seed{seed}"
    if not (bases_dir / "meta.json").is_file():
        shutil.rmtree(bases_dir, ignore_errors=True)
        generate_synthetic(bases_dir, n=16, image_size=512, seed=seed)
    bases = sorted((bases_dir / "images").glob("*.png"))
    out: dict[str, list[Path]] = {}
    jobs = []
    for fmt in FORMATS:
        folder = workdir / f"src-{key}-{fmt}"
        folder.mkdir(parents=True, exist_ok=True)
        ext = "png" if fmt == "png16" else "jpg"
        paths = [folder / f"cxr{i:05d}.{ext}" for i in range(n)]
        out[fmt] = paths
        jobs += [(i, side, fmt, bases[i % len(bases)], p) for i, p in enumerate(paths) if not p.is_file()]
    if jobs:
        print(f"making {len(jobs)} source images in {workdir} ...", file=sys.stderr, flush=True)
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(_cpus(), mp_context=ctx) as pool:
            list(pool.map(_make_source, jobs, chunksize=4))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="source images per format (default 200)")
    ap.add_argument("--size", type=int, default=512, help="prepared image size (default 512, the paper's)")
    ap.add_argument("--source-size", type=int, default=2048, help="source width in pixels (default 2048)")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="worker counts to compare (default: 1 and the number of CPUs)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "medvill-bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per setting, interleaved; the best is reported (default 2: shared machines are noisy)")
    args = ap.parse_args(argv)
    worker_counts = args.workers or sorted({1, _cpus()})

    sources = make_sources(args.workdir, args.n, args.source_size, args.seed)
    pre = Preprocess(image_size=args.size)
    rows = []
    for fmt, paths in sources.items():
        records = [Record(id=p.stem, image=p, text="synthetic") for p in paths]
        rates: dict[int, float] = {}
        for _ in range(max(1, args.repeat)):
            for w in worker_counts:
                out = args.workdir / f"out-{fmt}-w{w}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                summary = prepare_cache(records, out, pre, workers=w, progress=sys.stderr.isatty())
                assert summary.n_written == len(records), summary.describe()
                rates[w] = max(rates.get(w, 0.0), len(records) / (time.perf_counter() - t))
                shutil.rmtree(out, ignore_errors=True)
        rows.append((fmt, rates))

    with Image.open(sources["png16"][0]) as im:
        example = f"{im.size[0]}x{im.size[1]}"
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{_cpus()} usable CPUs (os.cpu_count() = {os.cpu_count()}), Python {platform.python_version()}")
    print(f"sources: {args.n} per format, {args.source_size} px wide, up to {args.source_size * 5 // 4} px tall "
          f"(e.g. {example}); output {args.size} x {args.size} 8-bit PNG")
    head = ["source format"] + [f"workers={w} (images/s)" for w in worker_counts]
    if len(worker_counts) > 1:
        head.append(f"ratio {worker_counts[-1]}/{worker_counts[0]}")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for fmt, rates in rows:
        cells = ["PNG 16-bit (12-bit data)" if fmt == "png16" else "JPEG 8-bit (quality 95)"]
        cells += [f"{rates[w]:.1f}" for w in worker_counts]
        if len(worker_counts) > 1:
            cells.append(f"{rates[worker_counts[-1]] / rates[worker_counts[0]]:.2f}x")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
