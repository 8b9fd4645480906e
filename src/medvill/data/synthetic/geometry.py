"""Rendering helpers: smooth steps, smooth random fields, the patient's pixel grid and lung geometry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .anatomy import _sgn
from .cases import Anatomy


def _soft(d: np.ndarray | float, w: float) -> np.ndarray:
    """Smooth step: ~0 for d << -w, 0.5 at d = 0, ~1 for d >> w."""
    t = np.tanh(np.asarray(d, dtype=np.float32) * np.float32(1.0 / w))
    t *= 0.5
    t += 0.5
    return t


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Rows: smooth (Gaussian RBF) interpolation weights from ``cells + 1`` grid knots to
    ``size`` pixel centres; the knot spacing is fixed in image units, so a field looks the
    same at every image size."""
    x = (np.arange(size, dtype=np.float64) + 0.5) / size
    knots = np.linspace(-0.5 / cells, 1 + 0.5 / cells, cells + 2)
    w = np.exp(-(((x[:, None] - knots[None, :]) * cells / 0.7) ** 2))
    w /= np.sqrt((w ** 2).sum(axis=1, keepdims=True))     # unit variance per pixel
    return w


def _field(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance at every pixel."""
    g = rng.standard_normal((cells + 2, cells + 2))
    w = _interp_matrix(size, cells)
    return (w @ g @ w.T).astype(np.float32)   # (float64 products: much faster than float32 here)


@lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return (np.linspace(0.0, 1.0, 4096) ** gamma).astype(np.float32)


@lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    px, py = np.meshgrid(c, c)
    return px, py


class _Grid:
    """Anatomical coordinates of every pixel (the patient is slightly rotated)."""

    def __init__(self, A: Anatomy, S: int):
        px, py = _pixel_grid(S)
        self.S, self.A = S, A
        self.ca, self.sa = math.cos(A.angle), math.sin(A.angle)
        ca, sa = np.float32(self.ca), np.float32(self.sa)
        self.X = 0.5 + ca * (px - 0.5) - sa * (py - 0.5)
        self.Y = 0.5 + sa * (px - 0.5) + ca * (py - 0.5)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel rows/columns covering the anatomical rectangle [x0, x1] x [y0, y1]."""
        xs, ys = [], []
        for qx in (x0, x1):
            for qy in (y0, y1):
                xs.append(0.5 + self.ca * (qx - 0.5) + self.sa * (qy - 0.5))
                ys.append(0.5 - self.sa * (qx - 0.5) + self.ca * (qy - 0.5))
        S = self.S

        def rng(lo: float, hi: float) -> slice:
            return slice(min(max(int(math.floor(lo * S)) - 1, 0), S), min(max(int(math.ceil(hi * S)) + 1, 0), S))

        return rng(min(ys), max(ys)), rng(min(xs), max(xs))


class _Lung:
    """Geometry of one lung, computed inside its bounding box ``self.box`` (rows, cols).

    ``ulat`` runs from the lung centre towards the lateral chest wall (1 at the edge), ``v``
    from the centre downwards (-1 at the apex), ``r`` is the normalised radius (1 on the
    outline; the lower half is squarer so the lung is widest at its base).  ``mask`` is the
    aerated lung (later reduced where the mediastinum and heart cover it), ``depth`` the
    density its air removes.
    """

    def __init__(self, g: _Grid, A: Anatomy, side: str, dome_raise: float, ew: float):
        s = _sgn(side)
        self.side, self.sgn = side, s
        self.lx = A.cx + s * A.lung_dx
        self.ly = A.lung_cy
        self.a = A.lung_a * (0.96 if side == "left" else 1.0)
        self.b = A.lung_b
        self.top = self.ly - self.b
        self.box = g.box(self.lx - 1.12 * self.a, self.lx + 1.12 * self.a, self.top - 0.02, self.ly + self.b + 0.03)
        X, Y = g.X[self.box], g.Y[self.box]
        self.X, self.Y = X, Y
        t = np.clip((Y - self.top) / (1.9 * self.b), 0.0, 1.0)
        self.a_eff = self.a * (0.6 + 0.45 * np.sqrt(t))
        self.ulat = (X - self.lx) * s / self.a_eff
        self.v = (Y - self.ly) / self.b
        vv = np.abs(self.v)
        self.r = np.sqrt(self.ulat ** 2 + np.where(self.v < 0, vv ** 2, vv ** 4))
        up = dome_raise + (A.right_dome_up if side == "right" else 0.0)
        self.base = self.ly + 0.93 * self.b - up           # costophrenic angle height
        peak_x = self.lx - s * 0.2 * self.a
        self.dome = self.base - A.dome_h * np.clip(1 - ((X - peak_x) / (1.1 * self.a)) ** 2, 0, 1) ** 0.7
        self.ell = _soft((1.0 - self.r) * self.a, ew)      # inside the thoracic outline
        self.below = _soft(self.dome - Y, ew)              # above the diaphragm
        self.mask = self.ell * self.below
        self.depth = 0.4 * (0.75 + 0.25 * np.sqrt(np.clip(1 - self.r ** 2, 0, 1)))
        self.depth *= 1.0 - 0.12 * np.clip(self.v, 0, 1)      # bases a little denser

    def point(self, ulat: float, v: float) -> tuple[float, float]:
        """Image coordinates of a point given in lung coordinates."""
        y = self.ly + v * self.b
        t = min(max((y - self.top) / (1.9 * self.b), 0.0), 1.0)
        return self.lx + self.sgn * ulat * self.a * (0.6 + 0.45 * math.sqrt(t)), y


def _dome_line(A: Anatomy, X: np.ndarray, dome_raise: dict[str, float]) -> np.ndarray:
    """Height of the diaphragm (the higher of the two domes) at every X."""
    out = None
    for side in ("right", "left"):
        s = _sgn(side)
        a = A.lung_a * (0.96 if side == "left" else 1.0)
        lx = A.cx + s * A.lung_dx
        base = A.lung_cy + 0.93 * A.lung_b - dome_raise[side] - (A.right_dome_up if side == "right" else 0.0)
        d = base - A.dome_h * np.clip(1 - ((X - (lx - s * 0.2 * a)) / (1.1 * a)) ** 2, 0, 1) ** 0.7
        out = d if out is None else np.minimum(out, d)
    assert out is not None  # both sides were drawn
    return out


def _to_pixels(points: Sequence[tuple[float, float]], A: Anatomy, size: float) -> list[tuple[float, float]]:
    """Anatomical normalised coordinates -> pixel coordinates (inverse of the grid rotation)."""
    c, s = math.cos(A.angle), math.sin(A.angle)
    out = []
    for qx, qy in points:
        px = 0.5 + c * (qx - 0.5) + s * (qy - 0.5)
        py = 0.5 - s * (qx - 0.5) + c * (qy - 0.5)
        out.append((px * size, py * size))
    return out


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
            n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)
    x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t ** 2 * p2[0]
    y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t ** 2 * p2[1]
    return list(zip(x.tolist(), y.tolist()))
