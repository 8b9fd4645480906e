"""Typed run configuration: dataclasses, presets and a strict YAML / ``--set`` loader.

Every run is described by one :class:`RunConfig`.  It is built from a preset
(``tiny`` for tests, ``small`` for the demo, ``base`` for the paper), then a YAML
file, then ``--set section.key=value`` overrides, in that order.  Unknown keys and
values of the wrong type are errors that name the offending key, so a typo never
silently falls back to a default.  The resolved configuration is saved beside
every checkpoint (``run_config.yaml``).

The parts: :mod:`~medvill.config.checks` (the error type, the choices and the numeric
ranges), :mod:`~medvill.config.sections` (the dataclasses), :mod:`~medvill.config.presets`,
:mod:`~medvill.config.merge` (strict merging of mappings and ``--set`` overrides) and
:mod:`~medvill.config.loading` (the YAML reader and :func:`load_config`).  Every name is
imported from here.  These modules import nothing else of medvill but
:mod:`medvill.fileio` and :mod:`medvill.data.choices`, which import nothing of it, since
almost every module imports this package.
"""

from __future__ import annotations

from .checks import ATTN_IMPLEMENTATIONS, BACKBONES, RANGES, ConfigError, MaskScheme, check_ranges
from .loading import DuplicateKeyError, load_config, load_yaml
from .merge import apply_override, dataclass_from_dict, merge_into
from .presets import PRESETS, preset_config
from .sections import (
    BaselineConfig,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "ATTN_IMPLEMENTATIONS", "BACKBONES", "PRESETS", "RANGES",
    "ConfigError", "MaskScheme",
    "ModelConfig", "TokenizerConfig", "DataConfig", "PretrainConfig", "TrainConfig", "FinetuneConfig",
    "EvalConfig", "BaselineConfig", "RunConfig",
    "check_ranges", "preset_config",
    "DuplicateKeyError", "load_yaml", "load_config", "apply_override", "merge_into", "dataclass_from_dict",
]
