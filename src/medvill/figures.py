"""The paper's figures as PNG files (matplotlib's Agg renderer; no display needed).

* :func:`attention_figure` - attention of chosen report words onto the X-ray, per layer and
  head (the paper's Fig. 5a), from :meth:`medvill.Pipeline.explain`;
* :func:`retrieval_figure` / :func:`retrieval_case_study` - a query, its top-k results and a
  low-ranked one, with their labels (Fig. 6);
* :func:`roc_figure` / :func:`classification_roc` - ROC curves per observation (scikit-learn's
  ``roc_curve``) and the micro average;
* :func:`training_curves_figure` - training and validation curves from ``metrics.jsonl`` logs;
* :func:`demo_figures` - all of them for a ``medvill demo`` output, into ``OUTPUT/figures/``.

Each function writes one PNG and returns its path.  The image size is fixed by the layout
(``panel`` inches per panel times ``dpi``, rounded down to whole pixels) and documented per
function, never cropped to the content, so figures of the same kind line up.  Figures are
drawn through matplotlib's object-oriented API on an Agg canvas: the process-wide pyplot
backend is left alone.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .fileio import parse_json_lines
from .labels import CHEXPERT_OBSERVATIONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .data.records import Record
    from .inference import AttentionMaps, Pipeline, RetrievalHit

#: Keys of a metrics.jsonl entry that are bookkeeping, not curves.
_NOT_CURVES = {"step", "epoch", "lr", "elapsed_s", "split"}
POSITIVE_COLOR = "#1a9850"
NEGATIVE_COLOR = "#d73027"


def _figure(width_in: float, height_in: float, dpi: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def label_names(labels: np.ndarray | Sequence[float], names: Sequence[str] = CHEXPERT_OBSERVATIONS) -> list[str]:
    """Names of the positive (== 1) observations of a label vector."""
    arr = np.asarray(labels, dtype=np.float32)
    return [names[int(i)] for i in np.flatnonzero(arr == 1.0)]


# ============================================================================================
# attention maps (Fig. 5a)
# ============================================================================================

def default_tokens(tokens: Sequence[str], n: int = 3) -> list[int]:
    """Up to ``n`` informative tokens: whole alphabetic words of 5+ letters, longest first,
    each word once (in text order when equally long)."""
    seen: set[str] = set()
    cands = []
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t.isalpha() and len(t) >= 5 and not nxt.startswith("##") and t.lower() not in seen:
            seen.add(t.lower())
            cands.append(i)
    cands.sort(key=lambda i: -len(tokens[i]))
    chosen = sorted(cands[:n])
    return chosen or list(range(min(n, len(tokens))))


def attention_figure(maps: AttentionMaps, path: str | Path, tokens: Sequence[int | str] | None = None,
                     layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                     panel: float = 2.0, dpi: int = 100, alpha: float = 0.5, cmap: str = "jet") -> Path:
    """Attention of chosen text tokens onto the X-ray (the paper's Fig. 5a).

    One row per token (``tokens``: indices or strings; default :func:`default_tokens`); the
    first column shows the X-ray as the model saw it, then one column per (layer, head):
    ``layers`` (0-based, negative from the end; default the last layer) times ``heads``
    (default: the mean over heads).  Each map is upsampled bilinearly to the image and its
    colours span its own minimum to maximum (given in the panel title).  Size: ``(1 + columns) * panel``
    by ``rows * panel`` inches at ``dpi`` (default 100 px per inch).
    """
    rows = [maps.token_index(t) for t in tokens] if tokens else default_tokens(maps.tokens)
    layer_ids = list(layers) if layers else [maps.num_layers - 1]
    head_ids: list[int | None] = list(heads) if heads else [None]
    cols = [(layer, head) for layer in layer_ids for head in head_ids]
    fig = _figure((1 + len(cols)) * panel, len(rows) * panel, dpi)
    size = maps.image.shape[0]
    for r, t in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1 + len(cols), r * (1 + len(cols)) + 1)
        ax.imshow(maps.image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f'"{maps.tokens[t]}"', fontsize=9)
        ax.set_axis_off()
        for c, (layer, head) in enumerate(cols):
            m = maps.map(t, layer, head)
            up = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((size, size),
                                                                                  Image.Resampling.BILINEAR))
            ax = fig.add_subplot(len(rows), 1 + len(cols), r * (1 + len(cols)) + c + 2)
            ax.imshow(maps.image, cmap="gray", vmin=0, vmax=255)
            lo, hi = float(m.min()), float(m.max())
            ax.imshow(up, cmap=cmap, alpha=alpha, vmin=lo, vmax=max(hi, lo + 1e-8))
            where = f"L{layer % maps.num_layers}" + (" mean" if head is None else f" H{head % maps.num_heads}")
            ax.set_title(f"{where} ({lo:.3f}-{hi:.3f})", fontsize=7)
            ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.12 / len(rows), wspace=0.05, hspace=0.25)
    return _save(fig, path)


# ============================================================================================
# retrieval case study (Fig. 6)
# ============================================================================================

def _display(image: Any, size: int) -> np.ndarray:
    """An image input as the 8-bit square the model sees (same preprocessing), for display."""
    from .data.transforms import Preprocess

    return np.asarray(Preprocess(image_size=size)(image))


def _panel(fig: Figure, n: int, i: int, item: Any, is_image: bool, title: str, labels: list[str],
           color: str | None, display_size: int) -> None:
    ax = fig.add_subplot(1, n, i)
    if is_image:
        ax.imshow(_display(item, display_size), cmap="gray", vmin=0, vmax=255)
    else:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.text(0.03, 0.97, "\n".join(textwrap.wrap(str(item), 34)[:14]), va="top", ha="left", fontsize=6.5,
                family="monospace")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color or "black")
        spine.set_linewidth(3 if color else 1)
    ax.set_title(title, fontsize=9, color=color or "black")
    text = "\n".join(textwrap.wrap(", ".join(labels) if labels else "(no positive label)", 30)[:4])
    ax.set_xlabel(text, fontsize=7)


def retrieval_figure(query: Any, query_labels: Sequence[str], hits: Sequence[RetrievalHit],
                     hit_labels: Sequence[Sequence[str]], path: str | Path, query_is_image: bool,
                     pool_size: int | None = None, panel: float = 2.2, dpi: int = 100, display_size: int = 256) -> Path:
    """A query and ranked results with their labels (the paper's Fig. 6).

    ``hits`` (e.g. the top k and one low-ranked hit of :meth:`Pipeline.retrieve`) are drawn in
    the order given, each titled with its rank and matching probability and framed green when
    its positive label set equals the query's (a positive in the evaluation protocol), red
    otherwise.  Images are shown as preprocessed for the model; reports as wrapped text.
    Size: ``(1 + len(hits)) * panel`` by ``1.45 * panel`` inches at ``dpi``.
    """
    n = 1 + len(hits)
    fig = _figure(n * panel, 1.45 * panel, dpi)
    _panel(fig, n, 1, query, query_is_image, "query", list(query_labels), None, display_size)
    want = set(query_labels)
    of = f"/{pool_size}" if pool_size else ""
    for i, (hit, labels) in enumerate(zip(hits, hit_labels, strict=True)):
        color = POSITIVE_COLOR if set(labels) == want else NEGATIVE_COLOR
        _panel(fig, n, i + 2, hit.item, not query_is_image, f"#{hit.rank}{of}  p={hit.probability:.2f}", list(labels),
               color, display_size)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.22, top=0.9, wspace=0.08)
    return _save(fig, path)


def retrieval_case_study(pipeline: Pipeline, records: Sequence[Record], path: str | Path, query: int = 0,
                         direction: str = "r2i", k: int = 5, n_candidates: int = 100, seed: int = 0,
                         **figure_args: Any) -> Path:
    """Run one evaluation-style trial and draw it: record ``query``'s report (``r2i``) or image
    (``i2r``) against ``n_candidates`` records (its own partner and others drawn as in the
    evaluation, :func:`medvill.metrics.build_trials`), showing the top ``k`` and the
    lowest-ranked candidate.  Labels are the records' positive CheXpert observations."""
    from .labels import positive_set
    from .metrics import build_trials

    if direction not in ("r2i", "i2r"):
        raise ValueError(f"direction must be r2i (report query) or i2r (image query), got {direction!r}")
    if not 0 <= query < len(records):
        raise IndexError(f"query {query} out of range for {len(records)} records")
    n = min(n_candidates, len(records))
    trial = build_trials([positive_set(r.labels) for r in records], n_candidates=n, seed=seed, queries=[query])[0]
    cands = [records[int(c)] for c in trial.candidates]
    q = records[query]
    query_item: str | Path
    if direction == "r2i":
        hits = pipeline.retrieve(q.text, [c.image for c in cands], k=None, query_type="report")
        query_item = q.text
    else:
        hits = pipeline.retrieve(q.image, [c.text for c in cands], k=None, query_type="image")
        query_item = q.image
    shown = list(hits[:k]) + ([hits[-1]] if len(hits) > k else [])
    return retrieval_figure(query_item, label_names(q.labels), shown,
                            [label_names(cands[h.index].labels) for h in shown], path,
                            query_is_image=direction == "i2r", pool_size=len(hits), **figure_args)


# ============================================================================================
# ROC curves
# ============================================================================================

def roc_figure(probabilities: np.ndarray, targets: np.ndarray, path: str | Path,
               names: Sequence[str] = CHEXPERT_OBSERVATIONS, title: str = "ROC per observation",
               size: tuple[float, float] = (7.5, 6.0), dpi: int = 100) -> Path:
    """ROC curve (scikit-learn ``roc_curve``) of every observation whose targets hold both
    classes, with its AUROC in the legend, plus the micro average over all cells.
    ``probabilities`` and ``targets`` are ``(N, L)``; targets 1 = positive.  Size: ``size``
    inches at ``dpi``."""
    import matplotlib
    from sklearn.metrics import roc_auc_score, roc_curve

    probs, y = np.asarray(probabilities, dtype=np.float64), np.asarray(targets)
    if probs.shape != y.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and targets {y.shape} must both be (N, labels)")
    if len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} names for {probs.shape[1]} labels")
    y = (y == 1).astype(int)
    fig = _figure(*size, dpi)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    cmap = matplotlib.colormaps["tab20"]
    for j, name in enumerate(names):
        if 0 < y[:, j].sum() < len(y):
            fpr, tpr, _ = roc_curve(y[:, j], probs[:, j])
            auc = roc_auc_score(y[:, j], probs[:, j])
            ax.plot(fpr, tpr, lw=1.2, color=cmap(j % 20), label=f"{name} ({auc:.3f}, n+={int(y[:, j].sum())})")
            drawn += 1
    if not drawn:
        raise ValueError("no observation has both positive and negative examples: nothing to draw")
    fpr, tpr, _ = roc_curve(y.ravel(), probs.ravel())
    ax.plot(fpr, tpr, lw=2.5, color="black", label=f"micro average ({roc_auc_score(y.ravel(), probs.ravel()):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} (n={len(y)})", fontsize=10)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.09, top=0.93)
    return _save(fig, path)


def classification_roc(pipeline: Pipeline, records: Sequence[Record], path: str | Path, **figure_args: Any) -> Path:
    """Classify ``records`` (image + report, as the task is evaluated) and draw the ROC curves."""
    from .tasks.classification import binary_targets

    results = pipeline.classify([r.image for r in records], [r.text for r in records])
    names = list(results[0])
    probs = np.array([[res[n] for n in names] for res in results])
    return roc_figure(probs, binary_targets(list(records)), path, names=names, **figure_args)


# ============================================================================================
# training curves
# ============================================================================================

def read_metrics_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training entries, validation entries)`` of a ``metrics.jsonl`` (a file, or the run
    folder holding one); a line that is not a JSON object with a ``step`` is an error naming
    the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for lineno, entry in parse_json_lines(path.read_text(), path):
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), (int, float)):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a numeric 'step'")
        (val if entry.get("split") == "validate" else train).append(entry)
    return train, val


def training_curves_figure(runs: Mapping[str, str | Path] | Sequence[str | Path], path: str | Path,
                           keys: Sequence[str] | None = None, panel: tuple[float, float] = (4.0, 3.0),
                           columns: int = 3, dpi: int = 100) -> Path:
    """One panel per logged quantity, one line per run (``{name: run folder or metrics.jsonl}``
    or a list, named by folder).  Training quantities are plotted as logged; validation ones
    are prefixed ``val/``.  ``keys`` picks quantities (e.g. ``["loss", "val/auroc_micro"]``);
    default: every numeric one except per-label details (logged names holding a ``/``, such
    as ``auroc/Edema``).  Size: ``min(columns, panels) * panel[0]`` by
    ``rows * panel[1]`` inches at ``dpi``."""
    if not isinstance(runs, Mapping):
        runs = {Path(r).name if Path(r).is_dir() else Path(r).parent.name: r for r in runs}
    if not runs:
        raise ValueError("no training run to plot")
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for name, run in runs.items():
        train, val = read_metrics_log(run)
        for prefix, entries in (("", train), ("val/", val)):
            for e in entries:
                for k, v in e.items():
                    if k in _NOT_CURVES or isinstance(v, bool) or not isinstance(v, (int, float)):
                        continue
                    xs, ys = series.setdefault(prefix + k, {}).setdefault(name, ([], []))
                    xs.append(float(e["step"]))
                    ys.append(float(v))
    names = list(keys) if keys else sorted((k for k in series if "/" not in k.removeprefix("val/")),
                                           key=lambda k: (k.startswith("val/"), k))
    missing = [k for k in names if k not in series]
    if missing:
        raise KeyError(f"not in the logs: {missing}; available: {sorted(series)}")
    if not names:
        raise ValueError("the logs hold no numeric quantity to plot")
    ncols = min(columns, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(ncols * panel[0], nrows * panel[1], dpi)
    for i, key in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for run_name, (xs, ys) in series[key].items():
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, lw=1.2, label=run_name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=6)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.92, wspace=0.3, hspace=0.55)
    return _save(fig, path)


# ============================================================================================
# data of a checkpoint, and the demo's figures
# ============================================================================================

def checkpoint_records(checkpoint: str | Path, split: str = "test", dataset: str | None = None,
                       root: str | Path | None = None) -> list[Record]:
    """Records of ``split`` of the data set a fine-tuned checkpoint was trained on (its
    ``run_config.yaml``), or of ``dataset`` / ``root`` when given."""
    from .checkpoint_files import RUN_CONFIG, read_run_config
    from .config import load_config
    from .data.splits import load_split

    cfg_path = Path(checkpoint) / RUN_CONFIG
    run = read_run_config(checkpoint)
    if run is None:
        raise FileNotFoundError(f"{cfg_path} not found: pass the data set explicitly (--dataset / --root)")
    preset = run.get("preset", "base")
    extra: dict[str, Any] = {"data": {}}
    if dataset is not None:
        extra["data"]["dataset"] = dataset
    if root is not None:
        extra["data"]["root"] = str(root)
    cfg = load_config(preset, cfg_path, [], extra)
    if cfg.data.root is not None and not Path(cfg.data.root).exists():
        raise FileNotFoundError(f"the training data of {checkpoint} ({cfg.data.root}, from {cfg_path}) is not here; "
                                "pass --root (Python: root=)")
    records = load_split(cfg, split)
    if not records:
        raise ValueError(f"the {split} split of {cfg.data.dataset} at {cfg.data.root} is empty")
    return records


def demo_figures(output: str | Path, model: str | None = None, split: str = "test") -> list[Path]:
    """The figures of a ``medvill demo`` output folder, written to ``OUTPUT/figures/``:
    ``attention.png`` (classification model, a test case with findings), ``retrieval.png``
    (report-to-image trial of the same case), ``roc.png`` (classification on the test split)
    and ``training-curves.png`` / ``finetune-curves.png`` (pre-training and classification
    fine-tuning logs).  ``model``: whose checkpoints (default MedViLL-BAR).  Tasks without a
    checkpoint are skipped.  Returns the paths written."""
    from .inference import Pipeline

    output = Path(output)
    figures = output / "figures"
    pipe = Pipeline.from_pretrained(output, model=model, device="cpu")
    written: list[Path] = []
    records: list[Record] = []
    anchor = next((pipe.checkpoints[t].path for t in ("classification", "retrieval") if t in pipe.checkpoints), None)
    if anchor is not None:
        records = checkpoint_records(anchor, split)
    # a test case with positive findings (other than No Finding), for the attention and retrieval figures
    case = next((i for i, r in enumerate(records)
                 if label_names(r.labels) and "No Finding" not in label_names(r.labels)), 0)
    if "classification" in pipe.tasks and records:
        r = records[case]
        maps = pipe.explain(r.image, r.text, task="classification")
        written.append(attention_figure(maps, figures / "attention.png", layers=list(range(maps.num_layers))))
        written.append(classification_roc(pipe, records, figures / "roc.png"))
    if "retrieval" in pipe.tasks and len(records) > 1:
        # the query: a case of the most frequent label set with findings, so that its trial holds other positives
        sets = [frozenset(label_names(r.labels)) for r in records]
        common = [s for s in sets if s and "No Finding" not in s]
        query = sets.index(max(common, key=lambda s: (sets.count(s), -sets.index(s)))) if common else case
        written.append(retrieval_case_study(pipe, records, figures / "retrieval.png", query=query, direction="r2i"))
    pretrain_runs = {p.name: p for p in sorted(output.glob("pretrain-*")) if (p / "metrics.jsonl").is_file()}
    if pretrain_runs:
        written.append(training_curves_figure(pretrain_runs, figures / "training-curves.png"))
    ft_runs = {p.name.removeprefix("classification-"): p for p in sorted((output / "finetune").glob("classification-*"))
               if (p / "metrics.jsonl").is_file()}
    if ft_runs:
        written.append(training_curves_figure(ft_runs, figures / "finetune-curves.png"))
    return written
