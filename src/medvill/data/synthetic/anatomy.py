"""Per-patient anatomy and exposure, and patient-side helpers."""

from __future__ import annotations

import numpy as np

from .cases import Anatomy


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy and exposure."""
    s = float(rng.uniform(0.93, 1.04))
    return Anatomy(
        cx=float(0.5 + rng.normal(0, 0.012)),
        angle=float(rng.normal(0, 0.022)),
        scale=s,
        lung_dx=0.205 * s * float(rng.uniform(0.97, 1.03)),
        lung_a=0.172 * s * float(rng.uniform(0.95, 1.05)),
        lung_b=0.335 * s * float(rng.uniform(0.95, 1.04)),
        lung_cy=float(0.46 + rng.normal(0, 0.012)),
        dome_h=float(rng.uniform(0.07, 0.1)) * s,
        right_dome_up=float(rng.uniform(0.0, 0.025)),
        heart_hw=0.148 * s * float(rng.uniform(0.94, 1.05)),
        heart_hh=0.14 * s * float(rng.uniform(0.95, 1.05)),
        heart_dx=0.045 * s,
        med_hw=0.058 * s * float(rng.uniform(0.9, 1.1)),
        rib_top=float(0.125 + rng.normal(0, 0.006)),
        rib_gap=0.064 * s * float(rng.uniform(0.96, 1.04)),
        rib_amp=float(rng.uniform(0.08, 0.12)),
        contrast=float(rng.uniform(0.88, 1.12)),
        brightness=float(rng.uniform(-0.03, 0.04)),
        gamma=round(float(rng.uniform(0.9, 1.25)), 3),
        bubble=float(rng.uniform(0.025, 0.04)) if rng.random() < 0.7 else 0.0,
        texture_seed=int(rng.integers(0, 2**62)),
    )


def _sgn(side: str) -> int:
    """Image x direction of a patient side: the patient's left is the image's right."""
    return 1 if side == "left" else -1


def _sides(side: str | None) -> tuple[str, ...]:
    return ("left", "right") if side == "bilateral" else ((side,) if side else ())
