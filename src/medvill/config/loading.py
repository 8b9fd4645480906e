"""Loading a run configuration: preset, YAML file, CLI flags and ``--set`` overrides, validated.

The YAML reader refuses a mapping that names a key twice (:class:`DuplicateKeyError`), where
PyYAML would silently keep the last value.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from ..fileio import not_utf8
from .checks import ConfigError
from .merge import apply_override, merge_into
from .presets import preset_config
from .sections import RunConfig


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names the same key twice (YAML forbids it; PyYAML keeps the last)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(f"duplicate key {key!r} on lines {seen[key]} and {line}")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a duplicate key, naming it and both lines."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(
    preset: str = "base",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then YAML file, then ``extra`` (CLI flags), then ``--set`` overrides; validated."""
    cfg = preset_config(preset)
    if yaml_path is not None:
        cfg = _apply_config_file(cfg, preset, Path(yaml_path))
    if extra:
        merge_into(cfg, extra, "")
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg.validate()


def _read_config_file(path: Path) -> dict[str, Any]:
    """The sections of a YAML config file (empty for an empty file); every failure is a
    :class:`ConfigError` that names the file."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _apply_config_file(cfg: RunConfig, preset: str, path: Path) -> RunConfig:
    """``cfg`` with the file's keys merged in; a file naming another ``preset`` than ``preset``
    starts over from that one."""
    data = _read_config_file(path)
    if "preset" in data and data["preset"] != preset:
        cfg = preset_config(str(data["preset"]))
    try:
        merge_into(cfg, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg
