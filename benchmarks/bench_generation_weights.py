"""Smaller weights on a trained generation checkpoint: agreement with fp32, metrics, reports/s.

For each weight format of ``--weights`` (:mod:`medvill.modeling.weights`) the checkpoint decodes
the ``--split`` images greedily (as ``medvill evaluate generation`` does: free-running, the
model's ``max_text_len - 1`` tokens at most) at each batch size of ``--batch-sizes``, timed
(images preloaded: decoding only, CNN included).  In fp32 every batch size must give the same
tokens (asserted); other formats show how often they agree with their own smallest batch.  The
reports of the largest batch are then scored as the evaluation scores them: BLEU-4, clinical
efficacy F1 (our labeler on generated vs reference reports) and the perplexity of the reference
reports, mean and std over ``--bootstrap`` resamples (the same resamples for every format), and
compared with fp32: the share of reports with identical tokens, and whether each metric's mean
stays within fp32's bootstrap std.

    python benchmarks/bench_generation_weights.py --checkpoint runs/ft/generation [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, peak_memory, print_table, write_json  # noqa: E402

METRICS = ("bleu4", "ce_f1", "perplexity")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a medvill finetune generation folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="only the first N examples of the split")
    ap.add_argument("--weights", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--bootstrap", type=int, default=30, help="bootstrap resamples (paper: 30)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from medvill.config import load_config
    from medvill.data.pairs import ReportPairCollator, ReportPairDataset
    from medvill.generation import GenerationConfig, generate, reference_nll
    from medvill.labeler import label_reports
    from medvill.modeling.heads import MedViLLForPretraining
    from medvill.modeling.weights import check_weights, convert_weights, weight_bytes
    from medvill.tasks.generation import GenerationScores
    from medvill.tasks.registry import scored, task_spec
    from medvill.tokenization import MedTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    if "fp32" not in args.weights:
        args.weights = ["fp32", *args.weights]
    for w in args.weights:
        check_weights(w, "cpu")
    device = torch.device("cpu")
    ckpt = args.checkpoint
    model = MedViLLForPretraining.from_pretrained(ckpt).eval()
    tok = MedTokenizer.from_pretrained(ckpt)
    run_config = ckpt / "run_config.yaml"
    cfg = load_config("small", run_config if run_config.is_file() else None)
    cfg = dataclasses.replace(cfg, model=model.config)
    records = task_spec("generation").examples(cfg, args.split)[: args.limit]
    mcfg = model.config
    ds = ReportPairDataset(records, tok, mcfg.image_size, mcfg.max_text_len, mlm=None, seed=0, matching=False)
    batch = ReportPairCollator(tok.pad_id)([ds[i] for i in range(len(ds))])
    images, text_ids, text_valid = batch["images"], batch["text_ids"], batch["text_valid"]
    gen_cfg = GenerationConfig(max_length=mcfg.max_text_len - 1)
    refs = [r.text for r in records]
    ref_labels = label_reports(refs)
    sizes = sorted(set(args.batch_sizes))

    def decode(m: torch.nn.Module, bs: int) -> tuple[list[list[int]], float]:
        generate(m, images[:1], GenerationConfig(max_length=2))  # warm-up
        t = time.perf_counter()
        out: list[list[int]] = []
        for s in range(0, len(images), bs):
            out += generate(m, images[s:s + bs], gen_cfg)
        return out, time.perf_counter() - t

    speed_rows, metric_rows, speeds, formats = [], [], [], {}
    reference: dict[str, Any] = {}
    for w in args.weights:
        m = convert_weights(copy.deepcopy(model), w)
        by_size: dict[int, list[list[int]]] = {}
        for bs in sizes:
            with peak_memory(device) as mem:
                tokens, elapsed = decode(m, bs)
            by_size[bs] = tokens
            same = sum(a == b for a, b in zip(tokens, by_size[sizes[0]], strict=True)) / len(tokens)
            if w == "fp32" and same < 1:
                raise AssertionError(f"fp32: batch {bs} gives other tokens than batch {sizes[0]} ({same:.3f} the same)")
            generated = sum(min(len(t) + 1, gen_cfg.max_length) for t in tokens)  # the [SEP] that ends a report counts
            speeds.append({"weights": w, "batch_size": bs, "time_s": elapsed, "reports_per_s": len(tokens) / elapsed,
                           "tokens_per_s": generated / elapsed, "same_as_batch_1": same,
                           "peak_memory_bytes": mem.bytes})
            speed_rows.append([w, str(bs), elapsed, len(tokens) / elapsed, generated / elapsed,
                               f"{same:.3f}", f"{mem.bytes / 2**20:,.0f} MiB"])
        tokens = by_size[sizes[-1]]
        hyps = [tok.decode(t) for t in tokens]
        nll, n = [], []
        for s in range(0, len(images), sizes[-1]):
            a, b = reference_nll(m, images[s:s + sizes[-1]], text_ids[s:s + sizes[-1]], text_valid[s:s + sizes[-1]])
            nll.append(a)
            n.append(b)
        scores = GenerationScores(hyps, refs, label_reports(hyps), ref_labels, torch.cat(nll).numpy(),
                                  torch.cat(n).numpy())
        metrics = scored(len(records), scores.metrics, args.bootstrap, seed=0)
        if w == "fp32":
            reference = {"tokens": tokens, "metrics": metrics}
        identical = float(np.mean([a == b for a, b in zip(tokens, reference["tokens"], strict=True)]))
        keeps = {k: abs(metrics[k]["mean"] - reference["metrics"][k]["mean"]) <= reference["metrics"][k]["std"]
                 for k in METRICS}
        formats[w] = {"identical_reports_vs_fp32": identical, "keeps_metrics": keeps,
                      "metrics": {k: {"mean": metrics[k]["mean"], "std": metrics[k]["std"]} for k in METRICS},
                      "weight_bytes": weight_bytes(m)}
        metric_rows.append([w, f"{identical:.3f}",
                            *(f"{metrics[k]['mean']:.4f} ({metrics[k]['std']:.4f})" for k in METRICS),
                            "yes" if all(keeps.values()) else "no: " + ", ".join(k for k, v in keeps.items() if not v),
                            f"{formats[w]['weight_bytes'] / 2**20:,.1f} MiB"])

    machine_line = machine(device)
    cmd = command(__file__, argv)
    title = (f"{ckpt}: {len(records)} {args.split} reports, greedy, at most {gen_cfg.max_length} tokens "
             f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    print_table(f"Decoding speed, {title}", machine_line, cmd,
                ["weights", "batch", "time s", "reports/s", "tokens/s", "same tokens as smallest batch",
                 "peak memory"], speed_rows,
                notes=["fp32: every batch size asserted to give the same tokens; tokens/s counts each report's [SEP]"])
    print_table(f"Agreement with fp32, {title}", machine_line, cmd,
                ["weights", "identical reports", "BLEU-4", "CE F1", "perplexity", "within fp32's std",
                 "weight memory"], metric_rows,
                notes=[f"mean (std) over {args.bootstrap} bootstrap resamples, the same for every format"])
    write_json(args.json, {"benchmark": "generation_weights", "machine": machine_line, "command": cmd,
                           "checkpoint": str(ckpt), "split": args.split, "examples": len(records),
                           "speed": speeds, "formats": formats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
