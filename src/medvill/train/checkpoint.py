"""Training-state checkpoints: everything needed to continue a run exactly where it stopped.

Layout (``OUTPUT/checkpoints/step-00001000/``)::

    model.safetensors     the (unwrapped) model's weights
    optimizer.pt          AdamW state (moments, step counts, param groups)
    scheduler.pt          the learning-rate schedule's position
    scaler.pt             fp16 only: the gradient scaler
    rng-<rank>.pt         per process: Python, NumPy, torch CPU and CUDA generator states
    trainer_state.json    the loop: step, data position (epoch, batches consumed), accumulation
                          counter, best validation value, stale count, running log sums, the log
    manifest.json         written last: size and SHA-256 of every file above

The sampler needs no state of its own: the loop uses Accelerate's seedable sampler, whose
order for an epoch is a function of ``(train.seed, epoch)``, and skips the batches already
consumed (``Accelerator.skip_first_batches``).

Writing is atomic: every process writes into ``.step-N.tmp``; the main process then writes
the manifest and renames the folder into place.  A checkpoint without a manifest (a killed
write), or whose files do not match it (a truncated or damaged copy), is not complete;
``--resume auto`` skips it with a message and takes the next older one.  ``.pt`` files are
read with ``torch.load(weights_only=True)`` (tensors and plain containers only, nothing is
unpickled).  Several nodes need a shared file system for the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint_files import CHECKPOINTS_DIR
from ..config import ConfigError, TrainConfig
from ..fileio import atomic_write_text, sha256_file
from ..modeling.pretrained import PreTrainedModel, load_state_tied, unique_state_dict

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
FORMAT = "medvill-train-state"
FORMAT_VERSION = 1
# settings that fix the data order and the meaning of a step: a resumed run must keep them
FINGERPRINT_KEYS = ("batch_size", "grad_accum", "seed")
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CorruptCheckpoint(ValueError):
    """A training-state checkpoint is half-written or does not match its manifest."""


@dataclass
class LoopState:
    """The training loop's own position and bookkeeping (``trainer_state.json``)."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch the next batch comes from
    batches_in_epoch: int = 0  # batches of ``epoch`` this process has consumed
    micro_step: int = 0  # Accelerate's accumulation counter (Accelerator.step)
    best_value: float | None = None  # sign * metric of the best validation (None: none yet)
    best_step: int | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0  # validations since the last improvement
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the metrics since the last log line
    count: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)  # every line written to metrics.jsonl
    elapsed_s: float = 0.0  # training wall time before this process started

    @property
    def history(self) -> list[dict[str, Any]]:
        return [e for e in self.log if "split" not in e]


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: Path) -> None:
    with path.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's generator states, in a form ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"], key=np_state["state"]["key"].numpy().astype(np.uint32))
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- saving

def save_training_state(
    root: Path, state: LoopState, cfg: TrainConfig, accelerator: Accelerator, model: nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any, keep: int = 2,
) -> Path:
    """Write ``root/step-N`` atomically (every process calls this); return its path.

    ``keep`` > 0 deletes all but the newest ``keep`` checkpoints with a manifest afterwards
    (and any temporary folder left by a killed write).
    """
    name = f"step-{state.step:08d}"
    final, tmp = root / name, root / f".{name}.tmp"
    main = accelerator.is_main_process
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _torch_save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if main:
        save_file(unique_state_dict(accelerator.unwrap_model(model)), str(tmp / MODEL), metadata={"format": "pt"})
        _fsync(tmp / MODEL)
        _torch_save(optimizer.state_dict(), tmp / OPTIMIZER)
        _torch_save(scheduler.state_dict(), tmp / SCHEDULER)
        if accelerator.scaler is not None:
            _torch_save(accelerator.scaler.state_dict(), tmp / SCALER)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_processes": accelerator.num_processes,
                "fingerprint": {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}, "max_steps": cfg.max_steps,
                "mixed_precision": cfg.mixed_precision, "loop": dataclasses.asdict(state)}
        atomic_write_text(tmp / STATE, json.dumps(meta, indent=1) + "\n")
    accelerator.wait_for_everyone()  # every rng-<rank>.pt is on disk
    if main:
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {"format": FORMAT, "step": state.step,
                    "files": {f: {"size": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files}}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        _fsync(tmp)
        old = root / f".{name}.old"
        if final.exists():  # rewritten after resuming from an older checkpoint
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(root)
        shutil.rmtree(old, ignore_errors=True)
        for leftover in root.glob(".step-*.tmp"):  # from runs killed while writing
            shutil.rmtree(leftover, ignore_errors=True)
        if keep > 0:
            for stale in [p for p in list_checkpoints(root) if (p / MANIFEST).is_file()][:-keep]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- finding and checking

def list_checkpoints(root: Path) -> list[Path]:
    """``step-N`` folders under ``root``, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json`` contents; :class:`CorruptCheckpoint` when the
    manifest is missing or any file is missing, of the wrong size or has the wrong hash."""
    path = Path(path)
    if not path.is_dir():
        raise CorruptCheckpoint(f"{path} is not a folder")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CorruptCheckpoint(f"{mpath} is missing: the checkpoint was not completely written")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{mpath}: unreadable manifest ({exc})") from None
    for required in (STATE, MODEL, OPTIMIZER, SCHEDULER, "rng-0.pt"):
        if required not in files:
            raise CorruptCheckpoint(f"{mpath} does not list {required}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f} is missing")
        size = f.stat().st_size
        if size != info.get("size"):
            raise CorruptCheckpoint(f"{f} has {size} bytes, the manifest says {info.get('size')}")
        if sha256_file(f) != info.get("sha256"):
            raise CorruptCheckpoint(f"{f} does not match its SHA-256 in the manifest")
    try:
        meta = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{path / STATE}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path / STATE}: not a medvill training state")
    for name in files:  # a file can match its manifest and still not load (written by a broken run)
        if name.endswith(".pt"):
            try:
                torch.load(path / name, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # UnpicklingError, RuntimeError (not a zip archive), EOFError, ...
                raise CorruptCheckpoint(f"{path / name} cannot be loaded ({type(exc).__name__}: {exc})") from None
        elif name.endswith(".safetensors"):
            try:
                with safe_open(str(path / name), framework="pt") as fh:
                    fh.keys()
            except Exception as exc:
                raise CorruptCheckpoint(f"{path / name} cannot be loaded ({exc})") from None
    return meta


def find_resume_checkpoint(output_dir: str | Path, resume: str, say: Callable[[str], None] = print) -> Path | None:
    """``resume`` = ``auto``: the newest complete checkpoint under ``output_dir/checkpoints``
    (incomplete or damaged ones are skipped, each with a message), or None when there is none;
    otherwise the checkpoint folder ``resume``, which must be complete."""
    if resume != "auto":
        path = Path(resume)
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as exc:
            raise ConfigError(f"train.resume={resume}: cannot resume from it: {exc}") from None
        return path
    root = checkpoint_root(output_dir)
    for partial in sorted(root.glob(".step-*.tmp")) if root.is_dir() else []:
        say(f"resume: ignoring {partial} (a checkpoint that was being written when the run stopped)")
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as exc:
            say(f"resume: skipping {path}: {exc}")
            continue
        return path
    return None


# --------------------------------------------------------------------------- loading

def load_training_state(
    path: Path, cfg: TrainConfig, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[LoopState, dict[str, Any]]:
    """Restore model, optimiser, scheduler (and fp16 scaler) in place; return the loop state
    and this process's RNG states (to apply with :func:`set_rng_state` just before training
    continues).  The checkpoint must have been verified by the caller."""
    path = Path(path)
    meta = json.loads((path / STATE).read_text())
    saved_fp = meta["fingerprint"]
    now_fp = {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}
    diffs = [f"train.{k}: {saved_fp[k]} in the checkpoint, {now_fp[k]} now" for k in FINGERPRINT_KEYS
             if saved_fp.get(k) != now_fp[k]]
    if meta["num_processes"] != accelerator.num_processes:
        diffs.append(f"processes: {meta['num_processes']} in the checkpoint, {accelerator.num_processes} now")
    if diffs:
        raise ConfigError(f"{path} was written by a run with other settings, so the data order would "
                          f"differ; resume with the same ones ({'; '.join(diffs)})")
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise CorruptCheckpoint(f"{rng_file} is missing")
    unwrapped = accelerator.unwrap_model(model)
    weights = load_file(str(path / MODEL))
    if isinstance(unwrapped, PreTrainedModel):
        weights = unwrapped.upgrade_state_dict(weights)
    load_state_tied(unwrapped, weights, source=str(path))
    optimizer.load_state_dict(_torch_load(path / OPTIMIZER))
    scheduler.load_state_dict(_torch_load(path / SCHEDULER))
    if accelerator.scaler is not None:
        if not (path / SCALER).is_file():
            raise ConfigError(f"{path} has no fp16 gradient scaler state ({SCALER}); it was written with "
                              f"train.mixed_precision={meta.get('mixed_precision')}")
        accelerator.scaler.load_state_dict(_torch_load(path / SCALER))
    loop = dict(meta["loop"])
    if loop.get("best_value") is not None and not math.isfinite(loop["best_value"]):
        loop["best_value"] = None
    state = LoopState(**{f.name: loop[f.name] for f in dataclasses.fields(LoopState) if f.name in loop})
    return state, _torch_load(rng_file)
