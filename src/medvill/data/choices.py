"""The fixed choices of the data loaders, each defined once here.

This module imports nothing, so settings code (``medvill.config``, the CLI) can check a value
against these tuples without loading the loaders.

* :data:`SPLITS`: the split names every loader takes (data files may write others, e.g.
  ``valid``: :func:`medvill.data.common.normalize_split` maps them onto these).
* :data:`SECTIONS`: which report text the model reads (:func:`medvill.data.records.choose_text`).
* :data:`POLICIES`: what a bad row does (:class:`medvill.data.common.RowPolicy`).

The CheXpert label values and their conversions are in :mod:`medvill.data.label_values`.
"""

from __future__ import annotations

#: Split names: training, validation (model selection), test.
SPLITS = ("train", "validate", "test")

#: ``longer`` of FINDINGS and IMPRESSION (the paper's rule), one of them (the other as
#: fallback), or ``both`` joined.
SECTIONS = ("longer", "findings", "impression", "both")

#: A bad row is skipped and counted (``skip``) or raises (``error``).
POLICIES = ("skip", "error")
