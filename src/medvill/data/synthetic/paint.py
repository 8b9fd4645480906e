"""Finding painters (each adds its density in place) and support devices."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .anatomy import _sides
from .cases import Anatomy, Finding
from .geometry import _bezier, _field, _Grid, _Lung, _soft, _to_pixels
from .observations import ATE, CON, EDE, EFF, LES, OPA, PLO, PNA


def _paint_effusion(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Fluid fills the aerated lung below a meniscus that rises towards the chest wall."""
    for side in _sides(f.side):
        lg = lungs[side]
        h = float(f.params.get("height", 0.4))                 # fraction of the lung height
        level_lat = lg.base - h * (lg.base - lg.top)
        meniscus = float(f.params.get("meniscus", 0.3)) * h * (lg.base - lg.top)
        level = level_lat + meniscus * np.clip(1.0 - lg.ulat, 0.0, 1.6) / 1.6
        fluid = _soft(lg.Y - level, 0.012)
        D[lg.box] += float(f.params.get("density", 1.0)) * fluid * lg.mask * (lg.depth + 0.1)


def _lobe_point(lg: _Lung, zone: str, du: float, dv: float) -> tuple[float, float]:
    v = {"upper": -0.4, "middle": 0.05, "lower": 0.38}[zone] + dv
    # keep the left middle/lower zones lateral to the heart, where they can be seen
    u = 0.28 + (0.2 if lg.side == "left" and zone != "upper" else 0.0)
    return lg.point(u + du, v)


def _paint_airspace(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Lung Opacity (patchy), Consolidation (dense, air bronchograms), Pneumonia (between)."""
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch_full = _field(rng, 9, g.S)
    bronch_full = _field(rng, 15, g.S)
    kind = f.observation
    amp = float(f.params.get("amp", 0.3))
    for side in _sides(f.side):
        lg = lungs[side]
        patch, bronch = patch_full[lg.box], bronch_full[lg.box]
        cxp, cyp = _lobe_point(lg, f.location or "lower", float(f.params.get("du", 0.0)),
                               float(f.params.get("dv", 0.0)))
        rx = float(f.params.get("rx", 0.08)) * A.scale
        ry = float(f.params.get("ry", 0.07)) * A.scale
        d = np.sqrt(((lg.X - cxp) / rx) ** 2 + ((lg.Y - cyp) / ry) ** 2)
        if kind == CON:
            blob = _soft(1.0 - d + 0.3 * np.clip(patch, -1.5, 1.5), 0.2)
            # air bronchograms: thin lucent branches running away from the hilum
            theta = np.arctan2(lg.Y - (lg.ly - 0.1 * lg.b), (lg.X - (lg.lx - lg.sgn * 0.9 * lg.a)) * lg.sgn)
            air = np.exp(-((np.sin(14.0 * theta + 0.8 * bronch) * 3.0) ** 2)) * _soft(0.75 - d, 0.15)
            texture = 0.9 + 0.1 * np.clip(patch, -1.5, 1.5) - 0.22 * air
        elif kind == PNA:
            blob = _soft(1.0 - d + 0.25 * np.clip(patch, -1.5, 1.5), 0.18)
            texture = np.clip(0.75 + 0.25 * patch, 0.45, 1.0)
        else:
            blob = np.exp(-1.2 * d ** 2)
            texture = np.clip(0.55 + 0.4 * patch, 0.25, 1.0)
        D[lg.box] += amp * blob * texture * lg.mask * (lg.depth + 0.05)


def _paint_lesion(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """A round nodule, or a larger lobulated mass."""
    lg = lungs[f.side or "right"]
    cxp, cyp = lg.point(float(f.params.get("u", 0.1)), float(f.params.get("v", -0.2)))
    rad = float(f.params.get("radius", 0.025))
    ang = np.arctan2(lg.Y - cyp, lg.X - cxp)
    lob = float(f.params.get("lobulation", 0.0))
    rr = rad * (1.0 + lob * np.cos(3 * ang + float(f.params.get("phase", 0.0))))
    d = np.sqrt((lg.X - cxp) ** 2 + (lg.Y - cyp) ** 2)
    core = _soft(rr - d, 0.004)
    amp = float(f.params.get("amp", 0.3))
    D[lg.box] += amp * core * (0.85 + 0.15 * np.clip(1 - d / rr, 0, 1)) * (0.3 + 0.7 * lg.ell)


def _paint_edema(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Bilateral perihilar haze (the interstitial markings are coarsened in render_image)."""
    rng = np.random.default_rng(int(f.params.get("tex", 0)))
    patch = _field(rng, 8, g.S)
    amp = float(f.params.get("amp", 0.2))
    for lg in lungs.values():
        hx, hy = lg.lx - lg.sgn * 0.45 * lg.a, lg.ly + 0.05 * lg.b
        gauss = np.exp(-(((lg.X - hx) / (0.8 * lg.a)) ** 2 + ((lg.Y - hy) / (0.6 * lg.b)) ** 2))
        D[lg.box] += amp * gauss * (0.8 + 0.2 * patch[lg.box]) * lg.mask


def _paint_atelectasis(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """A thin plate-like band just above the hemidiaphragm."""
    for i, side in enumerate(_sides(f.side)):
        lg = lungs[side]
        cxp, _ = lg.point(float(f.params.get("u", 0.15)), 0.6)
        cyp = lg.base - float(f.params.get("above", 0.1)) * A.scale
        ang = float(f.params.get("tilt", 0.1)) * (1 if i == 0 else -1) * lg.sgn
        length = float(f.params.get("length", 0.15)) * A.scale
        th = float(f.params.get("thickness", 0.009))
        tx, ty = math.cos(ang), math.sin(ang)
        along = (lg.X - cxp) * tx + (lg.Y - cyp) * ty
        perp = -(lg.X - cxp) * ty + (lg.Y - cyp) * tx
        band = np.exp(-((perp / th) ** 2)) * _soft(length / 2 - np.abs(along), 0.012)
        D[lg.box] += float(f.params.get("amp", 0.35)) * band * lg.mask


def _paint_pleural_other(f: Finding, D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung]) -> None:
    """Pleural thickening: a soft-tissue rim along the lateral lung edge, or an apical cap."""
    lg = lungs[f.side or "right"]
    t = float(f.params.get("thickness", 0.025)) / lg.a
    if f.location == "apical":
        where = _soft(-lg.v - 0.6, 0.08)
    else:
        where = _soft(lg.ulat - 0.3, 0.08) * _soft(0.5 - lg.v, 0.08) * _soft(lg.v + 0.7, 0.08)
    band = _soft(lg.r - (1.0 - t), 0.15 * t) * where * lg.mask
    D[lg.box] += float(f.params.get("amp", 1.0)) * band * (lg.depth + 0.05)


_PAINTERS = {
    EFF: _paint_effusion,
    OPA: _paint_airspace,
    CON: _paint_airspace,
    PNA: _paint_airspace,
    LES: _paint_lesion,
    EDE: _paint_edema,
    ATE: _paint_atelectasis,
    PLO: _paint_pleural_other,
}


def _draw_devices(f: Finding, A: Anatomy, lungs: dict[str, _Lung], S: int) -> np.ndarray:
    """Support devices as an antialiased coverage map in [0, 1] (drawn at 2x, box-reduced)."""
    k = 2
    size = S * k
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lw = max(2, int(round(size / 80)))

    def line(points: Sequence[tuple[float, float]], width: int = lw, level: int = 255) -> None:
        draw.line(_to_pixels(points, A, size), fill=level, width=width, joint="curve")

    cx = A.cx
    carina = A.lung_cy - 0.5 * A.lung_b
    ll = lungs["left"]
    for dev in f.params.get("devices", []):
        if dev == "ett":
            tip = carina - 0.05
            line([(cx + 0.003, -0.02), (cx + 0.003, tip)], width=lw + 1)
        elif dev == "ng":
            pts = [(cx - 0.006, -0.02), (cx - 0.006, carina + 0.05)] + _bezier(
                (cx - 0.006, carina + 0.05), (cx + 0.0, ll.base + 0.02), (ll.lx - 0.1 * ll.a, ll.base + 0.06))
            line(pts, width=lw)
        elif dev == "cvc":
            pts = _bezier((cx - 0.13, 0.03), (cx - 0.05, 0.10), (cx - 0.035, carina + 0.06))
            line(pts, width=lw)
        elif dev == "picc":
            pts = [(1.02, 0.22)] + _bezier((0.88, 0.2), (cx + 0.08, 0.16), (cx - 0.03, carina + 0.07))
            line(pts, width=lw)
        elif dev == "pacemaker":
            bx, by = cx + 0.24 * A.scale, 0.13
            box = _to_pixels([(bx - 0.045, by - 0.03), (bx + 0.045, by + 0.03)], A, size)
            (x0, y0), (x1, y1) = box
            draw.rounded_rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                                   radius=size * 0.012, fill=255)
            hx = cx + A.heart_dx
            lead = _bezier((bx - 0.03, by + 0.01), (cx - 0.02, carina - 0.08), (cx - 0.01, carina + 0.08)) + \
                _bezier((cx - 0.01, carina + 0.08), (cx, A.lung_cy + 0.2 * A.lung_b),
                        (hx + 0.06, A.lung_cy + 0.45 * A.lung_b))
            line(lead, width=max(2, lw - 1))
            lead2 = _bezier((bx - 0.03, by - 0.005), (cx - 0.03, carina - 0.06), (cx - 0.03, carina + 0.12))
            line(lead2, width=max(2, lw - 1))
        elif dev.startswith("chest_tube"):
            side = dev.split("_")[-1]
            lg = lungs[side]
            entry = lg.point(1.15, 0.5)
            mid = lg.point(0.75, 0.0)
            tube_tip = lg.point(0.2, -0.8)
            line([(entry[0] + lg.sgn * 0.05, entry[1] + 0.02)] + _bezier(entry, mid, tube_tip), width=lw + 2)
        elif dev == "ecg":
            for j, (ex, ey) in enumerate(f.params.get("ecg_at", [])):
                r = 0.022
                (x0, y0), = _to_pixels([(ex, ey)], A, size)
                rr = r * size
                draw.ellipse([x0 - rr, y0 - rr, x0 + rr, y0 + rr], outline=255, width=lw)
                wire_end = (1.02 if ex > cx else -0.02, ey + 0.1 + 0.05 * j)
                wire = _bezier((ex, ey + r), ((ex + wire_end[0]) / 2, ey + 0.12), wire_end)
                line(wire, width=max(1, lw - 1), level=200)
    arr = np.asarray(canvas.reduce(k), dtype=np.float32) / 255.0
    return arr
