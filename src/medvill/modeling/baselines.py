"""The paper's two comparison models that are not MedViLL: CNN & Transformer, and TieNet.

**CNN & Transformer** (:class:`CNNTransformerModel`): the image goes through the CNN only
(global-average-pooled backbone features, projected to the hidden size), the report or
question through a text-only BERT-style transformer of MedViLL's size only (BERT's
single-segment layout ``[CLS] w_1 .. w_N [SEP]``; no visual tokens, no cross-attention).
The two pooled vectors (text: BERT pooler on CLS; image: projection + tanh) are concatenated
and combined by one dense + tanh layer (``fusion``) into a hidden-size summary that feeds
the same task heads as MedViLL (:mod:`medvill.modeling.heads`, ``trunk="cnn_transformer"``).
The fusion layer is what lets a linear head (retrieval) score an image-report agreement at
all: a linear function of ``[t; v]`` is a sum of a text score and an image score and cannot
tell a matched pair from a mismatched one.  No pre-training; ``init_text`` may initialise
the text side from a BERT checkpoint (parameter names ``embeddings.*``, ``encoder.*``,
``pooler.*`` are BERT's).  Classification, retrieval and VQA; it does not generate.

**TieNet** (:class:`TieNet`; Wang et al., "TieNet: Text-Image Embedding Network for Common
Thorax Disease Classification and Reporting in Chest X-rays", CVPR 2018):

* the backbone's last feature map ``V`` (B, K, C);
* an LSTM decoder with soft spatial attention (Show, Attend and Tell): at step t the
  attention ``alpha_t = softmax_K(w^T tanh(W_v V + W_h h_{t-1}))``, the context
  ``z_t = sum_k alpha_tk v_k``, the LSTM reads ``[E y_{t-1}; z_t]``, and ``h_t`` predicts
  ``y_t`` (initial state from the mean feature; the first input is [CLS] as BOS, the report
  ends with [SEP]);
* an attention-encoded text embedding (AETE): ``G = softmax_T(W_s2 tanh(W_s1 H^T))`` with
  ``r`` hops over the hidden states ``H`` (padding masked), ``M = G H`` and the text
  embedding ``max_r M``;
* a saliency-weighted global average pooling (SW-GAP) of ``V``: the word-level attention
  maps ``alpha_t`` averaged with weights ``max_r G_rt`` (normalised to sum to one), so the
  pooled image vector is ``sum_k s_k v_k`` with ``sum_k s_k = 1``;
* ``[AETE; SW-GAP]`` -> a linear layer -> one logit per observation;
* loss ``alpha * BCE + (1 - alpha) * CE`` (classification and generation, token mean).

For classification the report is an input and is read teacher-forced, as MedViLL reads it.
For generation, decoding is free-running (greedy or beam through
:func:`medvill.generation.generate`, which uses :meth:`TieNet.make_decoder`); perplexity is
the teacher-forced likelihood of the reference reports (:meth:`TieNet.reference_nll`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig
from .dropout import Dropout
from .encoder import BertEncoder, BertPooler, init_bert_weights
from .pretrained import PreTrainedModel, register
from .visual import VisualEncoder

BASELINE_TASKS: dict[str, tuple[str, ...]] = {
    "cnn-transformer": ("classification", "retrieval", "vqa"),
    "tienet": ("classification", "generation"),
}
BASELINE_NAMES = {"cnn-transformer": "CNN & Transformer", "tienet": "TieNet"}


# ----------------------------------------------------------------------------- CNN & Transformer


class TextEmbeddings(nn.Module):
    """BERT's embeddings of one segment: ``word[w_j] + pos[j] + type[0]``, LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, D)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


@dataclass
class CNNTransformerOutput:
    text_pooled: torch.Tensor  # (B, D) BERT pooler on the text CLS; depends on the text only
    image_pooled: torch.Tensor  # (B, D) tanh(proj(GAP(CNN))); depends on the image only
    last_hidden_state: torch.Tensor  # (B, 1 + T, D) text transformer: [CLS] w_1 .. w_N [SEP]
    attention_mask: torch.Tensor  # (B, 1 + T, 1 + T) bool


@register
class CNNTransformerModel(PreTrainedModel):
    """The CNN & Transformer trunk: two separate encoders, late fusion (see the module docstring).

    It has :class:`MedViLLModel`'s interface (``encode_image``, ``forward``, ``summary``), so
    the task models of :mod:`medvill.modeling.heads` use it as their trunk unchanged.
    """

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True):
        super().__init__(config)
        config.validate()
        d = config.hidden_size
        self.visual = VisualEncoder(config, load_pretrained=load_pretrained_backbone)
        self.image_projection = nn.Linear(self.visual.out_channels, d)
        self.embeddings = TextEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.fusion = nn.Linear(2 * d, d)
        for module in (self.image_projection, self.embeddings, self.encoder, self.pooler, self.fusion):
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> global-average-pooled CNN features (B, 1, C) (cacheable, as MedViLL's)."""
        return self.visual(images).mean(dim=1, keepdim=True)

    def forward(
        self,
        text_ids: torch.Tensor,  # (B, T) tokens + [SEP], PAD after
        text_valid: torch.Tensor,  # (B, T) bool
        scheme: object = None,  # accepted for interface compatibility: there is no joint sequence to mask
        images: torch.Tensor | None = None,  # (B, 3, H, W)
        visual_features: torch.Tensor | None = None,  # (B, K, C) from encode_image (any K: averaged)
    ) -> CNNTransformerOutput:
        if visual_features is None:
            if images is None:
                raise ValueError("pass images or visual_features")
            visual_features = self.encode_image(images)
        if text_ids.shape != text_valid.shape:
            raise ValueError(f"text_ids {tuple(text_ids.shape)} and text_valid {tuple(text_valid.shape)} differ")
        image_pooled = torch.tanh(self.image_projection(visual_features.mean(dim=1)))  # (B, D)
        b = text_ids.shape[0]
        cls = torch.full((b, 1), self.config.cls_token_id, dtype=text_ids.dtype, device=text_ids.device)
        ids = torch.cat([cls, text_ids], dim=1)  # (B, 1 + T)
        valid = torch.cat([torch.ones_like(cls, dtype=torch.bool), text_valid.bool()], dim=1)
        mask = valid[:, None, :] & valid[:, :, None]  # (B, S, S): text attends text, PAD nowhere
        hidden = self.encoder(self.embeddings(ids), mask).last_hidden_state  # (B, S, D)
        return CNNTransformerOutput(text_pooled=self.pooler(hidden[:, 0]), image_pooled=image_pooled,
                                    last_hidden_state=hidden, attention_mask=mask)

    def summary(self, out: CNNTransformerOutput, text_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The pair summary (B, D): ``tanh(fusion([text_pooled; image_pooled]))``."""
        return torch.tanh(self.fusion(torch.cat([out.text_pooled, out.image_pooled], dim=-1)))


# ----------------------------------------------------------------------------- TieNet


class SpatialAttention(nn.Module):
    """Show-Attend-Tell soft attention over the K feature-map cells."""

    def __init__(self, feature_size: int, hidden_size: int, attention_size: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_size, attention_size)
        self.hidden_proj = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)

    def keys(self, features: torch.Tensor) -> torch.Tensor:  # (B, K, C) -> (B, K, A), once per image
        return self.feature_proj(features)

    def forward(self, keys: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, K, A) keys + (B, D) previous hidden state -> attention weights (B, K), summing to 1."""
        return self.score(torch.tanh(keys + self.hidden_proj(hidden)[:, None])).squeeze(-1).softmax(dim=-1)


class AttentionPooling(nn.Module):
    """The attention-encoded text embedding's ``r``-hop attention over time steps."""

    def __init__(self, hidden_size: int, attention_size: int, hops: int):
        super().__init__()
        self.W_s1 = nn.Linear(hidden_size, attention_size, bias=False)
        self.W_s2 = nn.Linear(attention_size, hops, bias=False)

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, D) states + (B, T) bool -> G (B, r, T): each hop sums to 1 over the valid steps."""
        scores = self.W_s2(torch.tanh(self.W_s1(hidden))).transpose(1, 2)  # (B, r, T)
        return scores.masked_fill(~valid[:, None, :], float("-inf")).softmax(dim=-1)


@dataclass
class TieNetOutput:
    logits: torch.Tensor  # (B, L) one logit per observation
    lm_logits: torch.Tensor  # (B, T, V) next-token logits (step t predicts text_ids[:, t])
    token_nll: torch.Tensor  # (B, T) cross-entropy of each reference token, 0 at PAD
    spatial_attention: torch.Tensor  # (B, T, K) alpha_t, each row sums to 1
    text_attention: torch.Tensor  # (B, r, T) G, each hop sums to 1 over the valid steps
    saliency: torch.Tensor  # (B, K) SW-GAP weights, sum to 1
    text_embedding: torch.Tensor  # (B, D) AETE
    image_embedding: torch.Tensor  # (B, C) SW-GAP
    generation_loss: torch.Tensor  # () token-mean cross-entropy of the reference reports
    loss: torch.Tensor | None = None  # alpha * classification + (1 - alpha) * generation (with targets)
    classification_loss: torch.Tensor | None = None


@register
class TieNet(PreTrainedModel):
    """CNN-RNN with text-image attention for classification and report generation (module docstring)."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, num_labels: int = 14,
                 hops: int = 5, loss_weight: float = 0.85):
        super().__init__(config)
        config.validate()
        if hops < 1:
            raise ConfigError(f"baseline.tienet_hops must be >= 1, got {hops}")
        if not 0.0 <= loss_weight <= 1.0:
            raise ConfigError(f"baseline.tienet_loss_weight must lie in [0, 1], got {loss_weight}")
        self.num_labels, self.hops, self.loss_weight = num_labels, hops, loss_weight
        d = config.hidden_size
        self.visual = VisualEncoder(config, load_pretrained=load_pretrained_backbone)
        c = self.visual.out_channels
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.init_h = nn.Linear(c, d)
        self.init_c = nn.Linear(c, d)
        self.attention = SpatialAttention(c, d, d)
        self.lstm = nn.LSTMCell(d + c, d)
        self.lm_head = nn.Linear(d, config.vocab_size)
        self.text_attention = AttentionPooling(d, d, hops)
        self.classifier = nn.Linear(d + c, num_labels)
        self.dropout = Dropout(config.hidden_dropout_prob)
        for module in (self.word_embeddings, self.init_h, self.init_c, self.attention, self.lm_head,
                       self.text_attention, self.classifier):
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        return {"num_labels": self.num_labels, "hops": self.hops, "loss_weight": self.loss_weight}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the feature map as K cells (B, K, C)."""
        return self.visual(images)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = features.mean(dim=1)  # (B, C)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(self, token: torch.Tensor, features: torch.Tensor, keys: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Read one token (B,) with attention from the previous state: ``((h, c), alpha (B, K))``."""
        return self._step(self.dropout(self.word_embeddings(token)), features, keys, state)

    def _step(self, embedded: torch.Tensor, features: torch.Tensor, keys: torch.Tensor,
              state: tuple[torch.Tensor, torch.Tensor]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        alpha = self.attention(keys, state[0])  # (B, K) from h_{t-1}
        context = torch.einsum("bk,bkc->bc", alpha, features)  # (B, C)
        return self.lstm(torch.cat([embedded, context], dim=-1), state), alpha

    def forward(
        self,
        text_ids: torch.Tensor,  # (B, T) report tokens + [SEP], PAD after
        text_valid: torch.Tensor,  # (B, T) bool
        images: torch.Tensor | None = None,  # (B, 3, H, W)
        visual_features: torch.Tensor | None = None,  # (B, K, C) from encode_image
        targets: torch.Tensor | None = None,  # (B, L) 0/1 observations: adds the joint loss
    ) -> TieNetOutput:
        if visual_features is None:
            if images is None:
                raise ValueError("pass images or visual_features")
            visual_features = self.encode_image(images)
        if text_ids.shape != text_valid.shape:
            raise ValueError(f"text_ids {tuple(text_ids.shape)} and text_valid {tuple(text_valid.shape)} differ")
        feats = visual_features
        valid = text_valid.bool()
        b, t = text_ids.shape
        bos = torch.full((b, 1), self.config.cls_token_id, dtype=text_ids.dtype, device=text_ids.device)
        inputs = torch.cat([bos, text_ids[:, :-1]], dim=1)  # (B, T) teacher forcing: BOS, w_1 .. w_N
        keys = self.attention.keys(feats)
        state = self.init_state(feats)
        embedded = self.dropout(self.word_embeddings(inputs))  # (B, T, D), one lookup (and one backward)
        hs, alphas = [], []
        for i in range(t):
            state, alpha = self._step(embedded[:, i], feats, keys, state)
            hs.append(state[0])
            alphas.append(alpha)
        hidden = torch.stack(hs, dim=1)  # (B, T, D)
        spatial = torch.stack(alphas, dim=1)  # (B, T, K)
        lm_logits = self.lm_head(self.dropout(hidden))  # (B, T, V)
        token_nll = F.cross_entropy(lm_logits.float().transpose(1, 2), text_ids, reduction="none") * valid
        g = self.text_attention(hidden, valid)  # (B, r, T)
        text_emb = (g @ hidden).max(dim=1).values  # (B, D)
        word_weight = g.max(dim=1).values  # (B, T), 0 at PAD
        word_weight = word_weight / word_weight.sum(dim=1, keepdim=True)
        saliency = torch.einsum("bt,btk->bk", word_weight, spatial)  # (B, K)
        image_emb = torch.einsum("bk,bkc->bc", saliency, feats)  # (B, C)
        logits = self.classifier(self.dropout(torch.cat([text_emb, image_emb], dim=-1)))
        gen_loss = token_nll.sum() / valid.sum().clamp(min=1)
        out = TieNetOutput(logits=logits, lm_logits=lm_logits, token_nll=token_nll, spatial_attention=spatial,
                           text_attention=g, saliency=saliency, text_embedding=text_emb, image_embedding=image_emb,
                           generation_loss=gen_loss)
        if targets is not None:
            out.classification_loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
            out.loss = self.loss_weight * out.classification_loss + (1.0 - self.loss_weight) * gen_loss
        return out

    @torch.no_grad()
    def reference_nll(self, images: torch.Tensor, text_ids: torch.Tensor,
                      text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced NLL of reference reports: ``(nll_sum (B,), n_tokens (B,))``, [SEP] included
        (the same token count as MedViLL's :func:`medvill.generation.reference_nll`)."""
        out = self(text_ids, text_valid, images=images)
        return out.token_nll.sum(dim=1), text_valid.sum(dim=1)

    def make_decoder(self, images: torch.Tensor, cached: bool = True) -> TieNetDecoder:
        return TieNetDecoder(self, images, cached)


class TieNetDecoder:
    """Free-running step decoder for :mod:`medvill.generation` (greedy and beam).

    ``cached``: the LSTM state after the tokens generated so far is kept and each step reads
    only the newest token; otherwise every step re-reads [BOS] and all generated tokens from
    the initial state (the reference; both give the same tokens, tested).  Only the model's
    own tokens are ever fed back.
    """

    def __init__(self, model: TieNet, images: torch.Tensor, cached: bool):
        self.model = model
        self.cached = cached
        self.features = model.encode_image(images)  # (B, K, C), once
        self.keys = model.attention.keys(self.features)
        self.state = model.init_state(self.features)
        self.bos = model.config.cls_token_id

    def reorder(self, rows: torch.Tensor) -> None:
        self.features, self.keys = self.features[rows], self.keys[rows]
        self.state = (self.state[0][rows], self.state[1][rows])

    def next_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (R, t) generated so far -> log-probabilities (R, V) of token t."""
        r, t = tokens.shape
        bos = torch.full((r, 1), self.bos, dtype=torch.long, device=tokens.device)
        if self.cached:
            newest = tokens[:, -1] if t else bos[:, 0]
            self.state, _ = self.model.step(newest, self.features, self.keys, self.state)
            hidden = self.state[0]
        else:
            state = self.model.init_state(self.features)
            for token in torch.cat([bos, tokens], dim=1).unbind(dim=1):
                state, _ = self.model.step(token, self.features, self.keys, state)
            hidden = state[0]
        return self.model.lm_head(hidden).float().log_softmax(-1)
