"""Findings: what is drawn (which abnormalities and devices a case has, and their parameters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .anatomy import _sides
from .cases import Finding
from .observations import ABNORMALITIES, ATE, CARD, CON, ECM, EDE, EFF, FRA, LES, OPA, PLO, PNA, PTX, SD

#: Relative frequency of each abnormality when a case has findings.
_WEIGHTS = {EFF: 1.2, OPA: 1.0, ATE: 1.1, CARD: 1.0, EDE: 1.0, CON: 1.0, PTX: 1.0, LES: 1.0,
            PNA: 0.75, ECM: 0.95, FRA: 0.95, PLO: 0.95}
#: Number of abnormalities per case (0 -> "No Finding").
_N_FINDINGS_P = (0.30, 0.27, 0.22, 0.14, 0.07)
#: Probability that a finding is reported as uncertain (and drawn faintly).
_P_UNCERTAIN = {EFF: 0.15, OPA: 0.15, ATE: 0.2, CARD: 0.12, EDE: 0.15, CON: 0.1, PTX: 0.1, LES: 0.15,
                ECM: 0.15, FRA: 0.15, PLO: 0.15}
_DEVICE_KINDS = ("ett", "ng", "cvc", "picc", "pacemaker", "ecg")
_DEVICE_P = (0.3, 0.18, 0.17, 0.15, 0.22, 0.2)


def _pick(rng: np.random.Generator, seq: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    if p is None:
        return seq[int(rng.integers(len(seq)))]
    pa = np.asarray(p, dtype=np.float64)
    return seq[int(rng.choice(len(seq), p=pa / pa.sum()))]


def _lr(rng: np.random.Generator) -> str:
    return "left" if rng.random() < 0.5 else "right"


def sample_findings(rng: np.random.Generator) -> list[Finding]:
    """Draw the abnormalities (and devices) of one case; see the package docstring."""
    k = int(rng.choice(len(_N_FINDINGS_P), p=_N_FINDINGS_P))
    names = list(_WEIGHTS)
    w = np.array([_WEIGHTS[o] for o in names])
    chosen = [names[i] for i in rng.choice(len(names), size=k, replace=False, p=w / w.sum())] if k else []
    # clinically plausible companions
    if EDE in chosen:
        if rng.random() < 0.35 and CARD not in chosen:
            chosen.append(CARD)
        if rng.random() < 0.3 and EFF not in chosen:
            chosen.append(EFF)
    if CARD in chosen and rng.random() < 0.15 and EFF not in chosen:
        chosen.append(EFF)
    order = {o: i for i, o in enumerate(ABNORMALITIES)}
    chosen.sort(key=order.__getitem__)
    used_lobes: set[tuple[str, str]] = set()
    out = [_make_finding(o, rng, used_lobes, co=chosen) for o in chosen]
    ptx = [f for f in out if f.observation == PTX]
    devices: list[str] = []
    if rng.random() < 0.22:
        n_dev = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        idx = rng.choice(len(_DEVICE_KINDS), size=n_dev, replace=False, p=np.array(_DEVICE_P) / sum(_DEVICE_P))
        devices = [_DEVICE_KINDS[i] for i in sorted(idx)]
    if ptx and ptx[0].value == 1 and rng.random() < 0.35:
        devices.append(f"chest_tube_{ptx[0].side}")
    if devices:
        ecg_at = [(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.12, 0.7))) for _ in range(int(rng.integers(2, 4)))]
        out.append(Finding(SD, 1, params={"devices": devices, "ecg_at": ecg_at}))
    return out


def _make_finding(obs: str, rng: np.random.Generator, used_lobes: set, co: Sequence[str]) -> Finding:
    """One drawn ``obs``: whether it is reported as uncertain (drawn faintly), then its parameters."""
    unc = obs in _P_UNCERTAIN and rng.random() < _P_UNCERTAIN[obs]
    value = -1 if unc else 1
    if obs == CARD:
        return _make_cardiomegaly(value, unc, rng)
    if obs == ECM:
        return _make_mediastinum(value, unc, rng)
    if obs == EFF:
        return _make_effusion(value, unc, rng, co)
    if obs == PTX:
        return _make_pneumothorax(value, unc, rng)
    if obs in (OPA, CON, PNA):
        return _make_airspace(obs, value, unc, rng, used_lobes)
    if obs == LES:
        return _make_lesion(value, unc, rng)
    if obs == EDE:
        return _make_edema(value, unc, rng)
    if obs == ATE:
        return _make_atelectasis(value, unc, rng)
    if obs == PLO:
        return _make_pleural_other(value, unc, rng)
    if obs == FRA:
        return _make_fracture(value, unc, rng)
    raise ValueError(f"no finding generator for {obs!r}")


def _make_cardiomegaly(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    if unc:
        return Finding(CARD, value, severity="mild", faint=True, params={"heart_scale": float(u(1.15, 1.2))})
    sev = _pick(rng, ("mild", "moderate", "severe"), (0.45, 0.35, 0.2))
    lo, hi = {"mild": (1.3, 1.38), "moderate": (1.42, 1.52), "severe": (1.56, 1.66)}[sev]
    return Finding(CARD, value, severity=sev, params={"heart_scale": float(u(lo, hi))})


def _make_mediastinum(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    if unc:
        return Finding(ECM, value, severity="mild", faint=True, params={"med_scale": float(u(1.35, 1.45))})
    sev = _pick(rng, ("mild", "marked"), (0.55, 0.45))
    lo, hi = {"mild": (1.65, 1.85), "marked": (1.95, 2.25)}[sev]
    return Finding(ECM, value, severity=sev, params={"med_scale": float(u(lo, hi))})


def _make_effusion(value: int, unc: bool, rng: np.random.Generator, co: Sequence[str]) -> Finding:
    u = rng.uniform
    side = _pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3))
    if EDE in co and rng.random() < 0.7:
        side = "bilateral"
    if unc:
        return Finding(EFF, value, side=side, severity="small", faint=True,
                       params={"height": float(u(0.08, 0.1)), "meniscus": float(u(0.25, 0.4))})
    sev = _pick(rng, ("small", "moderate", "large"), (0.45, 0.35, 0.2))
    lo, hi = {"small": (0.14, 0.19), "moderate": (0.26, 0.34), "large": (0.42, 0.52)}[sev]
    return Finding(EFF, value, side=side, severity=sev,
                   params={"height": float(u(lo, hi)), "meniscus": float(u(0.25, 0.4))})


def _make_pneumothorax(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    side = _lr(rng)
    if unc:
        return Finding(PTX, value, side=side, severity="small", location="apical", faint=True,
                       params={"r0": float(u(0.87, 0.9)), "extra_air": 0.05, "edge": 0.1})
    sev = _pick(rng, ("small", "moderate", "large"), (0.45, 0.35, 0.2))
    lo, hi = {"small": (0.75, 0.8), "moderate": (0.6, 0.68), "large": (0.42, 0.5)}[sev]
    return Finding(PTX, value, side=side, severity=sev, location="apical" if sev == "small" else "lateral",
                   params={"r0": float(u(lo, hi)), "extra_air": 0.11, "edge": float(u(0.16, 0.2))})


def _make_airspace(obs: str, value: int, unc: bool, rng: np.random.Generator, used_lobes: set) -> Finding:
    """Lung Opacity, Consolidation or Pneumonia in a lobe not used yet (or both bases)."""
    u = rng.uniform
    bilateral = obs == OPA and rng.random() < 0.18
    for _ in range(10):
        side = "bilateral" if bilateral else _lr(rng)
        zone = "lower" if bilateral else _pick(rng, ("upper", "middle", "lower"), (0.3, 0.25, 0.45))
        if all((s, zone) not in used_lobes for s in _sides(side)):
            break
    used_lobes.update((s, zone) for s in _sides(side))
    params: dict[str, Any] = {"tex": int(rng.integers(0, 2**62)), "du": float(u(-0.1, 0.15)),
                              "dv": float(u(-0.08, 0.08)), "rx": float(u(0.07, 0.1)), "ry": float(u(0.06, 0.085))}
    if obs in (CON, PNA):                               # larger and less sharply marginated
        params.update(rx=float(u(0.09, 0.12)), ry=float(u(0.075, 0.1)))
    if obs == OPA:
        params["amp"] = float(u(0.3, 0.38)) if unc else float(u(0.55, 0.7))
        if not unc and rng.random() < 0.35:
            params["pneumonia"] = -1 if rng.random() < 0.8 else 1
    elif obs == CON:
        params["amp"] = float(u(0.4, 0.5)) if unc else float(u(0.8, 0.95))
        if not unc and rng.random() < 0.5:
            params["pneumonia"] = -1 if rng.random() < 0.65 else 1
    else:
        value = 1 if rng.random() < 0.45 else -1      # reported pneumonia: often uncertain,
        unc = False                                     # but the opacity itself is clear
        params["amp"] = float(u(0.6, 0.8))
    return Finding(obs, value, side=side, location=zone, faint=unc, params=params)


def _make_lesion(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    side = _lr(rng)
    v = float(u(-0.6, 0.45))
    zone = "upper" if v < -0.2 else ("middle" if v < 0.2 else "lower")
    params = {"u": float(u(-0.3, 0.55)), "v": v, "phase": float(u(0, 2 * np.pi))}
    if unc:
        params.update(radius=float(u(0.014, 0.017)), amp=float(u(0.16, 0.2)), lobulation=0.0)
        return Finding(LES, value, side=side, severity="small", location=zone, faint=True, params=params)
    if rng.random() < 0.6:
        params.update(radius=float(u(0.018, 0.026)), amp=float(u(0.28, 0.34)), lobulation=0.0)
        sev = "small"
    else:
        params.update(radius=float(u(0.045, 0.068)), amp=float(u(0.32, 0.38)), lobulation=float(u(0.05, 0.14)))
        sev = "large"
    return Finding(LES, value, side=side, severity=sev, location=zone, params=params)


def _make_edema(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    tex = int(rng.integers(0, 2**62))
    if unc:
        return Finding(EDE, value, side="bilateral", severity="mild", faint=True,
                       params={"amp": 0.07, "marks_gain": 1.3, "tex": tex})
    sev = _pick(rng, ("mild", "moderate", "severe"), (0.45, 0.35, 0.2))
    amp, gain = {"mild": (0.13, 1.5), "moderate": (0.19, 1.8), "severe": (0.26, 2.1)}[sev]
    return Finding(EDE, value, side="bilateral", severity=sev, params={"amp": amp, "marks_gain": gain, "tex": tex})


def _make_atelectasis(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    side = _pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3))
    params = {"u": float(u(0.0, 0.35)), "tilt": float(u(-0.2, 0.2)), "length": float(u(0.12, 0.17)),
              "thickness": float(u(0.008, 0.011)), "above": float(u(0.08, 0.12)),
              "amp": float(u(0.15, 0.2)) if unc else float(u(0.3, 0.4)), "dome_raise": 0.006 if unc else 0.015}
    return Finding(ATE, value, side=side, location="lower", faint=unc, params=params)


def _make_pleural_other(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    side = _lr(rng)
    loc = _pick(rng, ("lateral", "apical"), (0.65, 0.35))
    params = {"thickness": float(u(0.013, 0.016)) if unc else float(u(0.02, 0.032)), "amp": 0.6 if unc else 1.0}
    return Finding(PLO, value, side=side, location=loc, faint=unc, params=params)


def _make_fracture(value: int, unc: bool, rng: np.random.Generator) -> Finding:
    u = rng.uniform
    side = _lr(rng)
    loc = "rib" if (unc or rng.random() < 0.7) else "clavicle"
    sign = 1.0 if rng.random() < 0.5 else -1.0
    params = {"step": sign * (0.8 if unc else float(u(1.6, 2.2))), "gap": 0.01 if unc else float(u(0.016, 0.022)),
              "callus": 0.04 if unc else 0.1}
    if loc == "rib":
        params.update(rib=int(rng.integers(3, 10)), break_at=float(u(0.55, 0.8)))
    else:
        params.update(break_at=float(u(0.35, 0.65)))
    return Finding(FRA, value, side=side, location=loc, faint=unc, params=params)
