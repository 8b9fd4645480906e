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
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import RunConfig, apply_override
from ..data.registry import synthetic_root
from ..data.splits import load_split, load_vqa_split
from ..figures import demo_figures
from ..modeling.baselines import BASELINE_TASKS
from ..workers import init_worker
from .compare import compare_runs
from .evaluate import run_evaluation
from .finetune import TASKS, run_finetuning
from .pretrain import run_pretraining

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


#: per preset.  small: the default demo (pre-training + 8 fine-tunes with their evaluations, two
#: one-thread workers) fills the 15-minute budget of a fresh clone on the 2-core machine (README,
#: set-up included).  Fine-tuning steps per task where the validation curves stopped paying for
#: their time (classification: 250 steps gave test AUROC 0.92 / F1 0.58, 500 gave 0.96 / 0.75);
#: VQA and generation would gain from more (validation, from the demo's pre-trained model: VQA
#: closed / open 0.83 / 0.72 at 640 steps, 0.91 / 0.81 at 1,600; generation CE F1 0.39 at 400,
#: 0.45 at 600, 0.53 at 1,200), which the budget does not hold.
PLANS = {
    "tiny": DemoPlan(4, {t: 4 for t in TASKS}, 8, pretrain_validations=1),
    "small": DemoPlan(1000, {"classification": 500, "retrieval": 400, "vqa": 500, "generation": 400}, 50),
    "base": DemoPlan(2000, {t: 500 for t in TASKS}, 100),
}
#: relative cost of a fine-tuning step per task (VQA = 1; small preset, evaluation included;
#: BENCHMARKS.md, "The demo's schedule"): only the order in which the demo starts its jobs (the
#: longest first, so that the short ones fill the end)
STEP_COST = {"classification": 1.4, "retrieval": 1.7, "vqa": 1.0, "generation": 2.3}
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

    plan_jobs = _plan_jobs(cfg, output, plan, masks, full, pre_steps, n_bootstrap)
    jobs, owner, rows, reference = plan_jobs.jobs, plan_jobs.owner, plan_jobs.rows, plan_jobs.reference

    finished: dict[str, Any] = {}

    def job_done(name: str, value: Any, seconds: float) -> None:
        finished[name] = value
        task, row = owner[name]
        timings[f"{task}_{row.replace('&', '-')}_s"] = seconds
        if task == "pretrain":
            result.pretrain[row], result.pretrain_validation[row] = value
            return
        if all(f"{task} {n}" in finished for n in rows[task]):
            evals = [f"{n}={finished[f'{task} {n}']}" for n in rows[task]]
            result.tables[task] = compare_runs(evals, reference=reference)
            console.rule(f"[bold]{task}: test split")
            console.print(result.tables[task].to_markdown(metrics=HEADLINE.get(task)))

    console.rule(f"[bold]2. pre-training ({', '.join(_mask_name(m) for m in masks)}) and fine-tuning "
                 f"({', '.join(TASKS)}), {workers} at a time")
    t0 = time.perf_counter()
    with _Runner(workers, console) as runner:
        for name, value, seconds in runner.run(jobs):
            job_done(name, value, seconds)
    timings["training_s"] = time.perf_counter() - t0
    result.tables = {t: result.tables[t] for t in TASKS}  # in the tasks' order, whatever finished first

    console.rule("[bold]3. sample outputs and figures")
    t0 = time.perf_counter()
    samples = sample_outputs(output, reference, cfg)
    for path in demo_figures(output, model=reference):
        console.print(f"figure: {path}")
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    _write_results(output, result, samples, cfg, plan, pre_steps, full)
    return result


@dataclass
class _DemoJobs:
    """The demo's job list: ``owner`` maps each job to ``("pretrain", mask)`` or ``(task,
    table row)``; ``rows`` the table rows of each task (name -> init); ``reference`` the row
    the t-tests compare against."""

    jobs: dict[str, _Job]
    owner: dict[str, tuple[str, str]]
    rows: dict[str, dict[str, str]]
    reference: str


def _plan_jobs(cfg: RunConfig, output: Path, plan: DemoPlan, masks: tuple[str, ...], full: bool, pre_steps: int,
               n_bootstrap: int) -> _DemoJobs:
    """One job list for the whole demo: the pre-training runs first, the models that need no
    pre-training (Fine-tuning Only, the baselines) train beside it, and each MedViLL fine-tune
    starts when its pre-training has finished, the longest first."""
    mask_of = {f"MedViLL-{_mask_name(m)}": m for m in masks}  # the MedViLL rows and their pre-training
    inits: dict[str, str] = {name: str(output / f"pretrain-{m}") for name, m in mask_of.items()}
    reference = next(iter(inits))
    inits["FT-only"] = "scratch"
    n_test = len(load_split(cfg, "test"))
    every = max(1, pre_steps // plan.pretrain_validations)
    out = _DemoJobs({}, {}, {}, reference)
    for m in masks:
        out.owner[f"pretrain {_mask_name(m)}"] = ("pretrain", m)
        out.jobs[f"pretrain {_mask_name(m)}"] = _Job(_pretrain_job, (_with(
            cfg, f"pretrain.mask={m}", f"train.max_steps={pre_steps}", f"train.eval_every={every}"),
            output / f"pretrain-{m}"))
    for task in TASKS:
        out.rows[task] = dict(inits)
        if full:
            out.rows[task].update({n: b for n, b in BASELINE_ROWS.items() if task in BASELINE_TASKS[b]})
    by_cost = sorted(TASKS, key=lambda t: -plan.finetune_steps[t] * STEP_COST.get(t, 1.0))  # longest first
    for needs_pretraining in (False, True):
        for task in by_cost:
            steps = plan.finetune_steps[task]
            fcfg = _with(cfg, f"train.max_steps={steps}", f"train.eval_every={max(1, int(steps * plan.eval_fraction))}",
                         f"eval.max_queries={plan.retrieval_queries}", f"eval.n_candidates={min(100, n_test)}",
                         f"train.length_grouping={plan.length_grouping}")
            for name, init in out.rows[task].items():
                mask = mask_of.get(name)
                if (mask is not None) != needs_pretraining:
                    continue
                slug = name.replace("&", "-")
                out.owner[f"{task} {name}"] = (task, name)
                out.jobs[f"{task} {name}"] = _Job(
                    _finetune_job, (task, fcfg, init, output / "finetune" / f"{task}-{slug}",
                                    output / "eval" / f"{task}-{slug}", n_bootstrap),
                    needs=(f"pretrain {_mask_name(mask)}",) if mask else ())
    return out


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
    small: one-thread runs side by side finish sooner than the same runs one after the other on
    all threads (BENCHMARKS.md, "The demo's schedule")."""
    return max(1, min(4, _cpus()))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerDiedError(RuntimeError):
    """A demo worker process ended without finishing its model (killed, out of memory)."""


@dataclass(frozen=True)
class _Job:
    """``fn(*args)`` once the jobs named in ``needs`` have finished."""

    fn: Callable[..., Any]
    args: tuple
    needs: tuple[str, ...] = ()


def _timed(fn: Callable[..., Any], *args: Any, console: Console | None = None) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn(*args, console=console)
    return value, time.perf_counter() - t0


class _Runner:
    """Runs named :class:`_Job` s in this process (one worker) or in a pool of spawned worker
    processes, each on an equal share of the CPUs.  ``run`` yields ``(name, result, seconds)``
    as jobs finish; a job starts when what it needs has finished, the earliest-listed ready job
    first, and never more than ``workers`` at once (so the list's order is the priority).  A
    job's error is re-raised."""

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

    def run(self, jobs: dict[str, _Job]) -> Iterator[tuple[str, Any, float]]:
        seen: set[str] = set()
        for name, job in jobs.items():
            unknown = [n for n in job.needs if n not in seen]
            if unknown:
                raise ValueError(f"job {name!r} needs {unknown}, which is not listed before it")
            seen.add(name)
        if self.pool is None:
            for name, job in jobs.items():
                self.console.print(f"training: {name}")
                value, seconds = _timed(job.fn, *job.args, console=self.console)
                yield name, value, seconds
            return
        self.console.print(f"training {len(jobs)} models, {self.workers} at a time: {', '.join(jobs)}")
        pending, done = list(jobs), set()
        running: dict[Future, str] = {}
        while pending or running:
            for name in [n for n in pending if all(d in done for d in jobs[n].needs)]:
                if len(running) >= self.workers:
                    break
                pending.remove(name)
                running[self.pool.submit(_timed, jobs[name].fn, *jobs[name].args)] = name
                self.console.print(f"  {name}: started")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    value, seconds = future.result()
                except BrokenProcessPool:
                    unfinished = ", ".join(n for n in jobs if n not in done)
                    raise WorkerDiedError(f"a worker process died (killed, or out of memory?) while training "
                                          f"{unfinished}; run the demo again, with --workers 1 to train one model "
                                          "at a time") from None
                done.add(name)
                self.console.print(f"  {name}: done in {seconds:.0f} s")
                yield name, value, seconds


def _pretrain_job(cfg: RunConfig, out: Path, console: Console | None = None) -> tuple[list, list]:
    run = run_pretraining(cfg, out, console=console or Console(quiet=True))
    return run.result.history, run.result.validation


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
    from ..inference import Pipeline

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
