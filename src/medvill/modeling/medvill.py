"""MedViLLModel: CNN visual tokens + WordPiece tokens in one BERT-style transformer.

Sequence (group V = CLS, the k visual tokens and SEP_V; group T = CLS_L, the report and
SEP_L; each group's indices are given by :class:`~medvill.modeling.masks.SequenceLayout`)::

    [CLS] v_1 .. v_k [SEP_V] ([CLS_L]) w_1 .. w_N [SEP_L] [PAD] ...

Embeddings (type 0 = visual segment, type 1 = text segment, as BERT's segments A/B):

* CLS:      word[CLS]  + pos[0]     + type[0]
* v_i:      proj(f_i)  + loc[grid_i] + type[0]    (grid_i = the token's index in the h x w map)
* SEP_V:    word[SEP]  + pos[1]     + type[0]
* CLS_L:    word[CLS]  + pos[0]     + type[1]     (Non-crossing only)
* w_j:      word[w_j]  + pos[2 + j] + type[1]     (j = 0 .. N-1; SEP_L is the last w)

followed by BERT's embedding LayerNorm and dropout.  Text positions never depend on k or
on the scheme, so a model pre-trained with one scheme fine-tunes with another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import MaskScheme, ModelConfig
from .dropout import Dropout
from .encoder import BertEncoder, BertPooler, KVCache, init_bert_weights
from .masks import SequenceLayout, build_attention_mask, scheme_mask_mod, summary_indices, uses_cls_l
from .pretrained import PreTrainedModel, register
from .visual import VisualEncoder, sample_visual_tokens

VISUAL_TYPE = 0
TEXT_TYPE = 1
TEXT_POSITION_OFFSET = 2  # pos[0] = CLS / CLS_L, pos[1] = SEP_V, w_j at pos[2 + j]


class MedViLLEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig, visual_channels: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.visual_projection = nn.Linear(visual_channels, d)
        self.visual_location_embeddings = nn.Embedding(cfg.num_visual_tokens, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def _special(self, token_id: int, position: int, type_id: int, batch: int) -> torch.Tensor:
        dev = self.word_embeddings.weight.device
        idx = lambda v: torch.tensor([v], device=dev)  # noqa: E731
        e = self.word_embeddings(idx(token_id)) + self.position_embeddings(idx(position))
        e = e + self.token_type_embeddings(idx(type_id))
        return e[None].expand(batch, 1, -1)  # (B, 1, D)

    def visual(self, features: torch.Tensor, grid_index: torch.Tensor) -> torch.Tensor:
        """(B, k, C) features + (B, k) grid indices -> (B, k, D), before LayerNorm."""
        vis_type = self.token_type_embeddings.weight[VISUAL_TYPE]
        return self.visual_projection(features) + self.visual_location_embeddings(grid_index) + vis_type

    def text(self, text_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, D), before LayerNorm; ``positions`` are text indices j (default 0..T-1)."""
        if positions is None:
            positions = torch.arange(text_ids.shape[1], device=text_ids.device)[None]
        pos = self.position_embeddings(positions + TEXT_POSITION_OFFSET)
        return self.word_embeddings(text_ids) + pos + self.token_type_embeddings.weight[TEXT_TYPE]

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(x))

    def forward(
        self, features: torch.Tensor, grid_index: torch.Tensor, text_ids: torch.Tensor, cls_l: bool
    ) -> torch.Tensor:
        b = features.shape[0]
        parts = [
            self._special(self.cfg.cls_token_id, 0, VISUAL_TYPE, b),
            self.visual(features, grid_index),
            self._special(self.cfg.sep_token_id, 1, VISUAL_TYPE, b),
        ]
        if cls_l:
            parts.append(self._special(self.cfg.cls_token_id, 0, TEXT_TYPE, b))
        parts.append(self.text(text_ids))
        return self.finish(torch.cat(parts, dim=1))  # (B, S, D)


@dataclass
class MedViLLOutput:
    last_hidden_state: torch.Tensor  # (B, S, D)
    layout: SequenceLayout
    attention_mask: torch.Tensor  # (B, S, S) bool
    visual_index: torch.Tensor  # (B, k) grid index of each visual token
    scheme: MaskScheme
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    past_key_values: tuple[KVCache, ...] | None = None


@register
class MedViLLModel(PreTrainedModel):
    """The base model: backbone, embeddings, encoder and BERT pooler; no task head."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True):
        super().__init__(config)
        config.validate()
        self.visual = VisualEncoder(config, load_pretrained=load_pretrained_backbone)
        self.embeddings = MedViLLEmbeddings(config, self.visual.out_channels)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        for module in (self.embeddings, self.encoder, self.pooler):
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> CNN features (B, K, C).  Cache these to score one image against
        many reports without repeating the CNN."""
        return self.visual(images)

    def forward(
        self,
        text_ids: torch.Tensor,  # (B, T) report tokens + SEP_L, PAD after
        text_valid: torch.Tensor,  # (B, T) bool
        scheme: MaskScheme,
        images: torch.Tensor | None = None,  # (B, 3, H, W)
        visual_features: torch.Tensor | None = None,  # (B, K, C) from encode_image
        num_visual_sampled: int | None = None,  # k of K, random per example (pre-training)
        generator: torch.Generator | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        use_cache: bool = False,
    ) -> MedViLLOutput:
        scheme = MaskScheme(scheme)
        if visual_features is None:
            if images is None:
                raise ValueError("pass images or visual_features")
            visual_features = self.encode_image(images)
        b, big_k, _ = visual_features.shape
        if num_visual_sampled is not None and num_visual_sampled < big_k:
            feats, grid = sample_visual_tokens(visual_features, num_visual_sampled, generator)
        else:
            feats = visual_features
            grid = torch.arange(big_k, device=feats.device)[None].expand(b, -1)
        cls_l = uses_cls_l(scheme)
        layout = SequenceLayout(num_visual=feats.shape[1], text_len=text_ids.shape[1], cls_l=cls_l)
        mask = build_attention_mask(scheme, layout, text_valid)
        hidden = self.embeddings(feats, grid, text_ids, cls_l)
        mask_mod = None  # FlexAttention builds its block mask from the same index function
        if self.config.attn_implementation == "flex" and not output_attentions:
            mask_mod = scheme_mask_mod(scheme, layout, text_valid, pad_rows_attend_self=True)
        enc = self.encoder(
            hidden,
            mask,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            mask_mod=mask_mod,
        )
        return MedViLLOutput(
            last_hidden_state=enc.last_hidden_state,
            layout=layout,
            attention_mask=mask,
            visual_index=grid,
            scheme=scheme,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
            past_key_values=enc.past_key_values,
        )

    def summary(self, out: MedViLLOutput, text_valid: torch.Tensor) -> torch.Tensor:
        """Pooled pair summary (B, D) from the token(s) that see both modalities under the
        output's scheme (see :func:`summary_indices`); Non-crossing multiplies the pooled
        CLS and CLS_L so that a linear head can score their agreement."""
        rows = torch.arange(out.last_hidden_state.shape[0], device=text_valid.device)
        indices = summary_indices(out.scheme, out.layout, text_valid)
        pooled = [self.pooler(out.last_hidden_state[rows, idx]) for idx in indices]
        result = pooled[0]
        for p in pooled[1:]:
            result = result * p
        return result
