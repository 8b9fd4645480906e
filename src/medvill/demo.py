"""The whole pipeline on the built-in synthetic data, in minutes on a laptop.

synthetic data -> pre-training with BAR and S2S -> fine-tuning of the four tasks from each
pre-trained model and from scratch (the Fine-tuning Only baseline), and of the paper's other
baselines where the paper has them (CNN & Transformer: classification, retrieval, VQA; TieNet:
classification, generation) -> evaluation on the test split with bootstrap resamples ->
paper-style tables (``results.md``, ``results.csv``, ``results.json``) with t-tests against
MedViLL (BAR).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .config import RunConfig, apply_override
from .data.registry import synthetic_root
from .evaluate import compare_runs
from .figures import demo_figures
from .finetune import TASKS, run_evaluation, run_finetuning
from .modeling.baselines import BASELINE_TASKS
from .pipeline import run_pretraining

#: demo sizes per preset: (pre-training steps, fine-tuning steps, validation interval, retrieval queries);
#: small: 50 fine-tuning steps (60 before the baseline rows were added) keep the demo under 15 min on 2 cores
DEMO_STEPS = {"tiny": (4, 4, 2, 8), "small": (250, 50, 25, 50), "base": (1000, 300, 100, 100)}
#: baseline rows (table name -> ``--init``), each on the tasks it has (modeling/baselines.py)
BASELINE_ROWS = {"CNN&Transformer": "cnn-transformer", "TieNet": "tienet"}


def run_demo(cfg: RunConfig, output: Path, masks: tuple[str, ...] = ("bar", "s2s"), n_bootstrap: int = 30,
             pretrain_steps: int | None = None, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    start = time.perf_counter()
    pre_steps, ft_steps, eval_every, queries = DEMO_STEPS.get(cfg.preset, DEMO_STEPS["small"])
    if pretrain_steps is not None:
        pre_steps = pretrain_steps
    timings: dict[str, float] = {}

    console.rule("[bold]1. synthetic chest X-ray data")
    t0 = time.perf_counter()
    root = synthetic_root(cfg.data.synthetic_n, cfg.model.image_size, cfg.data.synthetic_seed)
    cfg.data.root = str(root)
    timings["data_s"] = time.perf_counter() - t0
    console.print(f"{cfg.data.synthetic_n} image-report pairs at {cfg.model.image_size} px in {root}")

    inits: dict[str, str] = {}
    pretrain_history: dict[str, list[dict]] = {}
    for mask in masks:
        console.rule(f"[bold]2. pre-training ({mask})")
        t0 = time.perf_counter()
        pcfg = _with(cfg, f"pretrain.mask={mask}", f"train.max_steps={pre_steps}")
        run = run_pretraining(pcfg, output / f"pretrain-{mask}", console=console)
        pretrain_history[mask] = run.result.history
        inits[f"MedViLL-{mask.upper()}"] = str(output / f"pretrain-{mask}")
        timings[f"pretrain_{mask}_s"] = time.perf_counter() - t0
    inits["FT-only"] = "scratch"

    tables = {}
    for task in TASKS:
        console.rule(f"[bold]3. {task}: fine-tune and evaluate")
        t0 = time.perf_counter()
        evals = []
        rows = {**inits, **{n: b for n, b in BASELINE_ROWS.items() if task in BASELINE_TASKS[b]}}
        for name, init in rows.items():
            fcfg = _with(cfg, f"train.max_steps={ft_steps}", f"train.eval_every={eval_every}",
                         f"eval.max_queries={queries}", f"eval.n_candidates={min(100, _test_size(cfg))}")
            ft_dir = output / "finetune" / f"{task}-{name.replace('&', '-')}"
            run_finetuning(task, fcfg, init, ft_dir, console=console)
            metrics = run_evaluation(task, ft_dir, fcfg, split="test", n_bootstrap=n_bootstrap)
            ev_dir = output / "eval" / f"{task}-{name.replace('&', '-')}"
            ev_dir.mkdir(parents=True, exist_ok=True)
            (ev_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            evals.append(f"{name}={ev_dir}")
        tables[task] = compare_runs(evals, reference=next(iter(inits)))
        timings[f"{task}_s"] = time.perf_counter() - t0
        console.print(tables[task].to_markdown())

    timings["total_s"] = time.perf_counter() - start
    _write_results(output, tables, pretrain_history, timings, cfg)
    console.rule("[bold]4. figures")
    for path in demo_figures(output, model=f"MedViLL-{masks[0].upper()}"):
        console.print(f"figure: {path}")
    return {"tables": tables, "timings": timings, "pretrain": pretrain_history}


def _with(cfg: RunConfig, *overrides: str) -> RunConfig:
    import copy

    new = copy.deepcopy(cfg)
    for item in overrides:
        apply_override(new, item)
    return new.validate()


def _test_size(cfg: RunConfig) -> int:
    from .pipeline import load_split

    return len(load_split(cfg, "test"))


def _write_results(output: Path, tables: dict, pretrain: dict, timings: dict, cfg: RunConfig) -> None:
    md = [f"# medvill demo ({cfg.preset} preset, synthetic data)", ""]
    md.append("Mean (std) over bootstrap resamples of the test split; p-values of two-sample t-tests "
              "against MedViLL-BAR (`*` < 0.05).")
    md.append("")
    md.append("## Pre-training (first and last logged interval)")
    md.append("")
    md.append("| mask | step | mlm_loss | irm_loss | step | mlm_loss | irm_loss |")
    md.append("|---|---|---|---|---|---|---|")
    for mask, hist in pretrain.items():
        if hist:
            a, b = hist[0], hist[-1]
            md.append(f"| {mask} | {a['step']} | {a['mlm_loss']:.4f} | {a['irm_loss']:.4f} | {b['step']} | "
                      f"{b['mlm_loss']:.4f} | {b['irm_loss']:.4f} |")
    for task, table in tables.items():
        md += ["", f"## {task}", "", table.to_markdown()]
    md += ["", "## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k[:-2]} | {v:.0f} |" for k, v in timings.items()]
    (output / "results.md").write_text("\n".join(md) + "\n")
    header, rows = None, []
    for task, table in tables.items():
        lines = table.to_csv().splitlines()
        header = "task," + lines[0]
        rows += [f"{task},{line}" for line in lines[1:]]
    (output / "results.csv").write_text("\n".join([header or "task", *rows]) + "\n")
    (output / "results.json").write_text(json.dumps({
        "preset": cfg.preset, "timings_s": timings,
        "pretrain": {m: {"first": h[0], "last": h[-1]} for m, h in pretrain.items() if h},
        "tasks": {t: json.loads(table.to_json()) for t, table in tables.items()},
    }, indent=2) + "\n")
