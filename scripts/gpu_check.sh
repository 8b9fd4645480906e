#!/usr/bin/env bash
# One short GPU check of medvill (under 5 minutes on an H100 / H200), run from a copy of the
# repository's working tree on a machine with a CUDA GPU:
#
#   OUT=/some/folder bash scripts/gpu_check.sh
#
# 1. environment (GPU, python3, torch);
# 2. install: `pip install -e .`; offline that fails, then `pip install --no-deps
#    --no-build-isolation -e .` (dependencies from the environment), then PYTHONPATH=src; the
#    summary says which worked and which imports are missing;
# 3. bf16 pre-training step of the base configuration: MFU against the measured bf16 matmul
#    rate, with a profiler table (benchmarks/bench_train.py --presets base --amp bf16), then
#    again with the CNN in channels_last (train.channels_last);
# 4. KV-cached vs naive generation, 128 tokens, base (benchmarks/bench_generation.py);
# 5. a tiny bf16 pre-training run through the CLI (medvill pretrain --preset tiny);
# 6. FlexAttention vs SDPA equality on the GPU: tests/test_attention.py (tiny model, outputs and
#    all parameter gradients; the CPU tests of the file run too);
# 7. FlexAttention vs SDPA speed and error at the paper's sizes, every scheme, forward and
#    backward, with the diagnostic timings (benchmarks/bench_attention.py --diagnostics);
# 8. if time is left: the base train step with channels_last and attn_implementation=flex.
#
# Everything goes to $OUT (default ./gpu-check-output): gpu_check.log (all output),
# summary.txt (one line per step and the headline numbers) and the benchmarks' JSON files
# (7 files).  Steps share a deadline (GPU_CHECK_BUDGET_S, default 280 s) so the whole
# check stays under 5 minutes; a step cut short is reported as such.  PYTHON picks the
# interpreter (default python3).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-output}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORK=$(mktemp -d)
export MEDVILL_CACHE="$WORK/cache"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-280}))

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the time left; log everything
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        say "$name: skipped (the ${GPU_CHECK_BUDGET_S:-280} s budget is spent)"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "===== $name: $* (limit ${limit} s)" | tee -a "$LOG"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local secs=$(($(date +%s) - t0))
    if ((rc == 0)); then
        say "$name: ok (${secs} s)"
    elif ((rc == 124 || rc == 137)); then
        say "$name: CUT at ${limit} s (time limit)"
    else
        say "$name: FAILED (exit $rc, ${secs} s; see gpu_check.log)"
    fi
    return $rc
}

# 1. environment
{
    echo "===== environment"
    date -u
    nvidia-smi -L 2>&1 || echo "nvidia-smi not available"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} >>"$LOG" 2>&1
say "gpu: $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")' 2>/dev/null); torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "no CUDA GPU visible to $PY: stopping"
    exit 1
fi

# 2. install
INSTALL="none"
if step install-e 60 "$PY" -m pip install --retries 0 --timeout 10 -e .; then
    INSTALL="pip install -e ."
elif step install-no-deps 60 "$PY" -m pip install --retries 0 --timeout 10 --no-deps --no-build-isolation -e .; then
    INSTALL="pip install --no-deps --no-build-isolation -e . (dependencies: what the environment has)"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    INSTALL="not installed: PYTHONPATH=src"
fi
MISSING=$("$PY" - <<'EOF' 2>>"$LOG"
import importlib
mods = ["medvill", "medvill.pipeline", "medvill.generation", "medvill.tasks.retrieval", "medvill.cli",
        "accelerate", "rich", "typer", "yaml", "tokenizers", "safetensors", "sklearn", "scipy", "sacrebleu", "pytest"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:  # noqa: BLE001
        bad.append(f"{m} ({type(exc).__name__}: {exc})")
print("; ".join(bad) or "none")
EOF
)
say "install: $INSTALL; missing imports: $MISSING"

# 3-8, the headline numbers first (FlexAttention compiles a kernel per scheme: the slow part)
step train-base-bf16 90 "$PY" benchmarks/bench_train.py --presets base --amp bf16 --steps 10 --profile --no-channels-last \
    --json "$OUT/train_base_bf16.json"
step train-base-bf16-channels-last 60 "$PY" benchmarks/bench_train.py --presets base --amp bf16 --steps 10 \
    --channels-last --json "$OUT/train_base_bf16_cl.json"
step generation-base-128 60 "$PY" benchmarks/bench_generation.py --preset base --lengths 128 --repeats 3 \
    --json "$OUT/generation_base.json"
step pretrain-tiny-bf16 90 "$PY" -m medvill.cli pretrain --preset tiny --output "$WORK/pretrain" --max-steps 40 \
    --set train.mixed_precision=bf16
step flex-equality-tests 120 "$PY" -m pytest tests/test_attention.py -q -p no:cacheprovider -rs
step flex-vs-sdpa-bench 120 "$PY" benchmarks/bench_attention.py --diagnostics --json "$OUT/attention.json"
step train-base-bf16-flex 90 "$PY" benchmarks/bench_train.py --presets base --amp bf16 --channels-last --attn flex \
    --steps 10 --json "$OUT/train_base_bf16_cl_flex.json"

# headline numbers
"$PY" - "$OUT" "$WORK/pretrain" <<'EOF' >>"$SUMMARY" 2>>"$LOG"
import json, sys
from pathlib import Path
out, pre = Path(sys.argv[1]), Path(sys.argv[2])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
t = load("train_base_bf16.json")
if t:
    r = t["results"][0]
    print(f"train base bf16: batch {r['batch_size']}, {r['samples_per_s']:.1f} samples/s, "
          f"{r['achieved_flops'] / 1e12:.1f} TFLOP/s; measured bf16 matmul {t['matmul_flops']['bf16'] / 1e12:.0f} TFLOP/s; "
          f"MFU {t['summary']['train_gemm_fraction_base']:.3f} (target 0.45)")
c = load("train_base_bf16_cl.json")
if c:
    r = c["results"][0]
    print(f"train base bf16, channels_last: {r['samples_per_s']:.1f} samples/s, MFU "
          f"{c['summary']['train_gemm_fraction_base']:.3f}")
f = load("train_base_bf16_cl_flex.json")
if f:
    r = f["results"][0]
    print(f"train base bf16, channels_last, flex attention: {r['samples_per_s']:.1f} samples/s, MFU "
          f"{f['summary']['train_gemm_fraction_base']:.3f}")
g = load("generation_base.json")
if g:
    r = g["results"][0]
    print(f"generation base, 128 tokens: cached {r['cached_tokens_per_s']:.1f} tok/s, naive {r['naive_tokens_per_s']:.1f} "
          f"tok/s, speedup {r['speedup']:.2f} (target 25), identical tokens")
a = load("attention.json")
if a:
    for r in a["results"]:
        extra = (f"; flex lookup-mask {r['flex_lookup_s'] * 1e3:.2f} ms, no mask {r['flex_nomask_s'] * 1e3:.2f} ms"
                 if r.get("flex_nomask_s") else "")
        print(f"attention {r['scheme']}: {r['block_sparsity']:.0%} blocks skipped, sdpa {r['sdpa_s'] * 1e3:.2f} ms, "
              f"flex {r['flex_s'] * 1e3:.2f} ms (x{r['flex_speedup']:.2f}), rel. error sdpa/flex "
              f"{r['rel_err']['sdpa']:.1e}/{r['rel_err']['flex']:.1e}{extra}")
m = pre / "metrics.jsonl"
if m.is_file():
    rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
    losses = [(r.get("step"), r.get("mlm_loss"), r.get("irm_loss")) for r in rows if "mlm_loss" in r]
    if losses:
        print(f"tiny bf16 pre-training: (step, mlm, irm) first {losses[0]}, last {losses[-1]}; "
              f"checkpoint written: {(pre / 'model.safetensors').is_file()}")
EOF
say "total: $(($(date +%s) - START)) s"
rm -rf "$WORK"
