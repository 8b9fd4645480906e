"""Image-report contrastive learning (ITC) and hard negatives for matching: pure functions.

An option beyond the paper (``pretrain.itc_weight``), after ALBEF (Li et al., NeurIPS 2021):
in a single-stream model the unimodal summaries come from one pass under the Non-crossing
mask, where CLS sees only the image and CLS_L only the report.  Both are projected and
L2-normalised; the similarity of image i and report j is their dot product divided by a
temperature.

Label-aware targets: two studies with the same positive label set say the same thing
(the paper's reason for label-aware IRM negatives), so every report of the batch that
shares image i's positive label set is a positive for it, with equal target weight, and
vice versa.  Without this, a batch holding two normal studies would push apart an image and
a report that match.

Hard negatives (ALBEF's ITM sampling): for an image, a mismatched report is drawn from the
batch with probability proportional to ``exp(similarity)`` among the reports whose label
set differs, so matching trains on the pairs that the contrastive space still confuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def same_group(groups: torch.Tensor) -> torch.Tensor:
    """``(B,)`` label-set ids -> ``(B, B)`` bool, True where two items share their label set."""
    return groups[:, None] == groups[None, :]


def label_aware_itc_loss(similarity: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with label-aware soft targets.

    ``similarity`` (B, B): image i (row) against report j (column), already divided by the
    temperature; ``groups`` (B,): each item's label-set id (the report of item i describes
    image i).  The target of row i is uniform over the columns of i's group (it always
    includes i itself); likewise for column j.  Returns the mean of the two directions.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape[0] != groups.shape[0]:
        raise ValueError(f"similarity {tuple(similarity.shape)} must be (B, B) with B = {groups.shape[0]} groups")
    target = same_group(groups).to(similarity.dtype)
    target = target / target.sum(dim=1, keepdim=True)  # symmetric, so columns normalise the same way
    i2t = -(target * similarity.log_softmax(dim=1)).sum(dim=1).mean()
    t2i = -(target * similarity.log_softmax(dim=0)).sum(dim=0).mean()
    return 0.5 * (i2t + t2i)


def sample_hard_negatives(
    similarity: torch.Tensor, groups: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each image in ``rows``, a report column drawn from ``candidates`` with probability
    proportional to ``exp(similarity)``, among the candidates whose label set differs.

    ``similarity`` (B, B) (scaled, as for the loss; gradients are not needed); ``rows`` and
    ``candidates``: 1-D index tensors.  Returns a ``(len(rows),)`` long tensor; a row with no
    eligible candidate gets -1 (the caller keeps its own negative).  Sampling runs on the CPU
    with ``generator`` so that a seeded run repeats it.
    """
    sim = similarity.detach().float().cpu()
    g = groups.cpu()
    rows, candidates = rows.cpu(), candidates.cpu()
    out = torch.full((len(rows),), -1, dtype=torch.long)
    if len(rows) == 0 or len(candidates) == 0:
        return out
    logits = sim[rows][:, candidates]  # (R, C)
    eligible = g[rows][:, None] != g[candidates][None, :]
    logits = logits.masked_fill(~eligible, float("-inf"))
    has = eligible.any(dim=1)
    if has.any():
        probs = F.softmax(logits[has], dim=1)
        picked = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out[has] = candidates[picked]
    return out
