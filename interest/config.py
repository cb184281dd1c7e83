"""Configs are dataclasses: built from YAML, dotted overrides and plain dicts.

Configs cross process boundaries (driver -> Ray workers) as plain dicts
(:func:`to_dict`) and are rebuilt with :func:`from_dict`, which checks every key
and type so a typo fails on the driver, before any worker starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from interest import io

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key, value or file is wrong."""


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and bad types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r}; valid keys: {', '.join(sorted(where + n for n in names))}"
        )
    for f in dataclasses.fields(cls):
        # A nested config given in part keeps its field's own defaults for the rest
        # (a task may default train.metric to its own metric).
        if (f.name in data and isinstance(data[f.name], dict) and f.default_factory is not dataclasses.MISSING
                and dataclasses.is_dataclass(hints[f.name])):
            data[f.name] = _merge(to_dict(f.default_factory()), data[f.name])
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if len(args) < len(typing.get_args(tp)):
                return None
        return _coerce(args[0], value, key) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=key + ".")
    if origin is dict:
        _, inner = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return {k: _coerce(inner, v if v is not None or not dataclasses.is_dataclass(inner) else {}, f"{key}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        items = [_coerce(inner, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r} must be {tp.__name__}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (datetime.date, datetime.datetime)):  # YAML reads 2026-12-01 as a date
            return value.isoformat()
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    return value


_NULLS = ("null", "Null", "NULL", "~")


def _scalar(raw: str) -> Any:
    """A command-line value as YAML reads it (numbers, booleans, lists), except where YAML
    would read a plain string as syntax: ``separator=|`` is a block-scalar indicator to
    YAML (giving "") and ``separator=#`` a comment (giving None), so those stay as typed."""
    if not raw.strip():
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value in (None, "") and raw.strip() not in (*_NULLS, '""', "''"):
        return raw
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = _scalar(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from ``base`` values, then a YAML file (local or ``s3://``: a
    search's ``best.yaml`` lives beside its state), then dotted overrides."""
    data: dict[str, Any] = dict(base or {})
    if path:
        try:
            loaded = yaml.safe_load(io.read_bytes(str(path)) if io.is_s3(str(path)) else Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = _merge(data, loaded)
    return from_dict(cls, apply_overrides(data, overrides or []))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
