"""Attention overlays: the words of an explained text and its attention maps drawn over the image."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..inference import AttentionMaps

#: Smallest side of an overlay image in pixels (small models see 64-128 px images).
OVERLAY_MIN_SIZE = 320


@dataclass
class Word:
    """A word of an explained text: its display ``text`` and the indices of its WordPiece
    tokens in :attr:`AttentionMaps.tokens`; ``clickable`` for words with a letter or digit."""

    text: str
    tokens: list[int]
    clickable: bool


def group_words(tokens: Sequence[str]) -> list[Word]:
    """WordPiece tokens -> words (a ``##`` continuation joins the token before it)."""
    words: list[Word] = []
    for i, tok in enumerate(tokens):
        if tok.startswith("##") and words:
            words[-1].text += tok[2:]
            words[-1].tokens.append(i)
        else:
            words.append(Word(tok.removeprefix("##"), [i], False))
    for w in words:
        w.clickable = any(c.isalnum() for c in w.text)
    return words


def render_overlay(maps: AttentionMaps, token_ids: Sequence[int], layer: int | None, alpha: float = 0.45,
                   cmap: str = "jet") -> tuple[bytes, float, float]:
    """PNG of the mean attention map of ``token_ids`` (mean over heads; ``layer`` None = mean
    over layers) over the image the model saw, upsampled bilinearly; colours span the map's
    minimum to maximum, which are returned with the PNG."""
    import matplotlib

    m = np.mean([maps.map(t, layer, None) for t in token_ids], axis=0).astype(np.float32)  # (g, g)
    lo, hi = float(m.min()), float(m.max())
    base = maps.image  # (S, S) uint8
    size = base.shape[0] * max(1, -(-OVERLAY_MIN_SIZE // base.shape[0]))
    up = np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    norm = (up - lo) / max(hi - lo, 1e-8)
    colour = matplotlib.colormaps[cmap](np.clip(norm, 0, 1))[..., :3]  # (size, size, 3) in [0, 1]
    gray = np.asarray(Image.fromarray(base, mode="L").resize((size, size), Image.Resampling.BILINEAR),
                      dtype=np.float32)[..., None] / 255.0
    rgb = (1 - alpha) * gray + alpha * colour
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue(), lo, hi


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_png(pixels: np.ndarray) -> bytes:
    """PNG of an 8-bit gray image, upsampled (nearest) to at least :data:`OVERLAY_MIN_SIZE`."""
    size = pixels.shape[0] * max(1, -(-OVERLAY_MIN_SIZE // pixels.shape[0]))
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()

