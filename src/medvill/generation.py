"""Free-running report generation: greedy and beam search, KV-cached and naive.

Decoding follows the paper: the report is produced one token at a time by appending a
[MASK] after the tokens generated so far, predicting it with the MLM head under the S2S
mask, replacing it by the prediction, and moving on until [SEP] (SEP_L) or a length limit.
Generation is never teacher-forced: only the model's own tokens are fed back (the original
code's default greedy decoder fed the ground truth back in).

With S2S, visual rows see only visual rows and text row j sees the visual rows and text
rows <= j, so the keys and values of every earlier position never change.  The cached
decoder therefore encodes the image prefix once and then, per step, runs only two new
queries: the token just chosen (to extend the cache) and the next [MASK] (to predict).
:func:`generate_naive` re-encodes the whole sequence each step; both give the same tokens
(tested), the naive one is kept as the reference.

Beam search: ``num_beams`` hypotheses per image; finished hypotheses are scored by the sum
of token log-probabilities divided by ``length ** length_penalty``; ``no_repeat_ngram_size``
forbids repeating any n-gram of that size; ``min_length`` forbids [SEP] before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .config import MaskScheme
from .modeling.baselines import TieNet
from .modeling.encoder import KVCache
from .modeling.heads import MedViLLForPretraining

# the models that generate reports: MedViLL ([MASK] recovery) and the TieNet baseline (LSTM)
GenerativeModel = MedViLLForPretraining | TieNet


class StepDecoder(Protocol):
    """Scores the next token of every hypothesis (:class:`_Decoder`, ``TieNet.make_decoder``)."""

    def next_logprobs(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, rows: torch.Tensor) -> None: ...


@dataclass
class GenerationConfig:
    max_length: int = 128  # report tokens, SEP_L excluded
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_length: int = 1


class _Decoder:
    """Scores the next token of every hypothesis; ``cached`` or naive re-encoding."""

    def __init__(self, model: MedViLLForPretraining, images: torch.Tensor, cached: bool):
        self.model = model
        self.base = model.medvill
        self.cached = cached
        self.mask_id = model.config.mask_token_id
        self.feats = self.base.encode_image(images)  # (B, K, C), computed once
        self.cache: tuple[KVCache, ...] | None = None
        if cached:
            empty = torch.zeros(images.shape[0], 0, dtype=torch.long, device=images.device)
            out = self.base(empty, empty.bool(), MaskScheme.S2S, visual_features=self.feats, use_cache=True)
            self.cache = out.past_key_values  # keys/values of [CLS] v_1..v_K [SEP_V]

    def reorder(self, rows: torch.Tensor) -> None:
        self.feats = self.feats[rows]
        if self.cache is not None:
            self.cache = tuple((k[rows], v[rows]) for k, v in self.cache)

    def next_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (R, t) generated so far -> log-probabilities (R, V) of token t."""
        r, t = tokens.shape
        dev = tokens.device
        if not self.cached:
            ids = torch.cat([tokens, torch.full((r, 1), self.mask_id, device=dev)], dim=1)
            out = self.base(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.S2S, visual_features=self.feats)
            hidden = out.last_hidden_state[:, -1]
        else:
            # new queries: the last chosen token (if any) and the [MASK] at position t
            new = torch.full((r, 1), self.mask_id, device=dev)
            if t > 0:
                new = torch.cat([tokens[:, -1:], new], dim=1)
            n = new.shape[1]
            positions = torch.arange(t + 1 - n, t + 1, device=dev)[None]
            emb = self.base.embeddings
            x = emb.finish(emb.text(new, positions))  # (R, n, D)
            assert self.cache is not None  # set in __init__ when cached
            past = self.cache[0][0].shape[2]
            mask = torch.ones(r, 1, n, past + n, dtype=torch.bool, device=dev)
            mask[:, :, :, past:] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            enc = self.base.encoder(x, mask, past_key_values=self.cache, use_cache=True)
            keep = past + n - 1  # drop the [MASK]'s keys/values: only real tokens enter the cache
            self.cache = tuple((k[:, :, :keep], v[:, :, :keep]) for k, v in enc.past_key_values)
            hidden = enc.last_hidden_state[:, -1]
        return self.model.mlm_head(hidden).float().log_softmax(-1)


def _block(
    logprobs: torch.Tensor, tokens: torch.Tensor, cfg: GenerationConfig, sep_id: int, special: list[int]
) -> None:
    """In place: forbid special tokens, early [SEP], and repeated n-grams."""
    logprobs[:, special] = float("-inf")
    t = tokens.shape[1]
    if t < cfg.min_length:
        logprobs[:, sep_id] = float("-inf")
    n = cfg.no_repeat_ngram_size
    if n > 0 and t >= n:
        prefix_len = n - 1
        for row in range(tokens.shape[0]):
            seq = tokens[row].tolist()
            prefix = tuple(seq[t - prefix_len :]) if prefix_len else ()
            banned = {seq[i + prefix_len] for i in range(t - prefix_len) if tuple(seq[i : i + prefix_len]) == prefix}
            if banned:
                logprobs[row, list(banned)] = float("-inf")


@torch.no_grad()
def generate(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig | None = None, use_cache: bool = True
) -> list[list[int]]:
    """Generate one report (token ids, without [SEP]) per image ``(B, 3, H, W)``."""
    cfg = cfg or GenerationConfig()
    was_training = model.training
    model.eval()
    try:
        if cfg.num_beams <= 1:
            return _greedy(model, images, cfg, use_cache)
        return _beam(model, images, cfg, use_cache)
    finally:
        model.train(was_training)


def generate_naive(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig | None = None
) -> list[list[int]]:
    """The reference decoder: re-encodes the full sequence at every step."""
    return generate(model, images, cfg, use_cache=False)


def _decoder(model: GenerativeModel, images: torch.Tensor, cached: bool) -> StepDecoder:
    """The model's own step decoder where it has one (TieNet's LSTM, ``make_decoder``), else
    MedViLL's [MASK]-recovery decoder; both expose ``next_logprobs(tokens)`` and ``reorder(rows)``."""
    if isinstance(model, TieNet):
        return model.make_decoder(images, cached)
    return _Decoder(model, images, cached)


def _special_ids(model: GenerativeModel) -> tuple[int, list[int]]:
    c = model.config
    return c.sep_token_id, [c.pad_token_id, c.cls_token_id, c.mask_token_id, c.unk_token_id]


def _greedy(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig, use_cache: bool
) -> list[list[int]]:
    sep_id, special = _special_ids(model)
    dec = _decoder(model, images, use_cache)
    b = images.shape[0]
    tokens = torch.zeros(b, 0, dtype=torch.long, device=images.device)
    done = torch.zeros(b, dtype=torch.bool, device=images.device)
    for _ in range(cfg.max_length):
        logprobs = dec.next_logprobs(tokens)
        _block(logprobs, tokens, cfg, sep_id, special)
        nxt = logprobs.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, sep_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == sep_id
        if bool(done.all()):
            break
    return [_strip(row.tolist(), sep_id) for row in tokens]


def _strip(ids: list[int], sep_id: int) -> list[int]:
    return ids[: ids.index(sep_id)] if sep_id in ids else ids


def _beam(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig, use_cache: bool
) -> list[list[int]]:
    sep_id, special = _special_ids(model)
    b, nb = images.shape[0], cfg.num_beams
    dev = images.device
    dec = _decoder(model, images, use_cache)
    dec.reorder(torch.arange(b, device=dev).repeat_interleave(nb))
    tokens = torch.zeros(b * nb, 0, dtype=torch.long, device=dev)
    scores = torch.full((b, nb), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # start from one live beam per image
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]

    def norm(score: float, length: int) -> float:
        return score / (max(length, 1) ** cfg.length_penalty)

    for step in range(cfg.max_length):
        logprobs = dec.next_logprobs(tokens)  # (b*nb, V)
        _block(logprobs, tokens, cfg, sep_id, special)
        vocab = logprobs.shape[-1]
        total = (scores.view(-1, 1) + logprobs).view(b, nb * vocab)
        top_scores, top_idx = total.topk(2 * nb, dim=1)
        new_rows, new_tokens, new_scores = [], [], []
        for i in range(b):
            live = []
            for s, idx in zip(top_scores[i].tolist(), top_idx[i].tolist(), strict=True):
                if s == float("-inf"):
                    break
                beam, tok = divmod(idx, vocab)
                row = i * nb + beam
                if tok == sep_id:
                    finished[i].append((norm(s, step), tokens[row].tolist()))
                    continue
                live.append((s, row, tok))
                if len(live) == nb:
                    break
            while len(live) < nb:  # pad with dead beams
                live.append((float("-inf"), i * nb, special[0]))
            for s, row, tok in live:
                new_scores.append(s)
                new_rows.append(row)
                new_tokens.append(tok)
        rows = torch.tensor(new_rows, device=dev)
        tokens = torch.cat([tokens[rows], torch.tensor(new_tokens, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=dev).view(b, nb)
        dec.reorder(rows)
        if all(
            len(finished[i]) >= nb and max(f[0] for f in finished[i]) >= norm(float(scores[i].max()), step + 1)
            for i in range(b)
        ):
            break
    results = []
    for i in range(b):
        cands = list(finished[i])
        for beam in range(nb):
            s = float(scores[i, beam])
            if s > float("-inf"):
                cands.append((norm(s, tokens.shape[1]), tokens[i * nb + beam].tolist()))
        results.append(max(cands, key=lambda c: c[0])[1] if cands else [])
    return results


@torch.no_grad()
def reference_nll(
    model: GenerativeModel, images: torch.Tensor, text_ids: torch.Tensor, text_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of reference reports, all positions in ONE pass.

    For every position t the model must predict w_t from the image and the real tokens
    before t, as in decoding.  Instead of N passes (one [MASK] at t each), the sequence holds
    the real tokens followed by N extra [MASK] queries (UniLMv2's pseudo-masking): query t
    has position t and sees the visual rows, the real tokens before t and itself; real tokens
    see the visual rows and the real tokens up to themselves (S2S); nobody sees a query.
    Returns ``(nll_sum (B,), n_tokens (B,))`` over the valid text tokens (SEP_L included).
    A model with its own ``reference_nll`` (TieNet: one teacher-forced LSTM pass) uses it.
    """
    if isinstance(model, TieNet):
        return model.reference_nll(images, text_ids, text_valid)
    logprobs = model.sequence_logprobs(text_ids, text_valid, model.medvill.encode_image(images))  # (B, N, V)
    valid = text_valid.bool()
    nll = -logprobs.gather(-1, text_ids[..., None]).squeeze(-1) * valid
    return nll.sum(1), valid.sum(1)


@torch.no_grad()
def reference_nll_naive(
    model: MedViLLForPretraining, images: torch.Tensor, text_ids: torch.Tensor, text_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantity with one S2S pass per position (the reference for testing)."""
    base = model.medvill
    feats = base.encode_image(images)
    b, n = text_ids.shape
    nll = torch.zeros(b, device=text_ids.device)
    for t in range(n):
        ids = torch.cat([text_ids[:, :t], torch.full((b, 1), model.config.mask_token_id, device=text_ids.device)], 1)
        out = base(ids, torch.ones_like(ids, dtype=torch.bool), MaskScheme.S2S, visual_features=feats)
        logprobs = model.mlm_head(out.last_hidden_state[:, -1]).float().log_softmax(-1)
        nll += -logprobs.gather(-1, text_ids[:, t : t + 1]).squeeze(-1) * text_valid[:, t]
    return nll, text_valid.sum(1)
