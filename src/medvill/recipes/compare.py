"""The paper's tables: models as rows, metrics as columns, mean (std) over bootstrap
resamples, and p-values of independent two-sample t-tests against a reference model.

Input: evaluation folders written by ``medvill evaluate`` (each holds ``metrics.json``); the
row name is the folder name (or ``name=path``).  Output: ``results.md``, ``results.csv`` and
``results.json``.  A p-value below 0.05 is marked with ``*`` (significance level 0.05, as
in the paper).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import ttest

SIGNIFICANCE = 0.05


@dataclass
class Comparison:
    models: list[str]
    metrics: list[str]
    reference: str
    cells: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # model -> metric -> stats

    def to_markdown(self, digits: int = 4, metrics: list[str] | None = None) -> str:
        """The table; ``metrics``: these columns only, in this order (those the runs have)."""
        cols = [m for m in metrics if m in self.metrics] if metrics else self.metrics
        head = "| model | " + " | ".join(cols) + " |"
        lines = [head, "|" + "---|" * (len(cols) + 1)]
        for model in self.models:
            row = [model + (" (reference)" if model == self.reference else "")]
            for metric in cols:
                c = self.cells[model].get(metric)
                if c is None:
                    row.append("-")
                    continue
                text = f"{c['mean']:.{digits}f} ({c['std']:.{digits}f})"
                if c.get("p_value") is not None:
                    text += f" p={c['p_value']:.3g}{'*' if c['p_value'] < SIGNIFICANCE else ''}"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "metric", "mean", "std", "n", "p_value_vs_reference", "reference"])
        for model in self.models:
            for metric in self.metrics:
                c = self.cells[model].get(metric)
                if c is not None:
                    w.writerow([model, metric, c["mean"], c["std"], c["n"], c.get("p_value"), self.reference])
        return buf.getvalue()

    def to_json(self) -> str:
        return json.dumps({"reference": self.reference, "significance": SIGNIFICANCE, "models": self.models,
                           "metrics": self.metrics, "cells": self.cells}, indent=2) + "\n"

    def write(self, output: str | Path) -> Path:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        (output / "results.md").write_text(self.to_markdown())
        (output / "results.csv").write_text(self.to_csv())
        (output / "results.json").write_text(self.to_json())
        return output


def _read(path: Path) -> dict[str, dict[str, Any]]:
    file = path / "metrics.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} not found: pass folders written by medvill evaluate") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc.msg})") from None
    # keep real metrics: entries with bootstrap values (info entries such as "trials" have none)
    return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("values")}


def compare_runs(runs: Sequence[str | Path], reference: str | None = None) -> Comparison:
    """Build the table from ``runs`` (folders or ``name=folder``); ``reference`` names a row
    (default: the first)."""
    if not runs:
        raise ValueError("compare needs at least one evaluation folder")
    named: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        text = str(run)
        name, _, path = text.partition("=") if "=" in text else (Path(text).name, "", text)
        if name in named:
            raise ValueError(f"two runs are named {name!r}; use name=folder to tell them apart")
        named[name] = _read(Path(path))
    models = list(named)
    reference = reference or models[0]
    if reference not in named:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(models)}")
    metrics: list[str] = []
    for m in named.values():
        metrics += [k for k in m if k not in metrics]
    cmp = Comparison(models=models, metrics=metrics, reference=reference)
    for model, data in named.items():
        cmp.cells[model] = {}
        for metric, stats in data.items():
            cell = {"mean": stats["mean"], "std": stats["std"], "n": stats["n"], "p_value": None}
            ref = named[reference].get(metric)
            if model != reference and ref is not None and len(ref["values"]) > 1 and len(stats["values"]) > 1:
                p = ttest(stats["values"], ref["values"])
                cell["p_value"] = None if math.isnan(p) else p  # nan: both samples constant
            cmp.cells[model][metric] = cell
    return cmp
