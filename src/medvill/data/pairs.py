"""Image-report pairs and their batches: MLM masking, matching pairs (matched or a
label-aware mismatch), the contrastive loss's report, length-grouped batching.  Pre-training
reads them with masking and matching; retrieval fine-tuning with matching, unmasked;
generation fine-tuning with the whole report as the target (``matching=False``).

Randomness is per example and derived only from ``(seed, epoch, index)``, so a sample is
the same whatever worker or process builds it and no global RNG is touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..labels import positive_set
from ..tokenization import MedTokenizer
from .records import Record
from .transforms import load_image

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MLMSpec:
    prob: float = 0.15  # fraction of report tokens selected
    mask_frac: float = 0.8  # of the selected: replaced by [MASK]
    random_frac: float = 0.1  # replaced by a random non-special token; the rest unchanged


def mask_tokens(
    ids: np.ndarray, rng: np.random.Generator, spec: MLMSpec, mask_id: int, candidate_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of a report's tokens (no specials: pass the tokens without SEP_L).

    Selects ``max(1, round(prob * N))`` positions uniformly; of those, ``mask_frac`` become
    [MASK], ``random_frac`` a random token from ``candidate_ids`` (non-special), the rest stay.
    Returns ``(inputs, labels)`` with labels = the original id at selected positions and
    ``IGNORE_INDEX`` elsewhere.
    """
    n = len(ids)
    inputs = ids.copy()
    labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
    if n == 0:
        return inputs, labels
    count = min(n, max(1, int(round(spec.prob * n))))
    chosen = rng.choice(n, size=count, replace=False)
    labels[chosen] = ids[chosen]
    action = rng.random(count)
    to_mask = chosen[action < spec.mask_frac]
    to_random = chosen[(action >= spec.mask_frac) & (action < spec.mask_frac + spec.random_frac)]
    inputs[to_mask] = mask_id
    if len(to_random):
        inputs[to_random] = rng.choice(candidate_ids, size=len(to_random))
    return inputs, labels


def encode_reports(tokenizer: MedTokenizer, texts: Sequence[str], max_text_len: int) -> list[np.ndarray]:
    """Token ids of each report truncated to ``max_text_len - 1``, plus the closing SEP_L."""
    out = []
    for ids in tokenizer.encode_batch(texts):
        ids = ids[: max_text_len - 1] + [tokenizer.sep_id]
        out.append(np.asarray(ids, dtype=np.int64))
    return out


class ReportPairDataset(Dataset):
    """Image-report pairs for MLM + IRM (pre-training), matching (retrieval) or the whole
    report (generation).

    Each item is matched with probability 1/2 (1:1 in expectation); a mismatched item pairs
    the image with the report of another study whose *positive label set differs* from its
    own (two reports with the same findings are not a negative, paper section III-B).  MLM
    masking is applied to every report, matched or not (so the presence of [MASK] tokens
    cannot reveal the pair type); its loss is taken on matched pairs only.

    ``contrastive``: each item also carries its image's own report, unmasked
    (``report_ids``), and the id of its positive label set (``label_group``: equal ids =
    equal sets), for the image-report contrastive loss and hard negatives
    (:mod:`medvill.modeling.contrastive`).  ``mask_end``: the closing [SEP] is among the
    tokens MLM may select (report generation, so that the end of a report is learnt); in
    pre-training it never is.
    """

    def __init__(self, records: Sequence[Record], tokenizer: MedTokenizer, image_size: int, max_text_len: int,
                 mlm: MLMSpec | None = MLMSpec(), seed: int = 0, matching: bool = True, contrastive: bool = False,
                 mask_end: bool = False):
        if not records:
            raise ValueError("the pre-training data set is empty")
        self.records = list(records)
        self.image_size = image_size
        self.mlm = mlm
        self.seed = seed
        self.epoch = 0
        self.matching = matching
        self.mask_end = mask_end
        self.mask_id = tokenizer.mask_id
        self.sep_id = tokenizer.sep_id
        self.candidate_ids = np.array(sorted(set(range(tokenizer.vocab_size)) - tokenizer.special_ids), dtype=np.int64)
        self.text_ids = encode_reports(tokenizer, [r.text for r in self.records], max_text_len)
        self.label_sets = [positive_set(r.labels) for r in self.records]
        self.contrastive = contrastive
        group_id = {ls: g for g, ls in enumerate(sorted(set(self.label_sets), key=sorted))}
        self.label_groups = np.array([group_id[ls] for ls in self.label_sets], dtype=np.int64)
        if matching and len(set(self.label_sets)) < 2:
            raise ValueError(
                "image-report matching needs reports with at least two different positive label sets; "
                "every record has the same labels"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def negative_index(self, i: int, rng: np.random.Generator) -> int:
        """A random index whose positive label set differs from record i's."""
        own = self.label_sets[i]
        n = len(self.records)
        for _ in range(64):
            j = int(rng.integers(n))
            if self.label_sets[j] != own:
                return j
        others = [j for j in range(n) if self.label_sets[j] != own]  # rare: a dominant label set
        return int(others[rng.integers(len(others))])

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        matched = bool(rng.random() < 0.5) if self.matching else True
        return self.make_item(i, matched, rng)

    def make_item(self, i: int, matched: bool, rng: np.random.Generator) -> dict:
        """Image ``i`` with its own report (``matched``) or a label-aware negative, MLM-masked."""
        j = i if matched else self.negative_index(i, rng)
        ids = self.text_ids[j]
        if self.mlm is None:  # matching only (retrieval fine-tuning): the report stays intact
            text, labels = ids.copy(), np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        elif self.mask_end:
            text, labels = mask_tokens(ids, rng, self.mlm, self.mask_id, self.candidate_ids)
        else:  # SEP_L stays as it is and is never a target
            body, body_labels = mask_tokens(ids[:-1], rng, self.mlm, self.mask_id, self.candidate_ids)
            text, labels = np.concatenate([body, ids[-1:]]), np.concatenate([body_labels, [IGNORE_INDEX]])
        if not matched:
            labels[:] = IGNORE_INDEX
        item = {
            "images": load_image(self.records[i].image, self.image_size),
            "text_ids": text,
            "mlm_labels": labels,
            "is_matched": int(matched),
            "index": i,
            "text_index": j,
        }
        if self.contrastive:
            item["report_ids"] = self.text_ids[i]
            item["label_group"] = int(self.label_groups[i])
        return item


def blank_reports(text_ids: torch.Tensor, text_valid: torch.Tensor, rows: torch.Tensor, sep_id: int,
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``text_ids`` / ``text_valid`` (B, T) with the reports of ``rows`` (B,) bool replaced by
    the empty report (SEP_L alone, as ``encode_reports([""])`` gives), the rest untouched."""
    if not bool(rows.any()):
        return text_ids, text_valid
    text_ids, text_valid = text_ids.clone(), text_valid.clone()
    text_ids[rows] = pad_id
    text_ids[rows, 0] = sep_id
    text_valid[rows] = False
    text_valid[rows, 0] = True
    return text_ids, text_valid


def pad_stack(seqs: Sequence[np.ndarray], value: int) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class ReportPairCollator:
    pad_id: int

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        text_ids = pad_stack([it["text_ids"] for it in items], self.pad_id)
        lengths = torch.tensor([len(it["text_ids"]) for it in items])
        return {
            "images": torch.stack([it["images"] for it in items]),
            "text_ids": text_ids,  # (B, T)
            "text_valid": torch.arange(text_ids.shape[1])[None] < lengths[:, None],  # (B, T)
            "mlm_labels": pad_stack([it["mlm_labels"] for it in items], IGNORE_INDEX),
            "is_matched": torch.tensor([it["is_matched"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
            "text_index": torch.tensor([it["text_index"] for it in items]),
            **(self._reports(items) if "report_ids" in items[0] else {}),
        }

    def _reports(self, items: list[dict]) -> dict[str, torch.Tensor]:
        report_ids = pad_stack([it["report_ids"] for it in items], self.pad_id)
        lengths = torch.tensor([len(it["report_ids"]) for it in items])
        return {"report_ids": report_ids, "report_valid": torch.arange(report_ids.shape[1])[None] < lengths[:, None],
                "label_group": torch.tensor([it["label_group"] for it in items])}


class LengthGroupedSampler(Sampler[int]):
    """A random order in which each run of ``batch_size`` indices has similar text lengths.

    Each epoch: shuffle all indices, cut them into chunks of ``group * batch_size``, sort each
    chunk by length, cut it into batches and shuffle the batches.  Consecutive
    ``batch_size`` indices (one batch) then come from a small length range, so the collator
    pads them to a shorter length: on the synthetic reports (mean 35 tokens, a random batch of
    32 padded to 63) about a third less text to encode.  Within a chunk the short (often
    normal) reports share batches, so ``group`` is kept small: the batches of one chunk still
    mix the findings of ``group * batch_size`` random studies.

    The order is a function of ``(seed, epoch)`` only (``set_epoch``, called by the training
    loop and by Accelerate), so a resumed run and every process see the same order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, group: int = 4, seed: int = 0):
        if batch_size < 1 or group < 1:
            raise ValueError("batch_size and group must be >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.group, self.seed = batch_size, group, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.group * self.batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield from (int(i) for i in batches[b])
