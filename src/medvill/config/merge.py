"""Strict merging of plain mappings into the configuration dataclasses.

A key the dataclass does not have, or a value of the wrong type, is a :class:`ConfigError`
that names the key; :func:`apply_override` reads one ``--set section.key=value`` override.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml

from .checks import ConfigError


def apply_override(cfg: Any, item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    merge_into(cfg, nested, "")


def merge_into(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Strictly merge a mapping into a dataclass instance (in place)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys here: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge_into(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp`` of config key ``key``, else a :class:`ConfigError`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(value, tp, key)
    scalar = next((convert for t, convert in _SCALARS.items() if tp is t), None)
    if scalar is not None:
        return scalar(value, key)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """``None`` where the union allows it, else the first member type that takes ``value``
    (the first member's error if none does)."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _coerce_enum(value: Any, tp: type[enum.Enum], key: str) -> Any:
    try:
        return tp(value)
    except ValueError:
        choices = ", ".join(m.value for m in tp)
        raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bool):  # YAML 1.1 reads no / off / yes / on as booleans: train.mixed_precision=no
        return "yes" if value else "no"
    raise ConfigError(f"{key}: expected a string, got {value!r}")


#: The converter of each scalar type a config key can have.
_SCALARS: dict[type, Callable[[Any, str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a dataclass from a mapping with the same strict checks (used by checkpoints)."""
    obj = cls()
    merge_into(obj, copy.deepcopy(data), prefix)
    return obj
