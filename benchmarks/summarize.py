"""The summary lines of ``make bench``: one ``name: value (target X)`` line per target, read
from the JSON files the benchmarks wrote into one folder (``train.json``, ``generation.json``,
``data.json``).  A benchmark that did not run, or ran without the configuration its target is
about (e.g. ``--quick``), shows ``not measured`` with the reason.  ``generation_speedup_128`` is
measured with the weight format the generation benchmark names (``int8`` by default: the fastest
that keeps the metrics, BENCHMARKS.md); ``decode_fraction_of_bound`` is fp32's.

    python benchmarks/summarize.py bench-output
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# name -> (file, target, why it can be missing)
SOURCES = {
    "generation_speedup_128": ("generation.json", "25", "needs the base preset and 128 new tokens"),
    "decode_fraction_of_bound": ("generation.json", "0.8", "needs the base preset and 128 new tokens"),
    "train_gemm_fraction_base": ("train.json", "0.60", "needs the base preset"),
    "train_gemm_fraction_small": ("train.json", "0.40", "needs the small preset"),
    "loader_over_train": ("data.json", "2", ""),
}


def summary_lines(folder: Path) -> list[str]:
    lines = []
    for name, (file, target, reason) in SOURCES.items():
        path = folder / file
        value, why = None, f"{path} not found"
        if path.is_file():
            data = json.loads(path.read_text())
            value = data.get("summary", {}).get(name)
            why = reason
            if name == "train_gemm_fraction_base" and data.get("device", "cpu").startswith("cuda"):
                target = f"0.45, MFU against the measured {data.get('amp', 'fp32')} matmul rate on the GPU"
            weights = data.get("summary", {}).get(f"{name}_weights")
            if weights:
                target = f"{target}; {weights} weights"
        shown = f"{value:.3g}" if isinstance(value, (int, float)) else f"not measured ({why})"
        lines.append(f"{name}: {shown} (target {target})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    print("\n".join(summary_lines(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
