"""A BERT-compatible transformer encoder that takes boolean ``(B, S, S)`` masks.

Parameter names match Hugging Face's ``BertModel`` (``encoder.layer.N.attention.self.query``
...), so a BERT checkpoint's ``model.safetensors`` loads by name.  We own this module
instead of importing ``transformers`` because its BERT treats boolean 4-D masks as
additive 0/1 values with eager attention (silently wrong), and because a key/value cache
for S2S decoding is simple here.

Attention kernels (``model.attn_implementation``; all give the same result to float
tolerance, tested):

* ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention`` with the mask as an
  additive float mask made once per call.  Training on the CPU with attention-probability
  dropout takes the explicit softmax path instead, with :mod:`medvill.modeling.dropout`'s mask
  (torch's CPU SDPA would take its unfused math path there anyway and draw its mask with the
  much slower ``bernoulli_``).
* ``eager``: the explicit softmax path (always used when attention probabilities are
  requested, e.g. for attention maps).
* ``flex``: FlexAttention (``torch.nn.attention.flex_attention``, compiled with
  ``torch.compile``) with a ``BlockMask`` built from the scheme's index function
  (:func:`~medvill.modeling.masks.scheme_mask_mod`) or, for hand-made masks, from the dense
  mask itself; key/value blocks that a query block may not see at all (the T columns of V
  rows under S2S and Non-crossing, the upper causal triangle of T->T) are skipped.  It has
  no attention-probability dropout: training with ``attention_probs_dropout_prob > 0`` is an
  error.  Cached decoding steps (a KV cache, one or two queries) use SDPA: a block mask has
  nothing to skip there.  Training needs CUDA: FlexAttention has no CPU backward (torch
  2.14), so CPU training with ``flex`` is an error; CPU inference works (the compiled kernel
  needs a C++ compiler and compiles for tens of seconds per new shape).  Padding the text to
  a fixed length avoids recompiling for every batch length.
  ``FLEX_COMPILE = False`` runs FlexAttention's unfused reference implementation instead
  (slow; for checking).

Key/value caches for decoding: ``past_key_values`` is either a tuple of ``(keys, values)`` per
layer, which each call extends by concatenation (a new tensor every step), or a
:class:`DecodingCache`, preallocated for the whole report and written in place (what
:mod:`medvill.generation` uses: no per-step copy of the cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import ModelConfig
from .dropout import Dropout, dropout
from .masks import MaskMod

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "gelu_new": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU
}

KVCache = tuple[torch.Tensor, torch.Tensor]


class DecodingCache:
    """Keys and values of every layer for incremental decoding, preallocated and written in place.

    ``keys[i]`` and ``values[i]`` are ``(R_max, H, capacity, Dh)``; rows ``[0, rows)`` and
    positions ``[0, length)`` hold the cached tokens.  Passed as ``past_key_values``, each layer
    writes its ``n`` new keys and values at ``[length, length + n)`` and attends the view
    ``[0, length + n)``: nothing is concatenated or copied per step.  The caller then keeps the
    first ``m`` new positions with :meth:`advance` (a position not kept, e.g. a [MASK] query, is
    overwritten by the next step).  :meth:`gather` reorders, drops or repeats rows (beam search,
    finished reports); positions before ``start`` that are already right are not copied.
    """

    def __init__(self, past: Sequence[KVCache], capacity: int):
        r, h, length, dh = past[0][0].shape
        if capacity < length:
            raise ValueError(f"capacity {capacity} < the {length} cached positions")
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for k, v in past:
            kb, vb = k.new_empty(r, h, capacity, dh), v.new_empty(r, h, capacity, dh)
            kb[:, :, :length] = k
            vb[:, :, :length] = v
            self.keys.append(kb)
            self.values.append(vb)
        self.rows, self.length, self.capacity = r, length, capacity

    def layer(self, i: int) -> CacheLayer:
        return CacheLayer(self, i)

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """Store layer ``i``'s new ``(rows, H, n, Dh)`` keys/values after the cached ones; returns
        the views of all ``length + n`` positions for attention."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"decoding cache full: {end} positions, capacity {self.capacity}")
        kb, vb = self.keys[i][: self.rows], self.values[i][: self.rows]
        kb[:, :, self.length:end] = k
        vb[:, :, self.length:end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def advance(self, n: int) -> None:
        """Keep ``n`` of the positions the last step wrote."""
        self.length += n

    def gather(self, rows: torch.Tensor, start: int = 0) -> None:
        """Row ``j`` becomes old row ``rows[j]``; positions ``[0, start)`` are left as they are
        (the caller knows they already match, e.g. the image prefix of beams of one image)."""
        n = rows.numel()
        if n > self.keys[0].shape[0]:  # more rows than allocated (beams): new buffers
            for bufs in (self.keys, self.values):
                for i, b in enumerate(bufs):
                    new = b.new_empty(n, *b.shape[1:])
                    new[:, :, : self.length] = b[rows, :, : self.length]
                    bufs[i] = new
        elif start < self.length:  # only the rows that change are copied
            dst = (rows != torch.arange(n, device=rows.device)).nonzero()[:, 0]
            if dst.numel():
                src = rows[dst]
                for bufs in (self.keys, self.values):
                    for b in bufs:
                        b[dst, :, start : self.length] = b[src, :, start : self.length]
        self.rows = n

    def nbytes(self, positions: int | None = None) -> int:
        """Bytes of the keys and values of ``positions`` (default: the cached ones) over all rows and layers."""
        b = self.keys[0]
        per_position = self.rows * b.shape[1] * b.shape[3] * b.element_size()
        return 2 * len(self.keys) * per_position * (self.length if positions is None else positions)


@dataclass
class CacheLayer:
    """One layer's view of a :class:`DecodingCache` (what that layer's attention writes to)."""

    cache: DecodingCache
    index: int

    def write(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        return self.cache.write(self.index, k, v)

FLEX_COMPILE = True  # False: FlexAttention's unfused reference implementation (checking only)
_compiled_flex: Callable[..., torch.Tensor] | None = None


def _flex_attention() -> Callable[..., torch.Tensor]:
    """``flex_attention``, compiled once per process (the fused kernel) unless ``FLEX_COMPILE`` is off."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not FLEX_COMPILE:
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def flex_block_mask(mask: torch.Tensor, mask_mod: MaskMod | None = None) -> BlockMask:
    """A FlexAttention ``BlockMask`` for the boolean mask ``(B, 1, S, S_total)``.

    ``mask_mod``: the same mask as an index function (``scheme_mask_mod(...,
    pad_rows_attend_self=True)``); without it the dense mask is looked up.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    b, _, s, t = mask.shape
    if mask_mod is None:
        dense = mask[:, 0]

        def mask_mod(bi: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return dense[bi, q, kv]

    # on CUDA the mask is evaluated by a compiled kernel (eager vmap is slow there: BENCHMARKS.md)
    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=s, KV_LEN=t, device=mask.device,
                             _compile=mask.device.type == "cuda")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob
        # set by medvill.modeling.weights.fuse_qkv (inference formats): one product for the three
        # projections, their weights concatenated (query, key, value); None = the three layers
        self.qkv: nn.Module | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (B, H, S, Dh)
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,  # (B, S, D)
        mask: torch.Tensor,  # (B, 1, S, S_total) bool
        past: KVCache | CacheLayer | None = None,
        output_attentions: bool = False,
        impl: str = "sdpa",  # sdpa | eager | flex (output_attentions forces eager)
        block_mask: BlockMask | None = None,  # FlexAttention BlockMask for impl="flex"
        bias: torch.Tensor | None = None,  # the mask as SDPA's additive float mask (0 / -inf), made once per call
    ) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
        if self.qkv is not None:
            q, k, v = (self._split(t) for t in self.qkv(hidden).chunk(3, dim=-1))
        else:
            q = self._split(self.query(hidden))
            k = self._split(self.key(hidden))
            v = self._split(self.value(hidden))
        if isinstance(past, CacheLayer):  # preallocated: written in place
            k, v = past.write(k, v)
        elif past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.dropout_p if self.training else 0.0
        probs = None
        # with attention-probability dropout torch's CPU SDPA takes its unfused math path and draws
        # the mask with bernoulli_: the same math here, with medvill's cheaper CPU dropout mask
        if output_attentions or impl == "eager" or (dropout_p > 0 and q.device.type == "cpu" and impl == "sdpa"):
            scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-1, -2)  # (B, H, S, S_total); q is the smaller
            if bias is not None:  # in place: no copy of the scores, and nothing to do for it in backward
                scores.add_(bias)
            else:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            ctx = dropout(probs, dropout_p, self.training) @ v
            if not output_attentions:
                probs = None
        elif impl == "flex":
            if dropout_p > 0:
                raise RuntimeError(
                    "attn_implementation='flex' has no attention-probability dropout; train with "
                    "model.attention_probs_dropout_prob=0 or use attn_implementation='sdpa'"
                )
            if q.device.type == "cpu" and q.requires_grad:
                raise RuntimeError(
                    f"attn_implementation='flex' cannot train on the CPU: FlexAttention has no CPU backward "
                    f"in torch {torch.__version__}; use model.attn_implementation=sdpa there (flex runs CPU "
                    "inference, and training on CUDA)"
                )
            ctx = _flex_attention()(q, k, v, block_mask=block_mask)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if bias is None else bias,
                                                 dropout_p=dropout_p)
        b, _, s, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return ctx, (k, v), probs


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        past: KVCache | CacheLayer | None = None,
        output_attentions: bool = False,
        impl: str = "sdpa",
        block_mask: BlockMask | None = None,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
        ctx, kv, probs = self.attention.self(hidden, mask, past, output_attentions, impl, block_mask, bias)
        attn_out = self.attention.output(ctx, hidden)
        out = self.output(self.intermediate(attn_out), attn_out)
        return out, kv, probs


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, S, D)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer
    attentions: tuple[torch.Tensor, ...] | None = None  # each (B, H, S, S_total)
    past_key_values: tuple[KVCache, ...] | None = None


class BertEncoder(nn.Module):
    # set by the training loop (train.gradient_checkpointing): while training, each layer's
    # activations are recomputed in the backward pass instead of being kept
    gradient_checkpointing: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg  # attn_implementation is read at every call (switchable)
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(
        self,
        hidden: torch.Tensor,  # (B, S, D)
        mask: torch.Tensor,  # (B, S, S_total) or (B, 1, S, S_total) bool
        past_key_values: tuple[KVCache, ...] | DecodingCache | None = None,  # a DecodingCache is written in place
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        mask_mod: MaskMod | None = None,  # the mask as an index function (flex only)
    ) -> EncoderOutput:
        if mask.dtype != torch.bool:
            raise TypeError("the attention mask must be boolean (True = may attend)")
        if mask.dim() == 3:
            mask = mask[:, None]
        mask = ensure_nonempty_rows(mask)
        impl = self.config.attn_implementation
        if impl not in ("sdpa", "eager", "flex"):
            raise ValueError(f"model.attn_implementation: {impl!r} is not one of sdpa, eager, flex")
        if output_attentions:
            impl = "eager"
        elif impl == "flex" and past_key_values is not None:
            impl = "sdpa"  # cached decoding steps: a block mask has nothing to skip
        block_mask = flex_block_mask(mask, mask_mod) if impl == "flex" else None
        # SDPA turns a boolean mask into an additive one in every layer: once here instead (the same
        # 0 / -inf values, so the same result; a decoding step has 12 layers and 2 queries).  The CPU
        # training path with attention dropout adds it to the scores too.  Not under autocast, where
        # the queries' dtype is the autocast one.
        bias = None
        if impl == "sdpa" and not torch.is_autocast_enabled(hidden.device.type):
            bias = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        all_hidden = [hidden] if output_hidden_states else None
        all_attn: list[torch.Tensor] | None = [] if output_attentions else None
        cache: list[KVCache] | None = [] if use_cache else None
        for i, layer in enumerate(self.layer):
            past: KVCache | CacheLayer | None = None
            if isinstance(past_key_values, DecodingCache):
                past = past_key_values.layer(i)
            elif past_key_values is not None:
                past = past_key_values[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden, kv, probs = torch.utils.checkpoint.checkpoint(
                    layer, hidden, mask, past, output_attentions, impl, block_mask, bias, use_reentrant=False)
            else:
                hidden, kv, probs = layer(hidden, mask, past, output_attentions, impl, block_mask, bias)
            if cache is not None:
                cache.append(kv)
            if all_hidden is not None:
                all_hidden.append(hidden)
            if all_attn is not None:
                all_attn.append(probs)
        return EncoderOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
            past_key_values=tuple(cache) if cache is not None else None,
        )


def ensure_nonempty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let a query row that may attend nothing (a PAD row) attend its own position.

    Softmax over an all-masked row is undefined (NaN in SDPA); a PAD row attending
    itself is harmless because no real row ever attends a PAD column.  Only square
    (no cache) masks have a diagonal; cached rows always see themselves already.
    """
    empty = ~mask.any(dim=-1, keepdim=True)  # (B, 1, S, 1)
    if not bool(empty.any()):
        return mask
    s, t = mask.shape[-2:]
    eye = torch.zeros(s, t, dtype=torch.bool, device=mask.device)
    eye[torch.arange(s), torch.arange(t - s, t)] = True
    return mask | (empty & eye)


class BertPooler(nn.Module):
    """BERT's pooler: dense + tanh on a summary token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) for linear and embedding weights."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
