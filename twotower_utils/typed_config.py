"""Typed configuration sections as frozen dataclasses, validated from plain JSON data.

`choice` and `number` declare a field with its allowed values; `build_dataclass` builds a
nested dataclass from a dict and collects every problem (unknown keys, wrong types, values out
of range, NaN or infinity) with its key path, so one `ConfigError` can name them all. The
project's sections and defaults live in `twotower_utils.config`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any

__all__ = ["ConfigError", "build_dataclass", "choice", "number"]


class ConfigError(ValueError):
    """Raised when a configuration (file or overrides) is not valid; lists every problem
    (also as the list `problems`)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def choice(*allowed: str, default: str) -> Any:
    """A dataclass field whose value must be one of `allowed`."""
    return field(default=default, metadata={"choices": allowed})


def number(default: float | int | None, lo=None, hi=None, lo_open=False, hi_open=False) -> Any:
    """A dataclass field whose value must lie in the interval from `lo` to `hi` (None:
    unbounded; `*_open`: the bound itself is excluded)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def build_dataclass(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """An instance of the (frozen, nested) dataclass `cls` from the plain dict `raw`.

    Every problem (unknown key, wrong type, value outside its field's choices or range) is
    appended to `problems` as `key.path = value: what is allowed`; fields with problems keep
    their defaults, so all problems of a config are found in one pass. Returns the instance,
    or None when `raw` is not a dict.
    """
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "<top level>"
        problems.append(f"{where} = {raw!r}: expected an object (JSON dict)")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in fields:
            problems.append(
                f"{prefix}{key}: unknown key; allowed keys: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, spec in fields.items():
        if name not in raw:
            continue
        key_path = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, raw[name], key_path + ".", problems)
            continue
        value = raw[name]
        error = _type_error(value, hint) or _constraint_error(value, spec)
        if error:
            problems.append(f"{key_path} = {value!r}: {error}")
        else:
            kwargs[name] = float(value) if hint is float else value
    kwargs = {k: v for k, v in kwargs.items() if v is not None or _optional(hints[k])}
    return cls(**kwargs)


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _type_error(value: Any, hint: Any) -> str | None:
    if _optional(hint):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list) or any(_type_error(v, inner) for v in value):
            return f"expected a list of {inner.__name__}"
        return None
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict) or any(
            _type_error(k, key_t) or _type_error(v, val_t) for k, v in value.items()
        ):
            return (f"expected an object mapping {key_t.__name__} to "
                    f"{getattr(val_t, '__name__', 'values')}")
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "expected an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return "expected a finite number (NaN and infinity are never valid here)"
        return None if ok else "expected a number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    return None


def _constraint_error(value: Any, spec: dataclasses.Field) -> str | None:
    if value is None:
        return None
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        return f"expected one of {', '.join(map(repr, choices))}"
    bounds = spec.metadata.get("range")
    if bounds:
        lo, hi, lo_open, hi_open = bounds
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            return f"expected a value in {_interval(lo, hi, lo_open, hi_open)}"
    return None


def _interval(lo, hi, lo_open, hi_open) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return f"{left}{lo_s}, {hi_s}{right}"
