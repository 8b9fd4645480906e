"""Agreement of ``medvill.labeler`` with the original CheXpert labeler on Open-I, and its speed.

The MedViLL Open-I split (``shared/data/openi/medvill_split/{Train,Valid,Test}.jsonl``, 3,547
reports) stores, per report, the observations the *original* CheXpert labeler found positive.
This script labels the same ``text`` field with the parser-free re-implementation and prints:

* per observation: precision / recall / F1 of our positives against theirs, and support;
* micro F1 over all 14 observations, and the share of reports whose positive set matches
  exactly;
* throughput (reports/s, one process, best of 3 runs over all reports, rule files already
  loaded) and the machine it ran on.

Usage: ``.venv/bin/python benchmarks/labeler_openi.py [--shared PATH] [--show-errors N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from medvill.labeler import CheXpertLabeler
from medvill.labels import CHEXPERT_OBSERVATIONS

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"
SPLITS = ("Train", "Valid", "Test")


def parse_label_field(value: str) -> frozenset[str]:
    """``"'Lung Opacity', 'Support Devices'"`` -> {"Lung Opacity", "Support Devices"}; ``"''"`` -> {}."""
    names = (part.strip().strip("'\"").strip() for part in value.split(","))
    return frozenset(n for n in names if n)


def load_openi(shared: Path) -> list[dict]:
    folder = shared / "data" / "openi" / "medvill_split"
    rows = []
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
    return rows


def agreement(gold: list[frozenset[str]], pred: list[frozenset[str]]) -> dict:
    """Per-observation and micro precision/recall/F1 of predicted vs reference positive sets."""
    per = {}
    tp_all = fp_all = fn_all = 0
    for name in CHEXPERT_OBSERVATIONS:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if name in g and name in p)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if name not in g and name in p)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if name in g and name not in p)
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        per[name] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn, "tp": tp, "fp": fp, "fn": fn}
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    micro = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else float("nan")
    exact = float(np.mean([g == p for g, p in zip(gold, pred, strict=True)])) if gold else float("nan")
    return {"per_observation": per, "micro_f1": micro, "exact_match": exact}


def positives(matrix: np.ndarray) -> list[frozenset[str]]:
    return [frozenset(CHEXPERT_OBSERVATIONS[j] for j in np.flatnonzero(row == 1.0)) for row in matrix]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared/ folder (default: ../shared)")
    ap.add_argument("--repeats", type=int, default=3, help="timing runs (best is reported)")
    ap.add_argument("--show-errors", type=int, default=0, metavar="N", help="print N disagreeing reports")
    args = ap.parse_args(argv)

    try:
        rows = load_openi(args.shared)
    except OSError as exc:
        print(f"cannot read the Open-I split under {args.shared}: {exc}", file=sys.stderr)
        return 2
    texts = [r["text"] for r in rows]
    gold = [parse_label_field(r["label"]) for r in rows]

    labeler = CheXpertLabeler()
    labeler.label_many(texts[:50])  # warm-up
    best = float("inf")
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        matrix = labeler.label_many(texts)
        best = min(best, time.perf_counter() - start)
    pred = positives(matrix)
    result = agreement(gold, pred)

    print(f"Open-I MedViLL split: {len(rows)} reports; reference = positives of the original CheXpert labeler")
    print()
    print(f"{'observation':28s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'support':>8s} {'ours':>6s}")
    for name, m in result["per_observation"].items():
        ours = m["tp"] + m["fp"]
        print(f"{name:28s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:8d} {ours:6d}")
    print()
    print(f"micro F1:              {result['micro_f1']:.4f}")
    print(f"exact positive-set match: {result['exact_match']:.4f} of reports")
    print(f"throughput:            {len(rows) / best:,.0f} reports/s (one process, best of {args.repeats}, "
          f"{best:.2f} s for {len(rows)} reports)")
    print(f"machine:               {platform.platform()}; {platform.processor() or platform.machine()}; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()} ({platform.python_implementation()})")

    if args.show_errors:
        print()
        shown = 0
        for r, g, p in zip(rows, gold, pred, strict=True):
            if g != p:
                print(f"[{r['id']}] missing={sorted(g - p)} extra={sorted(p - g)}\n    {r['text']}")
                shown += 1
                if shown >= args.show_errors:
                    break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
