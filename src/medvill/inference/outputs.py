"""What the Pipeline returns: :class:`Answer` (VQA), :class:`RetrievalHit` (retrieval) and
:class:`AttentionMaps` (explain); classification gives ``{observation: probability}`` dicts and
generation plain report strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Answer:
    """:meth:`~medvill.inference.Pipeline.answer`: the predicted answer, its softmax probability
    over the answer vocabulary of the training set, and the ``top`` answers as
    ``(answer, probability)``."""

    answer: str
    probability: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class RetrievalHit:
    """One ranked pool item of :meth:`~medvill.inference.Pipeline.retrieve`.

    ``rank`` 1 is the best match; ``index`` is the item's position in the pool and ``item``
    the item as given; ``score`` is the matching head's logit and ``probability`` its sigmoid
    (the model's probability that query and item belong together)."""

    rank: int
    index: int
    item: Any
    score: float
    probability: float


@dataclass
class AttentionMaps:
    """:meth:`~medvill.inference.Pipeline.explain`: how much each text token attends each cell of
    the visual grid.

    ``maps[l, h, t]`` is the ``(grid, grid)`` attention of text token ``t`` onto the visual
    tokens in layer ``l``, head ``h`` (softmax probabilities; the rest of each row's mass goes to
    the special and text tokens, so a map sums to at most 1).  Grid cell ``(i, j)`` covers image
    rows ``i * stride .. (i + 1) * stride`` and columns likewise, ``stride = image_size / grid``.
    ``tokens`` are the WordPiece tokens of the text (the closing [SEP] excluded); ``image`` is the
    preprocessed 8-bit image the model saw; ``task`` the checkpoint used and ``scheme`` its mask.
    """

    tokens: list[str]
    maps: np.ndarray  # (L, H, N, g, g) float32
    image: np.ndarray  # (S, S) uint8
    task: str
    scheme: str

    @property
    def num_layers(self) -> int:
        return int(self.maps.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.maps.shape[1])

    @property
    def grid_size(self) -> int:
        return int(self.maps.shape[-1])

    def token_index(self, token: int | str) -> int:
        """Position of ``token``: an index (negative counts from the end) or the first token
        equal to the string (case-insensitive, ``##`` continuation marks ignored)."""
        if isinstance(token, (int, np.integer)):
            n = len(self.tokens)
            if not -n <= int(token) < n:
                raise IndexError(f"token index {token} out of range for {n} tokens")
            return int(token) % n
        want = str(token).lower().removeprefix("##")
        for i, t in enumerate(self.tokens):
            if t.lower().removeprefix("##") == want:
                return i
        raise KeyError(f"token {token!r} is not among the text's tokens: {self.tokens}")

    def map(self, token: int | str, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """The ``(grid, grid)`` map of one token; ``layer`` / ``head`` None = the mean over
        layers / heads."""
        m = self.maps[:, :, self.token_index(token)]  # (L, H, g, g)
        m = m.mean(0) if layer is None else m[_check_index(layer, self.num_layers, "layer")]
        return m.mean(0) if head is None else m[_check_index(head, self.num_heads, "head")]


def _check_index(i: int, n: int, what: str) -> int:
    if not -n <= i < n:
        raise IndexError(f"{what} {i} out of range (the model has {n})")
    return i
