"""Typed, documented dataclass fields checked from their type hints (the engine of config.py).

`ConfigSection` is the mixin of every config section: on creation each field is coerced to its
type hint (Literal, Optional/Union, list, bool, int, float, str) or a `ConfigError` names the field,
what was given and what is allowed; the section's own `_check` then checks values across fields.
`config_field(default, doc)` declares a field with its one-line documentation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import field, fields
from typing import Any, Literal, Union

from ptycho_torch.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Generic checking: types and allowed values come from the type hints.
# --------------------------------------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_describe(inner)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `name`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        # allow case-insensitive strings ("CSV" -> "csv")
        if isinstance(value, str):
            for a in allowed:
                if isinstance(a, str) and a.lower() == value.lower():
                    return a
        raise ConfigError(f"{name}: got {value!r}; allowed values are {_describe(tp)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: got {value!r}; expected {_describe(tp)}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: got {value!r}; expected {_describe(tp)}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name}: got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; expected a number")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{name}: got {value!r}; expected a number")
        if not math.isfinite(number):
            raise ConfigError(f"{name}: got {value!r}; expected a finite number (not nan or inf)")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"{name}: got {value!r}; expected a string")
    return value


class ConfigSection:
    """Mixin: type-check every field against its hint, then run `_check`."""

    section: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            qual = f"{self.section}.{f.name}" if self.section else f.name
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name], qual))
        self._check()

    def _check(self) -> None:  # pragma: no cover - overridden
        pass

    def _fail(self, name: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.section}.{name}: {message}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Any:
        """Build from a mapping; unknown keys are errors that list the known ones."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.section}: unknown key(s) {', '.join(unknown)}; "
                f"known keys are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> one-line description (from the `metadata['doc']` of each field)."""
        return {f.name: f.metadata.get("doc", "") for f in fields(cls)}


def config_field(default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})
