"""Free-running report generation: greedy and beam search, KV-cached and naive.

Decoding follows the paper: the report is produced one token at a time by appending a
[MASK] after the tokens generated so far, predicting it with the MLM head under the S2S
mask, replacing it by the prediction, and moving on until [SEP] (SEP_L) or a length limit.
Generation is never teacher-forced: only the model's own tokens are fed back (the original
code's default greedy decoder fed the ground truth back in).

With S2S, visual rows see only visual rows and text row j sees the visual rows and text
rows <= j, so the keys and values of every earlier position never change.  The cached
decoder therefore encodes the image prefix once and then, per step, runs only two new
queries: the token just chosen (to extend the cache) and the next [MASK] (to predict).  The
keys and values live in a :class:`~medvill.modeling.encoder.DecodingCache` allocated once for
the whole report: each step writes its two positions in place (the [MASK]'s is overwritten by
the next step), so nothing is concatenated or copied per step.
:func:`generate_naive` re-encodes the whole sequence each step; both give the same tokens
(tested), the naive one is kept as the reference.

Batches: the images of one call are decoded together, one row (greedy) or ``num_beams`` rows
(beam search) each.  A report that has ended leaves the batch: its rows stop being computed
(the last rows move into its place, so only they are copied), and every report comes out
exactly as if it had been decoded alone (tested, token for token, in fp32).

Beam search: ``num_beams`` hypotheses per image; finished hypotheses are scored by the sum
of token log-probabilities divided by ``length ** length_penalty``; ``no_repeat_ngram_size``
forbids repeating any n-gram of that size; ``min_length`` forbids [SEP] before it.  An image's
search ends when it holds ``num_beams`` finished hypotheses and none of its live beams can
beat the best of them; its beams then leave the batch.  Reordering beams copies only their
report positions: the beams of one image share the image prefix, which never moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .config import MaskScheme
from .modeling.baselines import TieNet
from .modeling.encoder import DecodingCache
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
    """Scores the next token of every hypothesis; ``cached`` or naive re-encoding.

    ``max_length``: the most tokens a report may get (sizes the cache; default the model's
    ``max_text_len``)."""

    def __init__(self, model: MedViLLForPretraining, images: torch.Tensor, cached: bool,
                 max_length: int | None = None):
        self.model = model
        self.base = model.medvill
        self.cached = cached
        self.mask_id = model.config.mask_token_id
        self.feats = self.base.encode_image(images)  # (B, K, C), computed once
        self.cache: DecodingCache | None = None
        self.prefix_len = 0
        self.row_image = torch.arange(images.shape[0], device=images.device)  # the image of each row
        if cached:
            empty = torch.zeros(images.shape[0], 0, dtype=torch.long, device=images.device)
            out = self.base(empty, empty.bool(), MaskScheme.S2S, visual_features=self.feats, use_cache=True)
            assert out.past_key_values is not None  # use_cache=True
            self.prefix_len = out.past_key_values[0][0].shape[2]  # [CLS] v_1..v_K [SEP_V]
            limit = model.config.max_text_len if max_length is None else max_length
            # a step writes the last token and the next [MASK]: at most prefix + limit + 1 positions
            self.cache = DecodingCache(out.past_key_values, self.prefix_len + limit + 1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``j`` becomes old row ``rows[j]`` (beam reordering, repeats, finished rows dropped)."""
        if self.cache is None:
            self.feats = self.feats[rows]  # only the naive decoder reads the features again
            return
        src = self.row_image[rows]
        n = rows.numel()
        # rows that stay with the same image keep their prefix in place: only report positions move
        same = n <= self.cache.rows and torch.equal(src, self.row_image[:n])
        self.cache.gather(rows, self.prefix_len if same else 0)
        self.row_image = src

    def step_mask(self, n: int, total: int, device: torch.device) -> torch.Tensor:
        """``(1, 1, n, total)``: the n new queries see every cached position and, among the new
        ones, themselves and those before them (the token cannot see the [MASK] after it)."""
        mask = torch.ones(1, 1, n, total, dtype=torch.bool, device=device)
        mask[0, 0, :, total - n:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        return mask

    def next_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (R, t) generated so far -> log-probabilities (R, V) of token t."""
        r, t = tokens.shape
        dev = tokens.device
        if self.cache is None:
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
            mask = self.step_mask(n, self.cache.length + n, dev)
            enc = self.base.encoder(x, mask, past_key_values=self.cache)  # writes the n positions in place
            self.cache.advance(n - 1)  # keep the token's keys/values; the [MASK]'s slot is reused
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


def _decoder(model: GenerativeModel, images: torch.Tensor, cached: bool, max_length: int) -> StepDecoder:
    """The model's own step decoder where it has one (TieNet's LSTM, ``make_decoder``), else
    MedViLL's [MASK]-recovery decoder; both expose ``next_logprobs(tokens)`` and ``reorder(rows)``."""
    if isinstance(model, TieNet):
        return model.make_decoder(images, cached)
    return _Decoder(model, images, cached, max_length)


def _special_ids(model: GenerativeModel) -> tuple[int, list[int]]:
    c = model.config
    return c.sep_token_id, [c.pad_token_id, c.cls_token_id, c.mask_token_id, c.unk_token_id]


def _greedy(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig, use_cache: bool
) -> list[list[int]]:
    sep_id, special = _special_ids(model)
    dec = _decoder(model, images, use_cache, cfg.max_length)
    b = images.shape[0]
    results: list[list[int]] = [[] for _ in range(b)]
    active = list(range(b))  # the image of each decoder row
    tokens = torch.zeros(b, 0, dtype=torch.long, device=images.device)
    for _ in range(cfg.max_length):
        logprobs = dec.next_logprobs(tokens)
        _block(logprobs, tokens, cfg, sep_id, special)
        nxt = logprobs.argmax(-1)
        ended = (nxt == sep_id).nonzero()[:, 0].tolist()
        if ended:  # those reports are complete (without their [SEP]); their rows leave the batch
            for row in ended:
                results[active[row]] = tokens[row].tolist()
            keep = _fill_gaps(len(active), ended, 1, images.device)
            if keep is None:
                return results
            active = [active[r] for r in keep.tolist()]
            tokens, nxt = tokens[keep], nxt[keep]
            dec.reorder(keep)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    for row, image in enumerate(active):
        results[image] = tokens[row].tolist()
    return results


def _fill_gaps(groups: int, gone: list[int], size: int, device: torch.device) -> torch.Tensor | None:
    """Rows that remain when the groups ``gone`` (of ``groups`` groups of ``size`` rows) leave:
    each gap below the new end is filled by a remaining group from the end, so only those rows
    move; None when nothing remains."""
    out = set(gone)
    keep = groups - len(out)
    if keep == 0:
        return None
    movers = iter(g for g in range(keep, groups) if g not in out)
    order = [next(movers) if g in out else g for g in range(keep)]
    return torch.tensor([g * size + j for g in order for j in range(size)], device=device)


def _beam(
    model: GenerativeModel, images: torch.Tensor, cfg: GenerationConfig, use_cache: bool
) -> list[list[int]]:
    sep_id, special = _special_ids(model)
    b, nb = images.shape[0], cfg.num_beams
    dev = images.device
    dec = _decoder(model, images, use_cache, cfg.max_length)
    dec.reorder(torch.arange(b, device=dev).repeat_interleave(nb))
    tokens = torch.zeros(b * nb, 0, dtype=torch.long, device=dev)
    scores = torch.full((b, nb), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # start from one live beam per image
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    results: list[list[int]] = [[] for _ in range(b)]
    active = list(range(b))  # the image of each group of nb rows

    def norm(score: float, length: int) -> float:
        return score / (max(length, 1) ** cfg.length_penalty)

    def best(i: int, group: int) -> list[int]:
        """Image ``i``'s report: the best finished hypothesis or live beam (rows of ``group``)."""
        cands = list(finished[i])
        for beam in range(nb):
            s = float(scores[group, beam])
            if s > float("-inf"):
                cands.append((norm(s, tokens.shape[1]), tokens[group * nb + beam].tolist()))
        return max(cands, key=lambda c: c[0])[1] if cands else []

    for step in range(cfg.max_length):
        logprobs = dec.next_logprobs(tokens)  # (groups*nb, V)
        _block(logprobs, tokens, cfg, sep_id, special)
        vocab = logprobs.shape[-1]
        total = (scores.view(-1, 1) + logprobs).view(len(active), nb * vocab)
        top_scores, top_idx = total.topk(2 * nb, dim=1)
        new_rows, new_tokens, new_scores = [], [], []
        for group, i in enumerate(active):
            live = []
            for s, idx in zip(top_scores[group].tolist(), top_idx[group].tolist(), strict=True):
                if s == float("-inf"):
                    break
                beam, tok = divmod(idx, vocab)
                row = group * nb + beam
                if tok == sep_id:
                    finished[i].append((norm(s, step), tokens[row].tolist()))
                    continue
                live.append((s, row, tok))
                if len(live) == nb:
                    break
            while len(live) < nb:  # pad with dead beams
                live.append((float("-inf"), group * nb, special[0]))
            for s, row, tok in live:
                new_scores.append(s)
                new_rows.append(row)
                new_tokens.append(tok)
        rows = torch.tensor(new_rows, device=dev)
        tokens = torch.cat([tokens[rows], torch.tensor(new_tokens, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=dev).view(len(active), nb)
        dec.reorder(rows)
        done = [group for group, i in enumerate(active) if len(finished[i]) >= nb
                and max(f[0] for f in finished[i]) >= norm(float(scores[group].max()), step + 1)]
        if done:  # those images' searches are over: their beams leave the batch
            for group in done:
                results[active[group]] = best(active[group], group)
            keep = _fill_gaps(len(active), done, nb, dev)
            if keep is None:
                return results
            groups = keep[::nb] // nb
            active = [active[g] for g in groups.tolist()]
            tokens, scores = tokens[keep], scores[groups]
            dec.reorder(keep)
    for group, i in enumerate(active):
        results[i] = best(i, group)
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
