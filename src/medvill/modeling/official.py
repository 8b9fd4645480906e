"""The authors' released pre-trained MedViLL weights, mapped onto medvill's model.

The official repository (github.com/SuperSupermoon/MedViLL) saves its pre-training model
``MedViLL`` (earlier ``CXRBERT``) with Hugging Face's ``save_pretrained``: ``config.json`` (a
``BertConfig`` of bert-base-uncased) and ``pytorch_model.bin``, a state dict whose keys are

* ``enc.txt_embeddings.*``: BERT's embeddings (word, position, token type, LayerNorm);
* ``enc.img_embeddings.img_embeddings.*``: the 2048 -> hidden projection of the CNN features;
  its ``token_type_embeddings``, ``position_embeddings`` and ``LayerNorm`` are the *same modules*
  as the text's, so the file holds them twice (checked equal here, mapped once);
* ``enc.img_encoder.model.N.*``: torchvision's ResNet-50 without its pooling and fc layers
  (``children()[:-2]``: conv1, bn1, relu, maxpool, layer1-4: the indices of medvill's trunk);
* ``enc.encoder.*``, ``enc.pooler.*``: BERT's encoder and pooler (medvill uses BERT's names);
* ``mlm.predictions.*``: BERT's LM head, its decoder tied to the word embeddings;
* ``itm.linear.*``: a two-class matching head (not aligned, aligned).

What differs, and how the mapping keeps the function the same:

* **Positions.**  The official sequence embeds [CLS], [SEP] and every report token with BERT's
  text positions restarting at 0 for each piece (CLS at 0, SEP at 0, report token j at j, the
  Non-crossing branch's extra text [CLS] at 0), and a visual token with the *text* position of
  its grid cell (``position_embeddings(grid index)``).  medvill gives CLS / CLS_L row 0, SEP_V row
  1, report token j row 2 + j, and visual tokens their own location table.  So medvill's
  position rows are the official rows ``[0, 0, 0, 1, ..., P - 3]`` and its location table the
  official rows ``0 .. K - 1``: the same vector reaches every token (reports up to P - 2
  tokens; medvill's ``max_text_len`` is far below).
* **Matching head.**  Two logits (softmax) become medvill's one (sigmoid): ``w = w_1 - w_0``,
  ``b = b_1 - b_0`` gives ``sigmoid(logit) = softmax(.)_aligned`` exactly.  Under Bi and BAR both
  read the pooled CLS.  Under S2S the official head read CLS, which that mask lets see no
  report token, and under Non-crossing the raw product of CLS and the extra [CLS] (no pooler);
  medvill reads SEP_L and the product of the pooled states there (see
  :func:`~medvill.modeling.masks.summary_indices`), so for those schemes the imported head is a
  starting point for fine-tuning, not the same function (:func:`scheme_notes` says so).
* **Buffers** (``position_ids``, BatchNorm's ``num_batches_tracked``) carry no learnt value;
  ``position_ids`` is checked to be ``0 .. P - 1`` and dropped.

Every tensor of the file is mapped, checked equal to the one it duplicates, or refused by name;
every medvill parameter must be filled (:class:`OfficialConversion`).  Nothing loads leniently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, MaskScheme, ModelConfig
from .bert_init import BERT_CONFIG_KEYS

#: the five released checkpoints (official README) and the scheme each was pre-trained with
OFFICIAL_RELEASES = {
    MaskScheme.BAR: "MedViLL (Bidirectional Auto-Regressive mask)",
    MaskScheme.BI_S2S: "Bi & Seq2Seq (S2S in 75 % and Bi in 25 % of the mini-batches)",
    MaskScheme.BI: "Bidirectional",
    MaskScheme.S2S: "Seq2Seq",
    MaskScheme.NON_CROSSING: "Non-cross",
}

#: the official LM head's LayerNorm (its own BertLayerNorm class) uses this eps, BERT's 1e-12 elsewhere
OFFICIAL_MLM_LAYER_NORM_EPS = 1e-5

#: modules the official image embeddings share with the text embeddings (saved under both names)
SHARED_WITH_TEXT = ("token_type_embeddings.weight", "position_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")

# official prefix -> medvill prefix, for the tensors that keep their shape and meaning
_RENAMED = (
    ("enc.txt_embeddings.word_embeddings.", "medvill.embeddings.word_embeddings."),
    ("enc.txt_embeddings.token_type_embeddings.", "medvill.embeddings.token_type_embeddings."),
    ("enc.txt_embeddings.LayerNorm.", "medvill.embeddings.LayerNorm."),
    ("enc.img_embeddings.img_embeddings.", "medvill.embeddings.visual_projection."),
    ("enc.img_encoder.model.", "medvill.visual.trunk."),
    ("enc.encoder.", "medvill.encoder."),
    ("enc.pooler.", "medvill.pooler."),
    ("mlm.predictions.transform.", "mlm_head.transform."),
    ("mlm.predictions.bias", "mlm_head.bias"),
)
_POSITIONS = "enc.txt_embeddings.position_embeddings.weight"
_POSITION_IDS = "enc.txt_embeddings.position_ids"
_WORDS = "enc.txt_embeddings.word_embeddings.weight"
_DECODER = "mlm.predictions.decoder.weight"  # tied to the word embeddings
_ITM = "itm.linear."


@dataclass
class OfficialConversion:
    """The result of :func:`convert_official_state`: medvill's state dict and an account of
    every official tensor (``mapped``: official key -> what it became)."""

    state: dict[str, torch.Tensor]
    mapped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"tensors": len(self.mapped), "mapped": self.mapped, "notes": self.notes}


def official_model_config(bert_config: Mapping[str, Any], base: ModelConfig,
                          source: str = "config.json") -> ModelConfig:
    """``base`` with the transformer sizes of the official ``config.json`` (a ``BertConfig``);
    validated once the tokenizer's ids are in (the caller's job)."""
    if bert_config.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{source}: position_embedding_type {bert_config['position_embedding_type']!r}; "
                          "the official models use absolute positions")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
               if k not in bert_config]
    if missing:
        raise ConfigError(f"{source}: not a BERT configuration (no {', '.join(missing)})")
    values = {k: type(getattr(base, k))(bert_config[k]) for k in BERT_CONFIG_KEYS if k in bert_config}
    return dataclasses.replace(base, **values, mlm_layer_norm_eps=OFFICIAL_MLM_LAYER_NORM_EPS)


def _strip_wrappers(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the bare model names them: a ``module.`` prefix (a saved DDP / DataParallel
    wrapper) is removed when every key has it."""
    if official and all(k.startswith("module.") for k in official):
        return {k[len("module."):]: v for k, v in official.items()}
    return dict(official)


def convert_official_state(official: Mapping[str, torch.Tensor], cfg: ModelConfig,
                           target: Mapping[str, torch.Tensor]) -> OfficialConversion:
    """Map an official state dict onto medvill's :class:`MedViLLForPretraining` keys.

    ``target``: the medvill model's own state dict (names and shapes to fill).  Raises
    :class:`ConfigError` naming the tensors that have no place, that are missing, that have
    the wrong shape, or that should duplicate another and do not.
    """
    src = _strip_wrappers(official)
    out = OfficialConversion(state={})
    unmapped: list[str] = []

    def put(key: str, value: torch.Tensor, official_key: str, how: str = "") -> None:
        if key not in target:
            raise ConfigError(f"{official_key}: mapped to {key}, which medvill's model does not have")
        if tuple(target[key].shape) != tuple(value.shape):
            raise ConfigError(f"{official_key} has shape {tuple(value.shape)} but medvill's {key} needs "
                              f"{tuple(target[key].shape)}: is model.image_size / the config right?")
        out.state[key] = value.to(target[key].dtype).contiguous()
        out.mapped[official_key] = key + (f" ({how})" if how else "")

    def same_as(key: str, original: str) -> None:
        if original not in src:
            raise ConfigError(f"{key} duplicates {original}, which the file lacks")
        if not torch.equal(src[key], src[original]):
            raise ConfigError(f"{key} should hold the same values as {original} (one module in the official "
                              "model) but differs: the file is not an official MedViLL checkpoint or was edited")
        out.mapped[key] = f"same tensor as {original}"

    for key, value in src.items():
        if key == _POSITIONS:
            _map_positions(value, cfg, put)
        elif key == _POSITION_IDS:
            if not torch.equal(value.flatten().long(), torch.arange(value.numel())):
                raise ConfigError(f"{key}: expected the buffer 0 .. {value.numel() - 1}")
            out.mapped[key] = "dropped (a constant buffer: 0 .. P - 1)"
        elif key.startswith("enc.img_embeddings.") and key[len("enc.img_embeddings."):] in SHARED_WITH_TEXT:
            same_as(key, "enc.txt_embeddings." + key[len("enc.img_embeddings."):])
        elif key == _DECODER:
            same_as(key, _WORDS)
        elif key.startswith(_ITM):
            _map_matching(key, value, put)
        else:
            for old, new in _RENAMED:
                if key.startswith(old):
                    put(new + key[len(old):], value, key)
                    break
            else:
                unmapped.append(key)
    if unmapped:
        raise ConfigError(f"{len(unmapped)} tensor(s) of the file have no place in medvill's model: "
                          f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''} (only the released "
                          "ResNet-50 MedViLL pre-training checkpoints are supported; a ViT image encoder is not)")
    tied = {"mlm_head.decoder.weight"}  # the word embeddings, filled above
    missing = [k for k in target if k not in out.state and k not in tied]
    if missing:
        raise ConfigError(f"the file lacks {len(missing)} tensor(s) medvill's model needs, such as "
                          f"{', '.join(missing[:8])}: is it a complete MedViLL pre-training checkpoint?")
    return out


def _map_positions(value: torch.Tensor, cfg: ModelConfig, put: Callable[..., None]) -> None:
    """Official BERT position rows -> medvill's position rows and visual location table."""
    p, k = value.shape[0], cfg.num_visual_tokens
    if k > p:
        raise ConfigError(f"{_POSITIONS}: {p} rows cannot give the {k} grid positions of a "
                          f"{cfg.image_size} px image (model.image_size)")
    rows = torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(p - 2)])  # CLS, SEP_V, then w_j -> j
    put("medvill.embeddings.position_embeddings.weight", value[rows], _POSITIONS,
        "rows 0, 0, 0 .. P-3: CLS, SEP_V, report token j at j")
    put("medvill.embeddings.visual_location_embeddings.weight", value[:k], _POSITIONS + " [visual]",
        f"rows 0 .. {k - 1}: a visual token's grid cell")


def _map_matching(key: str, value: torch.Tensor, put: Callable[..., None]) -> None:
    """Two-way softmax head -> one logit: (aligned - not aligned)."""
    if value.shape[0] != 2:
        raise ConfigError(f"{key}: expected the two-class matching head, got shape {tuple(value.shape)}")
    name = key[len(_ITM):]
    folded = (value[1] - value[0]).reshape(1, *value.shape[1:]) if name == "weight" else (value[1:] - value[:1])
    put(f"irm_head.{name}", folded, key, "aligned minus not-aligned logit")


def scheme_notes(scheme: MaskScheme) -> list[str]:
    """What a user of the imported weights should know for this pre-training scheme."""
    scheme = MaskScheme(scheme)
    notes = [
        "visual tokens: the official code samples 180 of the 256 grid cells at random in every forward pass, "
        "evaluation included; medvill samples only in pre-training (pretrain.visual_tokens_sampled) and reads "
        "all 256 in fine-tuning and evaluation",
    ]
    if scheme in (MaskScheme.S2S, MaskScheme.BI_S2S):
        notes.append("matching head: under the S2S mask the official head read CLS, which sees no report token "
                     "there; medvill's S2S matching reads SEP_L, so the imported head is a starting point")
    if scheme == MaskScheme.NON_CROSSING:
        notes.append("matching head: the official Non-cross head read the raw product of CLS and the text [CLS]; "
                     "medvill's multiplies their pooled states, so the imported head is a starting point")
    if scheme == MaskScheme.BAR:
        notes.append("padding: the official BAR mask let the visual rows attend to the [PAD] positions of a "
                     "batch; medvill never attends to padding")
    return notes
