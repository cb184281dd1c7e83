"""Search spaces: the ranges of a task's config that hyperparameter search explores.

Each task declares its default space beside its config (``Task.search_space``): config
keys as dotted paths (``train.lr``, ``model.dropout``) mapped to a :class:`Float`,
:class:`Int` or :class:`Choice`. A YAML file narrows or replaces it (:func:`from_yaml`),
and :func:`check` proves every range against the task's config dataclass before a
single trial starts: a key the config does not have, a range of the wrong type, an
empty range, or a value the config refuses, each named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

import yaml

from interest import config as C
from interest.config import ConfigError


@dataclass(frozen=True)
class Float:
    """A real number in [low, high]; ``log``: sampled uniformly in its logarithm."""

    low: float
    high: float
    log: bool = False

    def ends(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Int:
    """An integer in [low, high], both included; ``log`` as for :class:`Float`."""

    low: int
    high: int
    log: bool = False

    def ends(self) -> list[int]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple

    def ends(self) -> list[Any]:
        return list(self.values)


Param = Union[Float, Int, Choice]
Space = dict[str, Param]


def parse(key: str, spec: Any) -> Param | Any:
    """A parameter of a YAML space: ``{low, high[, log]}`` (a float range when either end
    is a float, else an integer range), ``{values: [...]}``, or a plain value (the key is
    fixed, not searched)."""
    if not isinstance(spec, dict):
        return spec
    unknown = set(spec) - {"low", "high", "log", "values"}
    if unknown:
        raise ConfigError(f"search space key {key!r}: unknown field(s) {', '.join(sorted(unknown))}; "
                          "give low and high (and log), or values")
    if "values" in spec:
        if set(spec) != {"values"} or not isinstance(spec["values"], list):
            raise ConfigError(f"search space key {key!r}: values must be a list, alone")
        return Choice(tuple(spec["values"]))
    if not {"low", "high"} <= set(spec):
        raise ConfigError(f"search space key {key!r}: a range needs low and high")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"search space key {key!r}: low and high must be numbers, got {low!r} and {high!r}")
    kind = Float if isinstance(low, float) or isinstance(high, float) else Int
    return kind(low, high, bool(spec.get("log", False)))


def from_yaml(path: str, default: Space) -> tuple[Space, dict[str, Any]]:
    """(space, fixed values) of the YAML file ``path`` over ``default``: each key given
    replaces the default's range for it, ``null`` drops a key from the search, a plain
    value fixes it; ``replace: true`` starts from nothing instead of the default."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read search space {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space is a mapping of config keys to ranges")
    space = {} if data.pop("replace", False) else dict(default)
    fixed = {}
    for key, spec in data.items():
        space.pop(key, None)
        value = parse(key, spec)
        if isinstance(value, (Float, Int, Choice)):
            space[key] = value
        elif value is not None:
            fixed[key] = value
    return space, fixed


def merge(base: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a nested config dict) with the dotted ``flat`` values set in it."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[last] = value
    return out


def check(space: Space, config_cls: type, base: dict[str, Any]) -> None:
    """Fail, naming the key, on anything wrong with ``space`` for ``config_cls``: an
    unknown key, a range of the wrong type, an empty range, or an end of a range the
    config refuses (each end is built into the config)."""
    if not space:
        raise ConfigError("the search space is empty: nothing to search")
    for key, param in space.items():
        field_type = _field_type(config_cls, key)
        if isinstance(param, (Float, Int)):
            if not param.low < param.high:
                raise ConfigError(f"search space key {key!r}: empty range [{param.low}, {param.high}]")
            if param.log and param.low <= 0:
                raise ConfigError(f"search space key {key!r}: a log range needs low > 0, got {param.low}")
            if isinstance(param, Float) and field_type is int:
                raise ConfigError(f"search space key {key!r}: the config's {key} is an integer; give integer ends")
            if isinstance(param, Int) and field_type is not int and field_type is not float:
                raise ConfigError(f"search space key {key!r}: the config's {key} is not a number")
        elif not param.values:
            raise ConfigError(f"search space key {key!r}: no values to choose from")
        for value in param.ends():
            try:
                C.from_dict(config_cls, merge(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search space key {key!r}: value {value!r}: {exc}") from None


def _field_type(config_cls: type, key: str) -> Any:
    """The declared type of the dotted ``key`` of ``config_cls`` (``X | None`` read as
    ``X``); ConfigError when it has none."""
    cls = config_cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            raise ConfigError(f"search space key {key!r}: {config_cls.__name__} has no {'.'.join(parts[:i + 1])!r}"
                              + (f"; keys there: {', '.join(hints)}" if hints else ""))
        cls = hints[part]
        if typing.get_origin(cls) in (typing.Union, types.UnionType):
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    return cls
