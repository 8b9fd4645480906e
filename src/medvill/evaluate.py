"""Kept for code written against medvill 0.1: the comparison tables (``medvill compare``) now
live in :mod:`medvill.recipes.compare`."""

from __future__ import annotations

from .recipes.compare import SIGNIFICANCE, Comparison, compare_runs

__all__ = ["SIGNIFICANCE", "Comparison", "compare_runs"]
