"""The benchmark scripts: their measuring pieces, and a --quick smoke run of each."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_flop_count_covers_matmuls_and_the_cpu_attention_kernel():
    common = load("_common")
    lin = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32)
    assert common.count_flops(lambda: lin(x)) == 2 * 8 * 32 * 16
    b, h, s, d = 2, 4, 24, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    mask = torch.rand(b, 1, s, s) > 0.3
    mask[..., 0] = True
    fwd = common.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert fwd == 2 * (2 * b * h * s * s * d)  # scores and weighted sum, dense
    both = common.count_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward())
    assert both == fwd + 5 * (2 * b * h * s * s * d)  # torch's SDPA backward formula


def test_train_step_flops_are_counted_and_timed():
    common = load("_common")
    step = common.TrainStep("tiny", 2, torch.device("cpu"))
    flops = step.flops()
    # at least the transformer's linear layers: 2 (fwd) * 3 (fwd + bwd) * tokens * weights
    cfg = step.mcfg
    linear = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    assert flops > 2 * 3 * 2 * step.seq_len * linear
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, step.model.parameters()))  # the optimiser stepped


def test_peak_memory_sees_a_large_allocation():
    # in a fresh process: a long-lived worker's allocator may hold freed pages that a new
    # allocation reuses without raising the resident set, which would hide the peak
    code = (
        f"import sys, torch; sys.path.insert(0, {str(BENCH)!r}); import _common\n"
        "with _common.peak_memory(torch.device('cpu')) as mem:\n"
        "    x = torch.ones(32 * 2**20 // 4); x += 1; del x\n"
        "print(mem.bytes, mem.method, sep='|')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    size, method = out.strip().split("|")
    assert method
    if "VmHWM" in method:  # exact on Linux
        assert 28 * 2**20 < int(size) < 256 * 2**20


def test_summary_lines(tmp_path):
    summarize = load("summarize")
    (tmp_path / "generation.json").write_text(json.dumps({"summary": {
        "generation_speedup_128": 31.25, "generation_speedup_128_weights": "int8", "decode_fraction_of_bound": None}}))
    (tmp_path / "train.json").write_text(json.dumps({"device": "cpu", "summary": {"train_gemm_fraction_base": None}}))
    lines = summarize.summary_lines(tmp_path)
    assert lines == [
        "generation_speedup_128: 31.2 (target 25; int8 weights)",
        "decode_fraction_of_bound: not measured (needs the base preset and 128 new tokens) (target 0.8)",
        "train_gemm_fraction_base: not measured (needs the base preset) (target 0.60)",
        "train_gemm_fraction_small: not measured (needs the small preset) (target 0.40)",
        f"loader_over_train: not measured ({tmp_path / 'data.json'} not found) (target 2)",
    ]


def test_generation_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "generation.json"
    assert load("bench_generation").main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["new_tokens"] for r in data["results"]] == [4, 8]
    assert all(r["identical_tokens"] and r["speedup"] > 0 for r in data["results"])
    # the bound: bytes per step (weights + keys/values) over the measured bandwidth, per weight format
    bound = {b["weights"]: b for b in data["bound"]}
    assert set(bound) == {"fp32", "bf16", "int8"} and data["copy_bandwidth_bytes_per_s"] > 1e8
    assert bound["int8"]["weight_bytes_per_step"] < 0.5 * bound["fp32"]["weight_bytes_per_step"]
    assert all(0 < b["fraction_of_bound"] and b["kv_bytes_per_step"] > 0 for b in bound.values())
    assert bound["fp32"]["same_tokens_as_fp32"] == "identical"
    # batches: reports/s per batch size; fp32 batches equal the same images one at a time (asserted inside)
    fp32 = [b for b in data["batches"] if b["weights"] == "fp32"]
    assert [b["batch_size"] for b in fp32] == [1, 2, 4] and all(b["reports_per_s"] > 0 for b in fp32)
    assert [b["same_as_smaller_batches"] for b in fp32] == ["reference", "identical", "identical"]
    assert data["summary"] == {"generation_speedup_128": None, "generation_speedup_128_weights": "int8",
                               "generation_speedup_128_fp32": None, "decode_fraction_of_bound": None}
    text = capsys.readouterr().out
    assert "machine:" in text and "command: python benchmarks/bench_generation.py --quick" in text
    assert "decode_fraction_of_bound: not measured" in text


def test_generation_weights_benchmark_on_a_trained_checkpoint(tiny_demo_dir, tmp_path):
    """The agreement script: fp32 batches identical (asserted inside), metrics per format."""
    out = tmp_path / "weights.json"
    ckpt = tiny_demo_dir / "finetune" / "generation-MedViLL-BAR"
    args = ["--checkpoint", str(ckpt), "--limit", "6", "--batch-sizes", "1", "4", "--bootstrap", "3",
            "--json", str(out)]
    assert load("bench_generation_weights").main(args) == 0
    data = json.loads(out.read_text())
    assert data["examples"] == 6 and set(data["formats"]) == {"fp32", "bf16", "int8"}
    assert data["formats"]["fp32"]["identical_reports_vs_fp32"] == 1.0
    assert all(set(f["metrics"]) == {"bleu4", "ce_f1", "perplexity"} for f in data["formats"].values())
    assert [s["same_as_batch_1"] for s in data["speed"] if s["weights"] == "fp32"] == [1.0, 1.0]


@pytest.mark.slow
def test_train_retrieval_and_data_benchmarks_quick(tmp_path, capsys):
    args = ["--quick", "--json"]
    assert load("bench_train").main([*args, str(tmp_path / "train.json"), "--profile"]) == 0
    assert load("bench_retrieval").main([*args, str(tmp_path / "retrieval.json"), "--workdir", str(tmp_path)]) == 0
    assert load("bench_data").main([*args, str(tmp_path / "data.json"), "--workdir", str(tmp_path)]) == 0
    assert load("bench_attention").main([*args, str(tmp_path / "attention.json")]) == 0
    train = json.loads((tmp_path / "train.json").read_text())
    (res,) = train["results"]
    assert res["preset"] == "tiny" and res["flops_per_step"] > 0 and res["samples_per_s"] > 0
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert retrieval["cnn_passes"] == {"cached": 20, "uncached": 40}
    data = json.loads((tmp_path / "data.json").read_text())
    assert data["summary"]["loader_over_train"] > 0 and len(data["loaders"]) == 6
    assert sum("in-memory pixel cache" in row["what"] for row in data["loaders"]) == 2  # its own rows
    text = capsys.readouterr().out
    assert "aten::" in text  # the profiler table
    attention = json.loads((tmp_path / "attention.json").read_text())
    assert [r["scheme"] for r in attention["results"]] == ["bi", "s2s", "bar", "non_crossing"]
    assert all(r["rel_err"]["flex"] < 1e-5 for r in attention["results"])
    lines = load("summarize").summary_lines(tmp_path)
    loader = next(line for line in lines if line.startswith("loader_over_train: "))
    assert "not measured" not in loader


def test_dropout_ab_times_both_dropouts_and_restores_medvills(monkeypatch):
    import dataclasses

    import medvill.modeling.dropout as md
    import medvill.modeling.encoder as enc

    common = load("_common")
    bench = load("bench_train")
    real = common.bench_model_config

    def with_dropout(preset, attn):
        cfg, mcfg = real(preset, attn)
        return cfg, dataclasses.replace(mcfg, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)

    monkeypatch.setattr(common, "bench_model_config", with_dropout)
    before = (md.dropout, enc.BertSelfAttention.forward)
    out = bench.dropout_ab("tiny", 2, torch.device("cpu"), "fp32", "sdpa", None, 2)
    assert {k: len(v) for k, v in out["times"].items()} == {"torch": 2, "medvill": 2}
    assert all(t > 0 for ts in out["times"].values() for t in ts)
    assert (md.dropout, enc.BertSelfAttention.forward) == before
    monkeypatch.setattr(common, "bench_model_config", real)
    with pytest.raises(SystemExit, match="no dropout"):
        bench.dropout_ab("tiny", 2, torch.device("cpu"), "fp32", "sdpa", None, 1)
