"""Rendering: a PA chest radiograph of one patient's anatomy with its findings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .anatomy import _sgn, _sides
from .cases import Anatomy, Finding
from .geometry import _dome_line, _field, _gamma_lut, _Grid, _Lung, _soft
from .observations import ATE, CARD, ECM, EDE, FRA, PTX, SD
from .paint import _PAINTERS, _draw_devices


def render_image(anatomy: Anatomy, findings: Sequence[Finding], image_size: int) -> np.ndarray:
    """Draw a PA chest radiograph of ``anatomy`` with ``findings`` (uint8, image_size^2).

    Pure: the same arguments always give the same pixels, and the anatomy, texture and noise
    do not depend on ``findings`` - so rendering a patient with and without a finding
    isolates what that finding changes (the tests use this).

    The image is built as a projected "density" (0 = air, about 0.6 = thick soft tissue,
    bone and fluid brighter) that is then exposed with the patient's contrast, brightness
    and gamma; support devices are composited last, nearly white.
    """
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {S}")
    A = anatomy
    ew = 0.005
    g = _Grid(A, S)
    tex = np.random.default_rng(A.texture_seed)
    n_mark1 = _field(tex, 13, S)
    n_mark2 = _field(tex, 23, S)
    n_low = _field(tex, 3, S)
    n_tissue = _field(tex, 7, S)

    by_obs: dict[str, list[Finding]] = {}
    for f in findings:
        by_obs.setdefault(f.observation, []).append(f)
    heart_scale, med_scale, dome_raise = _finding_geometry(by_obs)

    D, body, dxm = _soft_tissue(g, A, n_tissue)
    lungs = {side: _Lung(g, A, side, dome_raise[side], ew) for side in ("right", "left")}
    cage_w = A.lung_dx + 1.05 * A.lung_a
    dia = _abdomen(D, g, A, body, dxm, cage_w, dome_raise)
    box, med, heart, up = _mediastinum_and_heart(g, A, heart_scale, med_scale, ew)
    lung_any = _aerate_lungs(D, g, lungs, box, med, heart, dia, dxm, cage_w)
    _spine_and_trachea(D, g, A, box, dxm, up, ew)
    if A.bubble > 0:
        _gastric_bubble(D, g, A, lungs["left"], dia)
    no_marks = _pneumothorax(D, lungs, by_obs.get(PTX, []))
    _lung_markings(D, lungs, by_obs.get(EDE, []), n_mark1, n_mark2, no_marks)
    _bones(D, g, A, lungs, lung_any, body, by_obs.get(FRA, []), no_marks)
    for f in findings:
        painter = _PAINTERS.get(f.observation)
        if painter is not None:
            painter(f, D, g, A, lungs)

    img = _expose(A, D, n_low, body, S)
    for f in by_obs.get(SD, []):
        dev = _draw_devices(f, A, lungs, S)
        img = img * (1.0 - dev) + np.float32(0.97) * dev
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _finding_geometry(by_obs: Mapping[str, Sequence[Finding]]) -> tuple[float, float, dict[str, float]]:
    """Anatomy changed by findings: heart and mediastinum scale, raised hemidiaphragms."""
    heart_scale, med_scale = 1.0, 1.0
    for f in by_obs.get(CARD, []):
        heart_scale = max(heart_scale, float(f.params.get("heart_scale", 1.45)))
    for f in by_obs.get(ECM, []):
        med_scale = max(med_scale, float(f.params.get("med_scale", 1.9)))
    dome_raise = {"left": 0.0, "right": 0.0}
    for f in by_obs.get(ATE, []):
        for side in _sides(f.side):
            dome_raise[side] = max(dome_raise[side], float(f.params.get("dome_raise", 0.015)))
    return heart_scale, med_scale, dome_raise


def _soft_tissue(g: _Grid, A: Anatomy, n_tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body and its soft-tissue density: ``(D, body, |X - midline|)``."""
    X, Y = g.X, g.Y
    dxm = np.abs(X - A.cx)
    ys = np.clip((Y + 0.04) * 5.0, 0.0, 1.0)
    W = (0.08 + 0.40 * np.sqrt(ys * (2.0 - ys))) * A.scale          # neck widening into shoulders
    body = _soft(W - dxm, 0.01)
    thick = np.sqrt(np.clip(1.0 - (dxm / (W + 1e-3)) ** 2, 0.0, 1.0))
    D = body * (0.30 + 0.26 * thick + 0.015 * n_tissue)
    return D, body, dxm


def _abdomen(D: np.ndarray, g: _Grid, A: Anatomy, body: np.ndarray, dxm: np.ndarray, cage_w: float,
             dome_raise: dict[str, float]) -> np.ndarray:
    """The abdomen below the diaphragm is denser than the chest wall; returns the diaphragm line."""
    X, Y = g.X, g.Y
    lung_top = A.lung_cy - A.lung_b
    rows, cols = g.box(A.cx - cage_w - 0.06, A.cx + cage_w + 0.06, lung_top, 1.1)
    dia = _dome_line(A, X, dome_raise)
    cage = _soft(cage_w - dxm[rows, cols], 0.03)
    D[rows, cols] += 0.1 * _soft(Y[rows, cols] - dia[rows, cols], 0.008) * body[rows, cols] * cage
    return dia


def _mediastinum_and_heart(g: _Grid, A: Anatomy, heart_scale: float, med_scale: float,
                           ew: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the mediastinum (a column between the lungs, widened superiorly for ECM) and
    the heart: ``(box, med, heart, up)``; ``up`` fades the column out at the top of the image."""
    X, Y = g.X, g.Y
    carina = A.lung_cy - 0.5 * A.lung_b
    hs = heart_scale
    hcx = A.cx + A.heart_dx * (1.0 + 0.8 * (hs - 1.0))
    hcy = A.lung_cy + 0.55 * A.lung_b
    hw, hh = A.heart_hw * hs, A.heart_hh * (1.0 + 0.3 * (hs - 1.0))
    half = max(A.med_hw * med_scale + 0.03, hcx + hw - A.cx, A.cx - (hcx - hw)) + 0.02
    mr, mc = g.box(A.cx - half, A.cx + half, -0.1, 1.1)
    Xm, Ym = X[mr, mc], Y[mr, mc]
    up = _soft(Ym - 0.03, 0.02)
    widen = 1.0 + (med_scale - 1.0) * np.exp(-(((Ym - carina) / 0.12) ** 2))
    knob = 0.02 * np.exp(-(((Ym - (carina - 0.05)) / 0.03) ** 2))
    right_edge = A.cx + (A.med_hw * widen + knob)          # image right = patient left (aortic knob)
    left_edge = A.cx - (A.med_hw * 0.92 * widen)
    med = np.zeros_like(X)
    med[mr, mc] = _soft(np.minimum(right_edge - Xm, Xm - left_edge), ew) * up
    rh = np.sqrt(((Xm - hcx) / hw) ** 2 + ((Ym - hcy) / hh) ** 2)
    heart_m = _soft((1.0 - rh) * hw, ew)
    # the upper heart border tapers into the mediastinum (great vessels)
    t = np.clip((Ym - (hcy - 1.25 * hh)) / (1.25 * hh), 0.0, 1.0)
    xr = A.cx + A.med_hw + (hcx + hw * 0.97 - A.cx - A.med_hw) * np.sqrt(t)
    xl = A.cx - 0.92 * A.med_hw - (A.cx - 0.92 * A.med_hw - (hcx - hw * 0.97)) * t ** 0.7
    cone = _soft(np.minimum(xr - Xm, Xm - xl), ew) * _soft(Ym - (hcy - 1.25 * hh), ew) * _soft(hcy - Ym, ew)
    heart = np.zeros_like(X)
    heart[mr, mc] = np.maximum(heart_m, cone)
    return (mr, mc), med, heart, up


def _aerate_lungs(D: np.ndarray, g: _Grid, lungs: dict[str, _Lung], box: tuple[slice, slice], med: np.ndarray,
                  heart: np.ndarray, dia: np.ndarray, dxm: np.ndarray, cage_w: float) -> np.ndarray:
    """Air in the lungs removes density; the mediastinum and the heart cover the medial lung
    and add their own density.  Returns where any lung is (the union of the lung masks)."""
    mr, mc = box
    Ym = g.Y[mr, mc]
    lung_any = np.zeros_like(g.X)
    for lg in lungs.values():
        b = lg.box
        lg.mask *= (1.0 - med[b]) * (1.0 - 0.96 * heart[b])
        D[b] -= lg.depth * lg.mask
        np.maximum(lung_any[b], lg.mask, out=lung_any[b])
    above = _soft(dia[mr, mc] + 0.01 - Ym, 0.01)
    D[mr, mc] += (0.06 * med[mr, mc] + 0.1 * heart[mr, mc] * (1.0 - med[mr, mc])) * above * _soft(
        cage_w - dxm[mr, mc], 0.03)
    return lung_any


def _spine_and_trachea(D: np.ndarray, g: _Grid, A: Anatomy, box: tuple[slice, slice], dxm: np.ndarray,
                       up: np.ndarray, ew: float) -> None:
    """The spine (with a faint vertebral rhythm) and the dark tracheal air column."""
    mr, mc = box
    Xm, Ym = g.X[mr, mc], g.Y[mr, mc]
    carina = A.lung_cy - 0.5 * A.lung_b
    D[mr, mc] += 0.06 * _soft(0.028 * A.scale - dxm[mr, mc], ew) * (
        0.8 + 0.2 * np.cos(2 * np.pi * (Ym - A.rib_top) / A.rib_gap)) * up
    trachea = _soft(0.012 * A.scale - np.abs(Xm - A.cx - 0.003), ew) * _soft(carina - Ym, 0.01) * _soft(Ym, 0.02)
    D[mr, mc] -= 0.12 * trachea


def _gastric_bubble(D: np.ndarray, g: _Grid, A: Anatomy, lg: _Lung, dia: np.ndarray) -> None:
    """The gastric air bubble under the left hemidiaphragm (``lg`` is the left lung)."""
    bx, by = lg.lx - 0.15 * lg.a, float(lg.base) + 0.02
    br, bc = g.box(bx - 2 * A.bubble, bx + 2 * A.bubble, by - 2 * A.bubble, by + 2 * A.bubble)
    Xb, Yb = g.X[br, bc], g.Y[br, bc]
    rb = np.sqrt(((Xb - bx) / (1.4 * A.bubble)) ** 2 + ((Yb - by) / A.bubble) ** 2)
    D[br, bc] -= 0.14 * _soft(1.0 - rb, 0.15) * _soft(Yb - (dia[br, bc] + 0.012), 0.004)


def _pneumothorax(D: np.ndarray, lungs: dict[str, _Lung],
                  pneumothoraces: Sequence[Finding]) -> dict[str, np.ndarray | float]:
    """An apical-lateral rim without lung markings; returns, per side, where markings are removed."""
    no_marks: dict[str, np.ndarray | float] = {side: 0.0 for side in lungs}
    for f in pneumothoraces:
        for side in _sides(f.side):
            lg = lungs[side]
            r0 = float(f.params.get("r0", 0.7))
            sector = _soft(lg.ulat * 0.9 - lg.v - 0.1, 0.25)            # apical and lateral
            rim = _soft((lg.r - r0) * lg.a, 0.004) * sector * lg.mask
            no_marks[side] = np.maximum(no_marks[side], rim)
            edge = np.exp(-(((lg.r - r0) * lg.a / 0.0045) ** 2)) * sector * lg.mask
            # the collapsed lung is denser the more it has collapsed
            collapsed = _soft((r0 - lg.r) * lg.a, 0.004) * lg.mask * max(0.0, 0.3 * (0.85 - r0))
            D[lg.box] += (float(f.params.get("edge", 0.16)) * edge - float(f.params.get("extra_air", 0.1)) * rim
                          + collapsed)
    return no_marks


def _lung_markings(D: np.ndarray, lungs: dict[str, _Lung], edema: Sequence[Finding], n_mark1: np.ndarray,
                   n_mark2: np.ndarray, no_marks: Mapping[str, np.ndarray | float]) -> None:
    """Vascular lung markings and hila (coarser with edema, absent in a pneumothorax rim)."""
    marks_gain = 1.0
    for f in edema:
        marks_gain = max(marks_gain, float(f.params.get("marks_gain", 1.8)))
    for lg in lungs.values():
        b = lg.box
        hx, hy = lg.lx - lg.sgn * 0.55 * lg.a, lg.ly - 0.02 * lg.b
        dist = np.sqrt((lg.X - hx) ** 2 + ((lg.Y - hy) * 0.7) ** 2)
        # vessels radiate from the hilum (wobbling spokes that fade out) plus fine texture
        ox = hx - lg.sgn * 0.06
        theta = np.arctan2(lg.Y - hy, (lg.X - ox) * lg.sgn)
        spokes = np.sin(8.0 * theta + 1.2 * n_mark1[b])
        ridge = 0.8 * np.exp(-((spokes * 2.5) ** 2)) * _soft(dist - 0.03, 0.015)
        ridge += 0.3 * np.exp(-((n_mark2[b] * 4.5) ** 2))
        keep = 1.0 - no_marks[lg.side]
        weight = lg.mask * (0.2 + 0.8 * np.exp(-dist * 10.0)) * keep
        D[b] += (0.15 * marks_gain * ridge + 0.05) * weight + 0.14 * np.exp(-((dist * 22.0) ** 2)) * lg.ell * keep


def _expose(A: Anatomy, D: np.ndarray, n_low: np.ndarray, body: np.ndarray, S: int) -> np.ndarray:
    """Density -> film: contrast, brightness, low-frequency unevenness, grain and gamma (floats in [0, 1])."""
    img = A.brightness + A.contrast * D + 0.03 * n_low * body
    grain = np.random.default_rng([A.texture_seed & 0xFFFFFFFF, S]).standard_normal((S, S), dtype=np.float32)
    img += 0.012 * grain
    return _gamma_lut(round(A.gamma, 3))[(np.clip(img, 0.0, 1.0) * 4095.0 + 0.5).astype(np.int32)]


def _bones(D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung], lung_any: np.ndarray, body: np.ndarray,
           fractures: Sequence[Finding], no_marks: Mapping[str, np.ndarray | float]) -> None:
    """Posterior ribs (10 per side), fainter anterior ribs, clavicles; rib/clavicle fractures."""
    rib_breaks: dict[tuple[str, int], Finding] = {}
    clav_breaks: dict[str, Finding] = {}
    for f in fractures:
        if f.location == "clavicle":
            clav_breaks[f.side or "right"] = f
        else:
            rib_breaks[(f.side or "right", int(f.params.get("rib", 5)) - 1)] = f
    for side in ("right", "left"):
        breaks = {k: f for (sd, k), f in rib_breaks.items() if sd == side}
        _ribs(D, g, A, lungs, side, lung_any, body, no_marks[side], breaks)
        _clavicle(D, g, A, side, body, clav_breaks.get(side))


def _ribs(D: np.ndarray, g: _Grid, A: Anatomy, lungs: dict[str, _Lung], side: str, lung_any: np.ndarray,
          body: np.ndarray, pm_full: np.ndarray | float, breaks: Mapping[int, Finding]) -> None:
    """The posterior and anterior ribs of one side; ``breaks`` maps a broken rib (0-based) to its fracture."""
    th = 0.0115 * A.scale
    s = _sgn(side)
    lg = lungs[side]
    span = A.lung_dx + 1.06 * lg.a
    low = 0.5 * (lungs["left"].base + lungs["right"].base) + 0.03
    x0, x1 = sorted((A.cx, A.cx + s * 1.06 * span))
    b = g.box(x0 - 0.01, x1 + 0.01, A.rib_top - 0.08, low + 0.06)
    X, Y = g.X[b], g.Y[b]
    pm = np.zeros_like(X)
    if isinstance(pm_full, np.ndarray):
        tmp = np.zeros_like(g.X)
        tmp[lg.box] = pm_full
        pm = tmp[b]
    visible = body[b] * (0.3 + 0.7 * lung_any[b]) * (1.0 - 0.3 * pm) * _soft(low - Y, 0.03)
    dxn = np.maximum((X - A.cx) * s / span, 0.0)  # 0 at the spine, 1 at the chest wall
    lat = _soft(dxn - 0.07, 0.02) * _soft(1.04 - dxn, 0.025)
    # all ten posterior ribs at once: rib k follows
    #   y = rib_top + k * gap - 0.07 * dxn + (0.12 + 0.012 * k) * dxn ** 2
    # so the (fractional) rib number of every pixel has a closed form
    bend = dxn * dxn
    period = A.rib_gap + 0.012 * bend
    kc = (Y - A.rib_top + 0.07 * dxn - 0.12 * bend) / period
    kr = np.clip(np.round(kc), 0, 9)
    band = np.exp(-(((kc - kr) * period / th) ** 2))
    for k in breaks:
        band *= kr != k
    out = A.rib_amp * band * lat * visible
    for k, f in breaks.items():
        y0 = A.rib_top + k * A.rib_gap
        curve = 0.12 + 0.012 * k
        yc = y0 - 0.07 * dxn + curve * bend
        bk = float(f.params.get("break_at", 0.65))
        yc = yc + float(f.params.get("step", 1.2)) * th * _soft(dxn - bk, 0.004)
        gap = 1.0 - np.exp(-(((dxn - bk) * span / float(f.params.get("gap", 0.012))) ** 2))
        bx = A.cx + s * bk * span
        by = y0 - 0.07 * bk + curve * bk ** 2
        callus = float(f.params.get("callus", 0.06)) * np.exp(-(((X - bx) ** 2 + (Y - by) ** 2) / (2.2 * th) ** 2))
        out += A.rib_amp * np.exp(-(((Y - yc) / th) ** 2)) * lat * gap * visible + callus * body[b]
    # anterior ribs: from the lateral ends running down and medially, fading medially
    ka = (Y - A.rib_top - 0.14 - 0.16 * (1.0 - dxn)) / (A.rib_gap + 0.012)
    kar = np.clip(np.round(ka), 0, 9)
    ant = _soft(dxn - 0.4, 0.08) * _soft(1.0 - dxn, 0.03)
    out += 0.4 * A.rib_amp * np.exp(-(((ka - kar) * (A.rib_gap + 0.012) / (1.3 * th)) ** 2)) * ant * visible
    D[b] += out


def _clavicle(D: np.ndarray, g: _Grid, A: Anatomy, side: str, body: np.ndarray, fc: Finding | None) -> None:
    """The clavicle of one side, from the sternal notch laterally and slightly upwards; ``fc`` a fracture."""
    s = _sgn(side)
    x0, x1 = sorted((A.cx, A.cx + s * 0.36 * A.scale))
    b = g.box(x0 - 0.01, x1 + 0.01, A.rib_top - 0.02, A.rib_top + 0.15)
    X, Y = g.X[b], g.Y[b]
    dc = (np.abs(X - A.cx) - 0.04 * A.scale) / (0.3 * A.scale)
    yc = A.rib_top + 0.1 - 0.08 * dc + 0.025 * np.sin(np.pi * np.clip(dc, 0, 1))
    gap = 1.0
    if fc is not None:
        bk = float(fc.params.get("break_at", 0.5))
        yc = yc + float(fc.params.get("step", 1.2)) * 0.014 * A.scale * _soft(dc - bk, 0.01)
        gap = 1.0 - np.exp(-(((dc - bk) * 0.3 * A.scale / float(fc.params.get("gap", 0.012))) ** 2))
    clav = np.exp(-(((Y - yc) / (0.014 * A.scale)) ** 2)) * _soft(dc, 0.02) * _soft(1.0 - dc, 0.03)
    D[b] += 0.16 * clav * gap * body[b] * _soft((X - A.cx) * s, 0.005)
