"""Paper-style comparison tables with t-tests."""

from __future__ import annotations

import json

import pytest
from scipy import stats
from typer.testing import CliRunner

from medvill.cli import app
from medvill.recipes.compare import compare_runs


def write_run(folder, metrics):
    folder.mkdir(parents=True)
    data = {k: {"mean": sum(v) / len(v), "std": float(stats.tstd(v)), "n": len(v), "values": v}
            for k, v in metrics.items()}
    data["trials"] = {"mean": 100.0, "std": 0.0, "n": 3, "values": []}  # info entry, not a metric
    (folder / "metrics.json").write_text(json.dumps(data))
    return folder


def test_compare_table_with_t_tests(tmp_path):
    a = write_run(tmp_path / "bar", {"auroc_micro": [0.90, 0.91, 0.92, 0.89], "f1_micro": [0.5, 0.52, 0.51, 0.5]})
    b = write_run(tmp_path / "scratch", {"auroc_micro": [0.70, 0.72, 0.71, 0.69], "f1_micro": [0.5, 0.51, 0.52, 0.5]})
    table = compare_runs([a, b])
    assert table.reference == "bar" and table.metrics == ["auroc_micro", "f1_micro"]
    p = table.cells["scratch"]["auroc_micro"]["p_value"]
    assert p == pytest.approx(stats.ttest_ind([0.70, 0.72, 0.71, 0.69], [0.90, 0.91, 0.92, 0.89]).pvalue)
    assert table.cells["bar"]["auroc_micro"]["p_value"] is None
    md = table.to_markdown()
    assert "| bar (reference) | 0.9050" in md and "p=" in md and "*" in md
    out = table.write(tmp_path / "tables")
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("model,metric,mean,std,n,p_value") and len(rows) == 5
    assert json.loads((out / "results.json").read_text())["reference"] == "bar"
    named = compare_runs([f"MedViLL={a}", f"FT-only={b}"], reference="FT-only")
    assert named.models == ["MedViLL", "FT-only"] and named.cells["MedViLL"]["auroc_micro"]["p_value"] < 0.05


def test_compare_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="medvill evaluate"):
        compare_runs([tmp_path / "missing"])
    a = write_run(tmp_path / "a", {"mrr": [0.1, 0.2]})
    with pytest.raises(ValueError, match="reference"):
        compare_runs([a], reference="b")
    result = CliRunner().invoke(app, ["compare", str(a), "--output", str(tmp_path / "t")])
    assert result.exit_code == 0 and (tmp_path / "t" / "results.md").is_file()
