"""Self-attention masks of the five MedViLL schemes, as pure functions.

The joint sequence is laid out as::

    [CLS] v_1 .. v_k [SEP_V] ([CLS_L]) w_1 .. w_N [SEP_L] [PAD] ...
    \\_____________ V ______/ \\_____________ T _____________/

V = {CLS, visual tokens, SEP_V}; T = {CLS_L (Non-crossing only), report tokens, SEP_L}.
A mask is a boolean tensor ``(B, S, S)``: ``mask[b, q, k]`` is True when query row ``q``
may attend key column ``k``.  PAD columns are always False, and so are PAD rows (a padded
query has nothing to look at; the encoder lets such rows attend themselves only, so their
garbage never reaches a real token).

| scheme        | V rows see            | T rows see                                   |
|---------------|-----------------------|----------------------------------------------|
| Bi            | V and T               | V and T                                      |
| S2S           | V only                | V and T at or before themselves (causal)     |
| BAR           | V and T               | V and T at or before themselves (causal)     |
| Non-crossing  | V only                | T only (CLS_L summarises the report)         |
| Bi&S2S        | per batch: S2S with probability ``s2s_prob`` (0.75), otherwise Bi    |

BAR (paper eq. 14) opens every block except T->T, which is causal.  Because V rows see the
whole report, a later text token *can* reach an earlier one through a visual token from the
second layer on (layer 1: v_i reads w_late; layer 2: w_early reads v_i).  That is the
paper's definition and it is kept; generation is fine-tuned with S2S, as in the paper.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import MaskScheme


@dataclass(frozen=True)
class SequenceLayout:
    """Where each group sits in the joint sequence.

    ``num_visual``: the k visual tokens; ``text_len``: padded length of the text part
    (report tokens + SEP_L + PAD); ``cls_l``: whether a CLS_L token precedes the report.
    """

    num_visual: int
    text_len: int
    cls_l: bool = False

    @property
    def cls_index(self) -> int:
        return 0

    @property
    def sep_v_index(self) -> int:
        return self.num_visual + 1

    @property
    def num_v_group(self) -> int:
        """Size of V: CLS + k visual tokens + SEP_V."""
        return self.num_visual + 2

    @property
    def cls_l_index(self) -> int:
        if not self.cls_l:
            raise ValueError("this layout has no CLS_L token")
        return self.num_v_group

    @property
    def text_start(self) -> int:
        """Index of w_1."""
        return self.num_v_group + int(self.cls_l)

    @property
    def length(self) -> int:
        return self.text_start + self.text_len

    def visual_slice(self) -> slice:
        return slice(1, 1 + self.num_visual)

    def text_slice(self) -> slice:
        return slice(self.text_start, self.length)


def uses_cls_l(scheme: MaskScheme) -> bool:
    return scheme == MaskScheme.NON_CROSSING


def resolve_scheme(scheme: MaskScheme, s2s_prob: float = 0.75, rng: random.Random | None = None) -> MaskScheme:
    """Turn Bi&S2S into the concrete scheme for one mini-batch; other schemes pass through."""
    scheme = MaskScheme(scheme)
    if scheme != MaskScheme.BI_S2S:
        return scheme
    draw = (rng or random).random()
    return MaskScheme.S2S if draw < s2s_prob else MaskScheme.BI


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_scheme(scheme: MaskScheme, layout: SequenceLayout, text_valid: torch.Tensor) -> MaskScheme:
    scheme = MaskScheme(scheme)
    if scheme == MaskScheme.BI_S2S:
        raise ValueError("Bi&S2S is chosen per batch: call resolve_scheme() first")
    if uses_cls_l(scheme) != layout.cls_l:
        raise ValueError(f"scheme {scheme.value} {'needs' if uses_cls_l(scheme) else 'has no'} CLS_L token")
    if text_valid.shape[1] != layout.text_len:
        raise ValueError(f"text_valid has {text_valid.shape[1]} columns, layout expects {layout.text_len}")
    return scheme


def scheme_mask_mod(
    scheme: MaskScheme, layout: SequenceLayout, text_valid: torch.Tensor, pad_rows_attend_self: bool = False
) -> MaskMod:
    """The mask of a concrete scheme as an index function ``mod(b, h, q, kv) -> bool``.

    This is the single definition of every scheme: :func:`build_attention_mask` evaluates
    it on the whole ``(B, S, S)`` grid, and the FlexAttention path hands it to
    ``create_block_mask`` (which evaluates it per block and skips blocks where it is False
    everywhere).  Only tensor operations on the indices are used, so it works under
    ``torch.vmap`` / ``torch.compile`` and with broadcast index tensors.

    ``pad_rows_attend_self``: let a PAD query row attend its own position (the encoder's
    rule for rows that may attend nothing, :func:`~medvill.modeling.encoder.ensure_nonempty_rows`);
    every real row already attends itself under every scheme.

    Padding is read as one length per example (the text is left-aligned; anything else is
    an error), so a position's validity costs one lookup in a ``(B,)`` tensor: inside a
    FlexAttention kernel that took under half the time of looking up a ``(B, S)`` validity
    table (BENCHMARKS.md).
    """
    scheme = _check_scheme(scheme, layout, text_valid)
    nv = layout.num_v_group
    lengths = text_valid.long().sum(dim=1)  # (B,) real text tokens
    positions = torch.arange(text_valid.shape[1], device=text_valid.device)
    if not torch.equal(text_valid.bool(), positions[None] < lengths[:, None]):
        raise ValueError("text_valid must be left-aligned: each row's real tokens first, then padding")
    end = layout.text_start + lengths  # (B,) first PAD position of each example

    def mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        q_v, k_v = q < nv, kv < nv  # query / key in group V
        if scheme == MaskScheme.BI:
            allowed = kv >= 0  # every pair
        elif scheme == MaskScheme.S2S:  # V->V, T->V, T->T causal
            allowed = k_v | (~q_v & (kv <= q))
        elif scheme == MaskScheme.BAR:  # every block but T->T, which is causal
            allowed = q_v | k_v | (kv <= q)
        else:  # NON_CROSSING: V->V, T->T
            allowed = q_v == k_v
        last = end[b]
        q_valid = q < last
        keep = allowed & q_valid & (kv < last)
        if pad_rows_attend_self:
            keep = keep | (~q_valid & (q == kv))
        return keep

    return mod


def build_attention_mask(scheme: MaskScheme, layout: SequenceLayout, text_valid: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask ``(B, S, S)`` of a concrete scheme.

    ``text_valid``: ``(B, T)`` bool, True for report tokens and SEP_L, False for PAD; the
    text part must be left-aligned (padding at the end).  ``layout.cls_l`` must be True for
    Non-crossing and False otherwise.  The mask is :func:`scheme_mask_mod` evaluated on the
    whole grid.
    """
    mod = scheme_mask_mod(scheme, layout, text_valid)
    device = text_valid.device
    s = layout.length
    b = torch.arange(text_valid.shape[0], device=device)[:, None, None]
    idx = torch.arange(s, device=device)
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mod(b, zero, idx[None, :, None], idx[None, None, :])  # (B, S, S)


def summary_indices(scheme: MaskScheme, layout: SequenceLayout, text_valid: torch.Tensor) -> list[torch.Tensor]:
    """Positions of the tokens whose final states summarise the pair for matching (IRM).

    Under the active scheme the summary must see both modalities: CLS for Bi and BAR;
    SEP_L for S2S (CLS sees no text there; SEP_L sees every visual token and the whole
    report); CLS and CLS_L for Non-crossing (each sees one modality; the head combines
    them).  Returns a list of ``(B,)`` index tensors.
    """
    scheme = MaskScheme(scheme)
    b = text_valid.shape[0]
    device = text_valid.device
    cls = torch.zeros(b, dtype=torch.long, device=device)
    if scheme in (MaskScheme.BI, MaskScheme.BAR):
        return [cls]
    if scheme == MaskScheme.S2S:
        lengths = text_valid.long().sum(dim=1)
        return [layout.text_start + lengths - 1]  # SEP_L is the last real text token
    if scheme == MaskScheme.NON_CROSSING:
        return [cls, torch.full((b,), layout.cls_l_index, dtype=torch.long, device=device)]
    raise ValueError("Bi&S2S is chosen per batch: call resolve_scheme() first")


def pseudo_mask_attention(num_v_group: int, text_valid: torch.Tensor) -> torch.Tensor:
    """The S2S mask of a sequence with one [MASK] query per report position (UniLMv2's
    pseudo-masking), for scoring or training every report token in ONE pass.

    Layout: ``V`` (``num_v_group`` = CLS + visual tokens + SEP_V), then the N real report
    tokens ``w_0 .. w_{N-1}``, then N queries ``q_0 .. q_{N-1}`` ([MASK] at the position of
    ``w_t``).  Query ``q_t`` sees V, the real tokens before t and itself: exactly what the
    [MASK] appended after ``w_0 .. w_{t-1}`` sees in free-running decoding.  Real tokens see V
    and the real tokens up to themselves (S2S); V sees V; nothing sees a query but itself.
    PAD rows and columns are closed.  Returns ``(B, S, S)`` bool with ``S = num_v_group + 2N``.
    """
    b, n = text_valid.shape
    dev = text_valid.device
    nv = num_v_group
    s = nv + 2 * n
    valid = text_valid.bool()
    idx = torch.arange(n, device=dev)
    mask = torch.zeros(b, s, s, dtype=torch.bool, device=dev)
    mask[:, :, :nv] = True  # every row sees V (V rows see only V)
    real, query = slice(nv, nv + n), slice(nv + n, s)
    mask[:, real, real] = (idx[None, :] <= idx[:, None])[None] & valid[:, None, :]
    mask[:, query, real] = (idx[None, :] < idx[:, None])[None] & valid[:, None, :]
    mask[:, query, query] = torch.eye(n, dtype=torch.bool, device=dev)[None]
    row_valid = torch.cat([torch.ones(b, nv, dtype=torch.bool, device=dev), valid, valid], dim=1)
    return mask & row_valid[:, :, None]
