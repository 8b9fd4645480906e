"""Memory and speed options applied to a model before training (``train.*`` keys).

* ``gradient_checkpointing``: every transformer layer recomputes its activations in the
  backward pass instead of keeping them (same gradients, less activation memory, one extra
  forward of the encoder per step).
* ``channels_last``: the CNN's weights and inputs in NHWC layout, which tensor-core
  convolutions prefer (same results up to float rounding).
* ``batchnorm``: BatchNorm in the CNN normally normalises with the statistics of each
  process's batch, so a global batch split over processes or accumulation steps is not quite
  the same computation as one big batch.  ``sync`` (several GPUs) shares the statistics across
  processes (torch's SyncBatchNorm, CUDA only); ``frozen`` normalises with the running
  statistics (the usual choice when fine-tuning an ImageNet CNN with small per-device
  batches): the result then no longer depends on how the global batch is split.  The affine
  weights keep training in every mode.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ConfigError, TrainConfig
from ..modeling.encoder import BertEncoder
from ..modeling.visual import VisualEncoder


def _keep_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.train(False)  # running statistics, also while the rest of the model trains


def apply_memory_options(model: nn.Module, cfg: TrainConfig, num_processes: int = 1,
                         device_type: str = "cpu") -> nn.Module:
    """Set the options on ``model`` (in place, except that ``sync`` may return a new root)."""
    for module in model.modules():
        if isinstance(module, BertEncoder):
            module.gradient_checkpointing = cfg.gradient_checkpointing
        if isinstance(module, VisualEncoder) and cfg.channels_last:
            module.use_channels_last()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handle = module.__dict__.pop("_medvill_frozen", None)
            if handle is not None:  # set by an earlier call
                handle.remove()
            if cfg.batchnorm == "frozen":
                module.__dict__["_medvill_frozen"] = module.register_forward_pre_hook(_keep_eval)
    if cfg.batchnorm == "sync" and num_processes > 1:
        if device_type != "cuda":
            raise ConfigError("train.batchnorm=sync needs CUDA GPUs (torch's SyncBatchNorm does not run on "
                              f"{device_type}); use batch or frozen")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
