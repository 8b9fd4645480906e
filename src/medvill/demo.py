"""The whole pipeline on the built-in synthetic data, in minutes on a laptop.

Default (``medvill demo``): synthetic data -> pre-training with the paper's BAR mask ->
fine-tuning of the four tasks from it (MedViLL-BAR) and from scratch (the Fine-tuning Only
baseline) -> evaluation on the test split with bootstrap resamples -> paper-style tables
(``results.md``, ``results.csv``, ``results.json``) with t-tests against MedViLL-BAR, sample
outputs (generated reports, answers to different questions about one image) and figures.

``--full`` (``run_demo(..., full=True)``): the paper's whole comparison: pre-training with
every mask scheme (BAR, S2S, Bi, Bi&S2S, Non-crossing), each fine-tuned on the four tasks,
plus the paper's other baselines where the paper has them (CNN & Transformer:
classification, retrieval, VQA; TieNet: classification, generation).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .config import RunConfig, apply_override
from .data.registry import synthetic_root
from .evaluate import compare_runs
from .figures import demo_figures
from .finetune import TASKS, run_evaluation, run_finetuning
from .modeling.baselines import BASELINE_TASKS
from .pipeline import load_split, load_vqa_split, run_pretraining
from .workers import init_worker

ALL_MASKS = ("bar", "s2s", "bi", "bi_s2s", "non_crossing")


@dataclass(frozen=True)
class DemoPlan:
    """How long each stage of the demo trains.  ``finetune_steps`` per task; validation every
    ``eval_fraction`` of a run's steps (model selection on the validation split);
    ``retrieval_queries``: test trials per direction."""

    pretrain_steps: int
    finetune_steps: dict[str, int]
    retrieval_queries: int
    pretrain_validations: int = 4
    eval_fraction: float = 0.5
    #: fine-tuning batches of similar report length (train.length_grouping); pre-training keeps
    #: random batches: grouped ones gather the short normal reports and slowed its matching loss
    #: (validation AUROC 0.55 against 0.82 after 1,000 steps)
    length_grouping: int = 4


#: per preset.  small: measured on the 2-core machine (README): the default demo (pre-training
#: + 8 fine-tunes, two at a time, + evaluation) in about 10 minutes, the set-up of a fresh clone
#: in 2 more.  Fine-tuning steps per task where the validation curves stopped paying for their
#: time (classification: 250 steps gave test AUROC 0.92 / F1 0.58, 500 gave 0.96 / 0.75;
#: generation is the exception: validation CE F1 0.394 at 400 steps, 0.445 at 600, but 600 steps
#: cost about 70 s more of a demo already near its 15-minute budget).
PLANS = {
    "tiny": DemoPlan(4, {t: 4 for t in TASKS}, 8, pretrain_validations=1),
    "small": DemoPlan(1000, {"classification": 500, "retrieval": 400, "vqa": 500, "generation": 400}, 50),
    "base": DemoPlan(2000, {t: 500 for t in TASKS}, 100),
}
#: baseline rows of --full (table name -> ``--init``), each on the tasks it has (modeling/baselines.py)
BASELINE_ROWS = {"CNN&Transformer": "cnn-transformer", "TieNet": "tienet"}
#: the columns of results.md (results.csv / results.json hold every metric)
HEADLINE = {
    "classification": ["auroc_micro", "f1_micro_val_thr", "f1_micro", "image_only_auroc_micro",
                       "image_only_f1_micro_val_thr"],
    "retrieval": ["r2i_mrr", "r2i_hit@5", "i2r_mrr", "i2r_hit@5"],
    "vqa": ["accuracy", "closed_accuracy", "open_accuracy"],
    "generation": ["bleu4", "ce_f1", "ce_f1_macro", "ce_f1_example", "ce_f1_micro_5", "perplexity"],
}


@dataclass
class DemoResult:
    tables: dict[str, Any]
    timings: dict[str, float]
    pretrain: dict[str, list[dict]] = field(default_factory=dict)  # train log per mask
    pretrain_validation: dict[str, list[dict]] = field(default_factory=dict)  # validation curve per mask


def run_demo(cfg: RunConfig, output: Path, full: bool = False, n_bootstrap: int = 30,
             pretrain_steps: int | None = None, console: Console | None = None,
             workers: int | None = None) -> DemoResult:
    """``workers``: training runs at once (default :func:`demo_workers`); each worker process
    trains one model on ``cpus // workers`` threads, so results do not depend on which worker
    ran what or in which order.  ``workers=1`` trains everything in this process."""
    console = console or Console()
    start = time.perf_counter()
    plan = PLANS.get(cfg.preset, PLANS["small"])
    pre_steps = pretrain_steps if pretrain_steps is not None else plan.pretrain_steps
    workers = demo_workers() if workers is None else workers
    masks = ALL_MASKS if full else ("bar",)
    timings: dict[str, float] = {}
    result = DemoResult(tables={}, timings=timings)

    console.rule("[bold]1. synthetic chest X-ray data")
    t0 = time.perf_counter()
    cfg.data.root = str(synthetic_root(cfg.data.synthetic_n, cfg.model.image_size, cfg.data.synthetic_seed))
    timings["data_s"] = time.perf_counter() - t0
    console.print(f"{cfg.data.synthetic_n} image-report pairs at {cfg.model.image_size} px in {cfg.data.root}")

    inits: dict[str, str] = {}
    n_test = len(load_split(cfg, "test"))
    with _Runner(workers, console) as runner:
        console.rule(f"[bold]2. pre-training ({', '.join(_mask_name(m) for m in masks)})")
        t0 = time.perf_counter()
        every = max(1, pre_steps // plan.pretrain_validations)
        jobs = {mask: (_pretrain_job, _with(cfg, f"pretrain.mask={mask}", f"train.max_steps={pre_steps}",
                                            f"train.eval_every={every}"), output / f"pretrain-{mask}")
                for mask in masks}
        for mask, (history, validation, seconds) in runner.run(jobs).items():
            result.pretrain[mask] = history
            result.pretrain_validation[mask] = validation
            inits[f"MedViLL-{_mask_name(mask)}"] = str(output / f"pretrain-{mask}")
            timings[f"pretrain_{mask}_s"] = seconds
        if len(masks) > 1:
            timings["pretrain_s"] = time.perf_counter() - t0
        inits["FT-only"] = "scratch"
        reference = next(iter(inits))

        for task in TASKS:
            console.rule(f"[bold]3. {task}: fine-tune and evaluate")
            t0 = time.perf_counter()
            steps = plan.finetune_steps[task]
            rows = dict(inits)
            if full:
                rows.update({n: b for n, b in BASELINE_ROWS.items() if task in BASELINE_TASKS[b]})
            fcfg = _with(cfg, f"train.max_steps={steps}", f"train.eval_every={max(1, int(steps * plan.eval_fraction))}",
                         f"eval.max_queries={plan.retrieval_queries}", f"eval.n_candidates={min(100, n_test)}",
                         f"train.length_grouping={plan.length_grouping}")
            jobs = {}
            for name, init in rows.items():
                slug = name.replace("&", "-")
                jobs[name] = (_finetune_job, task, fcfg, init, output / "finetune" / f"{task}-{slug}",
                              output / "eval" / f"{task}-{slug}", n_bootstrap)
            evals = [f"{name}={ev_dir}" for name, ev_dir in runner.run(jobs).items()]
            result.tables[task] = compare_runs(evals, reference=reference)
            timings[f"{task}_s"] = time.perf_counter() - t0
            console.print(result.tables[task].to_markdown(metrics=HEADLINE.get(task)))

    console.rule("[bold]4. sample outputs and figures")
    t0 = time.perf_counter()
    samples = sample_outputs(output, reference, cfg)
    for path in demo_figures(output, model=reference):
        console.print(f"figure: {path}")
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    _write_results(output, result, samples, cfg, plan, pre_steps, full)
    return result


MASK_NAMES = {"bar": "BAR", "s2s": "S2S", "bi": "Bi", "bi_s2s": "Bi&S2S", "non_crossing": "NonCross"}


def _mask_name(mask: str) -> str:
    return MASK_NAMES.get(mask, mask)


def _with(cfg: RunConfig, *overrides: str) -> RunConfig:
    new = copy.deepcopy(cfg)
    for item in overrides:
        apply_override(new, item)
    return new.validate()


def demo_workers() -> int:
    """Training runs the demo trains at once: one per CPU, at most 4.  The demo's models are
    small: on 2 cores two one-thread runs side by side finished two classification fine-tunes in
    62 s, one two-thread run after the other in 87 s."""
    return max(1, min(4, _cpus()))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerDiedError(RuntimeError):
    """A demo worker process ended without finishing its model (killed, out of memory)."""


class _Runner:
    """Runs named jobs ``(fn, *args)`` in this process (one worker) or in a pool of spawned
    worker processes, each on an equal share of the CPUs; ``run`` returns the results in the
    order the jobs were given and re-raises a job's error."""

    def __init__(self, workers: int, console: Console):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.console = workers, console
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
        if self.workers > 1:
            threads = max(1, _cpus() // self.workers)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=init_worker, initargs=(threads,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: dict[str, tuple]) -> dict[str, Any]:
        if self.pool is None or len(jobs) == 1:
            return {name: fn(*args, console=self.console) for name, (fn, *args) in jobs.items()}
        self.console.print(f"training {len(jobs)} models, {self.workers} at a time: {', '.join(jobs)}")
        futures = {name: self.pool.submit(fn, *args) for name, (fn, *args) in jobs.items()}
        done: dict[str, Any] = {}
        for future in as_completed(futures.values()):
            name = next(n for n, f in futures.items() if f is future)
            try:
                done[name] = future.result()
            except BrokenProcessPool:
                unfinished = ", ".join(n for n in jobs if n not in done)
                raise WorkerDiedError(f"a worker process died (killed, or out of memory?) while training {unfinished}; "
                                      "run the demo again, with --workers 1 to train one model at a time") from None
            self.console.print(f"  {name}: done")
        return {name: done[name] for name in jobs}


def _pretrain_job(cfg: RunConfig, out: Path, console: Console | None = None) -> tuple[list, list, float]:
    t0 = time.perf_counter()
    run = run_pretraining(cfg, out, console=console or Console(quiet=True))
    return run.result.history, run.result.validation, time.perf_counter() - t0


def _finetune_job(task: str, cfg: RunConfig, init: str, ft_dir: Path, ev_dir: Path, n_bootstrap: int,
                  console: Console | None = None) -> Path:
    """Fine-tune one model, score it on the test split; returns the folder of its metrics.json."""
    run_finetuning(task, cfg, init, ft_dir, console=console or Console(quiet=True))
    metrics = run_evaluation(task, ft_dir, cfg, split="test", n_bootstrap=n_bootstrap)
    ev_dir.mkdir(parents=True, exist_ok=True)
    (ev_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return ev_dir


def sample_outputs(output: Path, model: str, cfg: RunConfig, n_reports: int = 3) -> dict[str, Any]:
    """What a user sees: generated reports beside their references (from the generation
    evaluation), and one test image asked different questions by the VQA model."""
    from .inference import Pipeline

    out: dict[str, Any] = {"reports": [], "vqa": None}
    gen = output / "eval" / f"generation-{model.replace('&', '-')}" / "metrics.json"
    if gen.is_file():
        out["reports"] = json.loads(gen.read_text()).get("examples", {}).get("samples", [])[:n_reports]
    vqa_dir = output / "finetune" / f"vqa-{model.replace('&', '-')}"
    if (vqa_dir / "config.json").is_file():
        pipe = Pipeline.from_pretrained(vqa_dir, device="cpu")
        by_image: dict[str, list] = {}
        for it in load_vqa_split(cfg, "test"):
            by_image.setdefault(str(it.image), []).append(it)
        if by_image:  # the image asked the most questions with different answers
            image, qs = max(by_image.items(), key=lambda kv: (len({q.answer for q in kv[1]}), len(kv[1])))
            answers = pipe.answer(image, [q.question for q in qs])
            out["vqa"] = {"image": Path(image).name,
                          "questions": [{"question": q.question, "answer": a.answer, "reference": q.answer}
                                        for q, a in zip(qs, answers, strict=True)]}
    return out


def _write_results(output: Path, result: DemoResult, samples: dict[str, Any], cfg: RunConfig, plan: DemoPlan,
                   pre_steps: int, full: bool) -> None:
    p = cfg.pretrain
    reference = next(iter(result.tables.values())).reference if result.tables else "MedViLL-BAR"
    md = [f"# medvill demo ({cfg.preset} preset, synthetic data{', full comparison' if full else ''})", ""]
    md.append(f"Mean (std) over bootstrap resamples of the test split; p-values of two-sample t-tests "
              f"against {reference} (`*` < 0.05).  Every model was selected on the validation split.")
    md += ["", "## Setup", ""]
    md.append(f"- data: {cfg.data.synthetic_n} synthetic image-report pairs at {cfg.model.image_size} px "
              f"(split 80/10/10); model: {cfg.model.backbone} CNN, transformer {cfg.model.hidden_size} x "
              f"{cfg.model.num_hidden_layers} layers, random initialisation (no ImageNet or BERT weights).")
    itc = (f" + image-report contrastive loss (weight {p.itc_weight:g}, label-aware targets; beyond the paper, "
           f"ALBEF's ITC)" if p.itc_weight > 0 else "")
    md.append(f"- pre-training: {pre_steps} steps of MLM + IRM (label-aware {p.irm_negatives} negatives, 1:1){itc}; "
              "no label supervision of the CNN (the labels only choose IRM negatives and ITC positives, as the "
              "paper's IRM does).")
    steps = ", ".join(f"{t} {n}" for t, n in plan.finetune_steps.items())
    steps += f" (batches grouped by report length, chunks of {plan.length_grouping})" if plan.length_grouping else ""
    md.append(f"- fine-tuning steps: {steps}; generation objective: {cfg.finetune.generation_objective}; "
              f"classification trains {cfg.finetune.image_only_prob:.0%} of its examples with an empty report "
              "(the `image_only_*` columns score the image alone).")
    md.append("- F1 `val_thr`: thresholds chosen on the validation split, each F1 at its own (micro F1: one threshold "
              "shared by the labels; macro F1: one per label); plain `f1_micro` thresholds at 0.5.")
    md += ["", "## Pre-training (validation curve)", ""]
    md.append("| mask | step | mlm_acc | irm_auroc | itc_acc |")
    md.append("|---|---|---|---|---|")
    for mask, curve in result.pretrain_validation.items():
        for e in curve:
            md.append(f"| {mask} | {e['step']} | {e.get('mlm_acc', float('nan')):.3f} | "
                      f"{e.get('irm_auroc', float('nan')):.3f} | {e.get('itc_acc', float('nan')):.3f} |")
    for task, table in result.tables.items():
        md += ["", f"## {task}", "", table.to_markdown(metrics=HEADLINE.get(task))]
    md += ["", "## What the models say (test split, " + reference + ")", ""]
    for s in samples.get("reports", []):
        md += [f"- generated: {s['generated']}", f"  reference: {s['reference']}"]
    if samples.get("vqa"):
        v = samples["vqa"]
        md += ["", f"Questions about one image ({v['image']}):", ""]
        md += [f"- {q['question']} -> **{q['answer']}** (reference: {q['reference']})" for q in v["questions"]]
    md += ["", "## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k[:-2]} | {v:.0f} |" for k, v in result.timings.items()]
    (output / "results.md").write_text("\n".join(md) + "\n")
    header, rows = None, []
    for task, table in result.tables.items():
        lines = table.to_csv().splitlines()
        header = "task," + lines[0]
        rows += [f"{task},{line}" for line in lines[1:]]
    (output / "results.csv").write_text("\n".join([header or "task", *rows]) + "\n")
    (output / "results.json").write_text(json.dumps({
        "preset": cfg.preset, "full": full, "timings_s": result.timings, "config": cfg.to_dict(),
        "pretrain": {m: {"first": h[0], "last": h[-1]} for m, h in result.pretrain.items() if h},
        "pretrain_validation": result.pretrain_validation, "samples": samples,
        "tasks": {t: json.loads(table.to_json()) for t, table in result.tables.items()},
    }, indent=2) + "\n")
