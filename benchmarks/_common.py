"""Shared pieces of the ``bench_*.py`` scripts: the machine, peak memory, tables, the
dense-matmul rate, and the pre-training step that several benchmarks measure.

Not a benchmark itself (the scripts import it from their own folder).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensors on the GPU, after
``reset_peak_memory_stats``); on the CPU the peak resident set size of this process above its
size at the start of the measurement (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``;
where that is impossible, the growth of ``ru_maxrss``, which only shows a peak above every
earlier one).  DataLoader worker processes are not included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

console = Console(width=140)


# ------------------------------------------------------------------------------------ machine

def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return torch.device(name)


def machine(device: torch.device) -> str:
    cpu = (f"{cpu_model()}, {usable_cpus()} usable CPUs (os.cpu_count() = {os.cpu_count()}), "
           f"torch threads {torch.get_num_threads()}")
    soft = f"torch {torch.__version__}, Python {platform.python_version()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
        return f"{gpu}; host {cpu}; {soft}"
    return f"CPU {cpu}; {platform.platform()}; {soft}"


def command(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *args])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ memory

def _vm_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Filled in by :func:`peak_memory`: ``bytes`` and how they were measured (``method``)."""

    bytes: int = 0
    method: str = ""

    def __str__(self) -> str:
        return f"{self.bytes / 2**20:,.0f} MiB"


@contextmanager
def peak_memory(device: torch.device):
    """Peak memory of the block (see the module docstring for what is measured where)."""
    result = PeakMemory()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        sync(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        result.method = "CUDA max_memory_allocated above the start"
        return
    if _reset_hwm() and _vm_kib("VmHWM") is not None:
        start = _vm_kib("VmRSS") or 0
        yield result
        result.bytes = max(0, (_vm_kib("VmHWM") or 0) - start) * 1024
        result.method = "peak RSS above the start (Linux VmHWM after a clear_refs reset), main process"
        return
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield result
    grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    result.bytes = max(0, grow) * (1 if sys.platform == "darwin" else 1024)
    result.method = "growth of ru_maxrss (a lower bound: only a peak above every earlier one shows)"


# ------------------------------------------------------------------------------------ output

def print_table(title: str, machine_line: str, command_line: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> None:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(c if isinstance(c, str) else fmt(c) for c in row))
    console.print(table)
    for line in (f"machine: {machine_line}", f"command: {command_line}", *notes):
        console.print(line, markup=False, highlight=False)


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1e4:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.3g}"
    return str(x)


def si(x: float, unit: str = "FLOP/s") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path | torch.device):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


# ------------------------------------------------------------------------------------ matmul

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Dense ``n x n @ n x n`` FLOP/s (2 n^3 per product), best of ``repeats`` after a warm-up.

    fp32 on CUDA is true fp32 (TF32 off), matching the fp32 train step."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    reps = 1 if device.type == "cpu" else 10  # a GPU product is too short to time alone
    t = best_time(lambda: [torch.mm(a, b, out=out) for _ in range(reps)], device, repeats)
    return 2.0 * n**3 * reps / t


def memory_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> tuple[float, float]:
    """``(copy, read)`` bytes/s of this machine's memory, best of ``repeats`` after a warm-up:
    ``copy`` = bytes read + bytes written by ``dst.copy_(src)`` of a ``mib`` MiB fp32 tensor
    (STREAM's copy convention), ``read`` = bytes of the same tensor summed (reads only).  Far
    larger than any cache, so they are what streaming weights from memory can reach."""
    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: pages touched
    copy = best_time(lambda: dst.copy_(src), device, repeats)
    read = best_time(lambda: src.sum(), device, repeats)
    return 2 * src.nbytes / copy, src.nbytes / read


# ------------------------------------------------------------------------------------ train step

DEFAULT_BATCH = {"cpu": {"tiny": 8, "small": 32, "base": 4}, "cuda": {"tiny": 128, "small": 128, "base": 32}}


def bench_model_config(preset: str, attn: str = "sdpa"):
    """The preset's model with random weights (no ImageNet download, no BERT init)."""
    from medvill.config import preset_config

    cfg = preset_config(preset)
    mcfg = dataclasses.replace(cfg.model, backbone_pretrained=False, attn_implementation=attn)
    if attn == "flex":  # FlexAttention has no attention-probability dropout
        mcfg = dataclasses.replace(mcfg, attention_probs_dropout_prob=0.0)
    mcfg.validate()
    return cfg, mcfg


def random_pretrain_batch(mcfg, batch_size: int, device: torch.device, seed: int = 0,
                          contrastive: bool = False) -> dict[str, torch.Tensor]:
    """A pre-training batch of the model's full text length (every report max_text_len tokens:
    the costliest case), 15 % MLM positions, half the pairs matched; ``contrastive``: with each
    image's own report and a label-set id (what ``pretrain.itc_weight`` > 0 reads; 4 label sets)."""
    g = torch.Generator().manual_seed(seed)
    t = mcfg.max_text_len
    special = max(mcfg.pad_token_id, mcfg.unk_token_id, mcfg.cls_token_id, mcfg.sep_token_id, mcfg.mask_token_id)
    ids = torch.randint(special + 1, mcfg.vocab_size, (batch_size, t), generator=g)
    ids[:, -1] = mcfg.sep_token_id
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch_size, t, generator=g) < 0.15
    chosen[:, -1] = False
    chosen[:, 0] = True
    labels[chosen] = ids[chosen]
    ids[chosen] = mcfg.mask_token_id
    batch = {
        "images": torch.randn(batch_size, 3, mcfg.image_size, mcfg.image_size, generator=g),
        "text_ids": ids,
        "text_valid": torch.ones(batch_size, t, dtype=torch.bool),
        "mlm_labels": labels,
        "is_matched": torch.arange(batch_size) % 2,
    }
    if contrastive:
        reports = torch.randint(special + 1, mcfg.vocab_size, (batch_size, t), generator=g)
        reports[:, -1] = mcfg.sep_token_id
        batch.update(report_ids=reports, report_valid=torch.ones(batch_size, t, dtype=torch.bool),
                     label_group=torch.arange(batch_size) % 4)
    return {k: v.to(device) for k, v in batch.items()}


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn`` by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
    attention; 2 per multiply-add; elementwise work is not counted).  The CPU's fused SDPA
    kernels are added with torch's own SDPA formulas (dense: masked entries are computed too)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class TrainStepResult:
    preset: str
    batch_size: int
    seq_len: int
    params_m: float
    step_s: float
    samples_per_s: float
    flops_per_step: int
    achieved_flops: float
    peak_memory_bytes: int
    memory_method: str
    amp: str
    attn: str
    channels_last: bool = False
    profile_table: str | None = None


class TrainStep:
    """One pre-training optimiser step as ``medvill pretrain`` takes it: PretrainTask's
    MLM + IRM (+ ITC where the preset has it) loss under the preset's mask (BAR; k of K visual
    tokens), backward, gradient clipping, the loop's AdamW (fused kernel, its parameter
    groups).  A preset that learns its own vocabulary (tiny, small: the demo) has that
    vocabulary's size, not BERT's.  ``amp``: fp32 or bf16/fp16 autocast; ``channels_last``:
    the loop's ``train.channels_last`` memory option for the CNN (None: the preset's setting)."""

    def __init__(self, preset: str, batch_size: int, device: torch.device, amp: str = "fp32",
                 attn: str = "sdpa", seed: int = 0, channels_last: bool | None = None):
        from medvill.modeling.heads import MedViLLForPretraining
        from medvill.tasks.pretrain import PretrainTask
        from medvill.train.loop import param_groups

        self.preset, self.batch_size, self.device, self.amp, self.attn = preset, batch_size, device, amp, attn
        cfg, self.mcfg = bench_model_config(preset, attn)
        if cfg.init_text is None and cfg.tokenizer.vocab is None:  # the vocabulary `medvill pretrain` learns
            self.mcfg = dataclasses.replace(self.mcfg, vocab_size=cfg.tokenizer.vocab_size)
        channels_last = cfg.train.channels_last if channels_last is None else channels_last
        self.channels_last = channels_last
        torch.manual_seed(seed)
        itc_dim = cfg.pretrain.itc_dim if cfg.pretrain.itc_weight > 0 else 0  # as medvill pretrain builds it
        self.model = MedViLLForPretraining(self.mcfg, load_pretrained_backbone=False,
                                           contrastive_dim=itc_dim).to(device).train()
        if channels_last:
            from medvill.train.memory import apply_memory_options

            cfg.train.channels_last = True
            self.model = apply_memory_options(self.model, cfg.train, 1, device.type)
        self.task = PretrainTask(cfg.pretrain, seed)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.train), lr=cfg.train.lr,
                                           fused=True if device.type in ("cuda", "cpu") else None)  # as the loop
        self.grad_clip = cfg.train.grad_clip
        self.batch = random_pretrain_batch(self.mcfg, batch_size, device, seed,
                                           contrastive=cfg.pretrain.itc_weight > 0)
        k = cfg.pretrain.visual_tokens_sampled or self.mcfg.num_visual_tokens
        self.seq_len = k + 2 + self.mcfg.max_text_len  # CLS, k visual, SEP_V, reports with their SEP_L
        self.step = 0

    def autocast(self):
        if self.amp == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.amp])

    def forward_backward(self) -> None:
        with self.autocast():
            loss = self.task.training_step(self.model, self.batch, self.step).loss
        loss.backward()

    def __call__(self) -> None:
        self.forward_backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def flops(self) -> int:
        """FLOPs of one forward + backward (the optimiser's elementwise work is not counted).

        Counted with the SDPA kernel whatever ``attn`` is: the model's FLOPs (dense attention),
        so that a kernel that skips masked blocks shows as a higher achieved rate (and because
        compiled FlexAttention cannot run under the counter's dispatch mode)."""
        impl = self.mcfg.attn_implementation
        self.model.config.attn_implementation = "sdpa"
        try:
            n = count_flops(self.forward_backward)
        finally:
            self.model.config.attn_implementation = impl
        self.optimizer.zero_grad(set_to_none=True)
        return n

    def profile(self, rows: int = 15) -> str:
        """torch.profiler table of one step: the top ops by self time."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        try:
            with profile(activities=acts) as prof:
                self()
                sync(self.device)
            key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
        except Exception as exc:  # noqa: BLE001 - the profile is an extra; the measurement stands
            return f"torch.profiler failed: {type(exc).__name__}: {exc}"


def measure_train_step(preset: str, batch_size: int, device: torch.device, amp: str = "fp32", attn: str = "sdpa",
                       steps: int = 3, warmup: int = 1, profile: bool = False,
                       channels_last: bool | None = None) -> TrainStepResult:
    """Samples/s (best of ``steps`` timed steps after ``warmup``), FLOPs per step and peak memory."""
    step = TrainStep(preset, batch_size, device, amp, attn, channels_last=channels_last)
    with peak_memory(device) as mem:
        for _ in range(max(0, warmup)):
            step()
        t = best_time(step, device, steps)
    flops = step.flops()
    table = step.profile() if profile else None
    params = sum(p.numel() for p in step.model.parameters()) / 1e6
    return TrainStepResult(
        preset=preset, batch_size=batch_size, seq_len=step.seq_len, params_m=params, step_s=t,
        samples_per_s=batch_size / t, flops_per_step=flops, achieved_flops=flops / t,
        peak_memory_bytes=mem.bytes, memory_method=mem.method, amp=amp, attn=attn, channels_last=step.channels_last,
        profile_table=table,
    )
