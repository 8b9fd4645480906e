"""Checkpoints as directories: ``config.json`` + ``model.safetensors`` (+ tokenizer files).

Nothing is ever unpickled: weights are safetensors, configuration is JSON, and the class
to rebuild is looked up by name in a registry of medvill architectures.  Files are written
to a temporary name and renamed, so an interrupted save never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint_files import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_config
from ..config import ConfigError, ModelConfig, dataclass_from_dict
from ..fileio import atomic_write_text, umask_mode

FORMAT_VERSION = 1

ARCHITECTURES: dict[str, type[PreTrainedModel]] = {}

_Model = TypeVar("_Model", bound="PreTrainedModel")


def register(cls: type[_Model]) -> type[_Model]:
    ARCHITECTURES[cls.__name__] = cls
    return cls


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without duplicate storage (tied weights are kept once, under the first name)."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr() if tensor.numel() else id(tensor)
        if key in seen and tensor.numel():
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


class PreTrainedModel(nn.Module):
    """Base class of every saveable medvill model.

    Subclasses take ``(config: ModelConfig, load_pretrained_backbone: bool, **head_config)``
    and return their extra constructor arguments from :meth:`head_config`.
    """

    architecture_version: ClassVar[int] = 1

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def head_config(self) -> dict[str, Any]:
        return {}

    def upgrade_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Saved weights of an older checkpoint format under this model's parameter names
        (identity unless a model renamed a part; every load goes through it)."""
        return state

    def save_pretrained(
        self, directory: str | Path, tokenizer: Any = None, extra_files: dict[str, str] | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer's files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "medvill",
            "format_version": FORMAT_VERSION,
            "architecture": type(self).__name__,
            "model": _model_config_dict(self.config),
            "head": self.head_config(),
        }
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".safetensors.tmp")
        os.close(fd)
        try:
            save_file(unique_state_dict(self), tmp, metadata={"format": "pt"})
            os.chmod(tmp, umask_mode())
            os.replace(tmp, directory / WEIGHTS_NAME)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if tokenizer is not None:
            tokenizer.save(directory)
        for name, text in (extra_files or {}).items():
            atomic_write_text(directory / name, text)
        # config.json last: its presence marks a complete checkpoint
        atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> PreTrainedModel:
        """Rebuild the model saved in ``directory``.  Called on a subclass, the saved
        architecture must be that class; called on ``PreTrainedModel`` any is accepted."""
        meta = read_checkpoint_config(directory)
        arch = meta["architecture"]
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{directory}/{CONFIG_NAME}: unknown architecture {arch!r}")
        target = ARCHITECTURES[arch]
        if cls is not PreTrainedModel and not issubclass(target, cls):
            raise ConfigError(f"{directory} holds a {arch}, not a {cls.__name__}")
        where = f"{Path(directory) / CONFIG_NAME}"
        try:
            config = checkpoint_model_config(directory, meta)
            head = meta.get("head", {})
            if not isinstance(head, dict):
                raise ConfigError(f"'head' must be a mapping, got {type(head).__name__}")
            # every subclass takes (config, load_pretrained_backbone, **head_config): see the class docstring
            build: Callable[..., PreTrainedModel] = target
            model = build(config, load_pretrained_backbone=False, **head)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a head option the architecture does not take
            raise ConfigError(f"{where}: cannot build a {arch} from it ({exc})") from None
        load_state_tied(model, model.upgrade_state_dict(read_weights(directory, map_location)), source=str(directory))
        return model


def checkpoint_model_config(directory: str | Path, meta: dict[str, Any] | None = None) -> ModelConfig:
    """The validated :class:`ModelConfig` of a checkpoint (errors name its config.json)."""
    meta = read_checkpoint_config(directory) if meta is None else meta
    try:
        config = dataclass_from_dict(ModelConfig, meta["model"], "model.")
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{Path(directory) / CONFIG_NAME}: {exc}") from None
    return config


def read_weights(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's ``model.safetensors``; a damaged or truncated file is a named error."""
    weights = Path(directory) / WEIGHTS_NAME
    try:
        return load_file(str(weights), device=str(map_location))
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise ConfigError(f"{weights}: damaged or truncated weights file ({exc}); copy the checkpoint again") from None


def _model_config_dict(config: ModelConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def load_state_tied(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that accepts tied weights stored once."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    # a missing key is fine when it shares storage with a key that is present
    ptr_to_names: dict[int, list[str]] = {}
    for k, v in own.items():
        ptr_to_names.setdefault(v.data_ptr(), []).append(k)
    really_missing = [k for k in missing if not any(n in state for n in ptr_to_names[own[k].data_ptr()] if n != k)]
    unexpected = [k for k in state if k not in own]
    if really_missing or unexpected:
        raise ConfigError(
            f"{source}: weights do not match the architecture "
            f"(missing: {really_missing[:5]}{'...' if len(really_missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ConfigError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
