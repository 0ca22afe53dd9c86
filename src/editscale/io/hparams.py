"""The one base of every hyperparameter dataclass, and the start-up check of config values.

Standard library only (no torch), so that :func:`editscale.config.check_config` can build the
dataclasses from a config before any job runs. A hyperparameter class is a dataclass deriving
from :class:`HParams`: its ``label`` names the set in messages, its ``__post_init__`` refuses
values it cannot run with, and :meth:`HParams.from_dict` builds it from a mapping after refusing
keys that are not fields. :func:`check_hparams` adds the value types and names the config key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, ClassVar, Literal, Mapping, TypeVar, Union

__all__ = ["HParams", "HParamError", "check_hparams"]

T = TypeVar("T")
H = TypeVar("H", bound="HParams")


class HParams:
    """Mixin of the hyperparameter dataclasses (frozen or not): :meth:`from_dict`."""

    label: ClassVar[str] = "hyperparameters"  # how messages name the set ("ROME hyperparameters")

    @classmethod
    def from_dict(cls: type[H], d: Mapping[str, Any] | None) -> H:
        """``cls(**d)`` after refusing keys that are not fields (all named, with the known ones)."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.label}: {unknown} (known: {sorted(known)})")
        return cls(**d)


class HParamError(ValueError):
    """A hyperparameter a dataclass does not accept; ``key`` is its dotted config key.

    Same attributes and message as :class:`editscale.config.ConfigError` (which is not imported
    here, to keep this module free of the config machinery)."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


# how a YAML value's type, and a field annotation, read in a message
_VALUE_KINDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    tuple: "a list",
    dict: "a mapping",
}
_EXPECTED = {**_VALUE_KINDS, bool: "true or false", type(None): "null"}


def _type_name(value: Any) -> str:
    """How a YAML value reads in a message: ``'fast' (a string)``."""
    if value is None:
        return "null"
    return f"{value!r} ({_VALUE_KINDS.get(type(value), type(value).__name__)})"


def _expected(tp: Any) -> str:
    """A type annotation in words: ``a number``, ``a list or null``, ``one of ['a', 'b']``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if origin is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_expected(args[0])}" if args else "a list"
    return _EXPECTED.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a field annotation: ints are numbers, booleans are neither."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and (
            not args or all(_matches(v, args[0]) for v in value)
        )
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, tp) if isinstance(tp, type) else True


def _refused_by(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The given keys without which ``cls`` accepts ``values``: what its ``__post_init__`` objects
    to (several bad values at once leave none: the caller then looks for names in the message)."""
    out = []
    for name in values:
        try:
            cls(**{k: v for k, v in values.items() if k != name})
        except (TypeError, ValueError):
            continue
        out.append(name)
    return out


def _check_names(cls: type, values: Mapping[str, Any], key) -> None:
    """Every key is a field (else the closest match and the known ones); every required field is
    given."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise HParamError(
                key(name),
                f"is not a hyperparameter of {cls.__name__} ({hint}known: {sorted(fields)})",
            )
    for name, f in fields.items():
        if (
            name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise HParamError(key(name), f"is required by {cls.__name__} but missing")


def check_hparams(
    cls: type[T], values: Mapping[str, Any], where: str, keys: Mapping[str, str] | None = None
) -> T:
    """``cls`` built from a config's ``values``, or :class:`HParamError` naming the config key.

    Checks, in order: every key is a field of ``cls`` (else the known ones and the closest
    match), every field without a default is given, every value fits the field's annotation
    (an integer is accepted for a float, a boolean for neither, and no number for a boolean),
    and the dataclass's own ``__post_init__`` accepts them.

    ``where`` is the config key holding ``values`` (e.g. ``methods.mend.training``): a value's key
    is ``<where>.<name>`` unless ``keys`` gives another (merged values: ``per_model`` entries
    override ``hparams``). A ``__post_init__`` error is pinned on the given value without which the
    dataclass accepts the rest, else on the first given value its message names, else on ``where``.
    """
    keys = keys or {}

    def key(name: str) -> str:
        return keys.get(name, f"{where}.{name}")

    _check_names(cls, values, key)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise HParamError(
                key(name), f"expected {_expected(hints[name])}, got {_type_name(value)}"
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        culprits = _refused_by(cls, values) or [
            n for n in values if re.search(rf"\b{re.escape(n)}\b", str(e))
        ]
        if not culprits:
            raise HParamError(where, f"{e} (given: {dict(values)})") from None
        given = ", ".join(f"{n}={values[n]!r}" for n in culprits)
        raise HParamError(key(culprits[0]), f"{e} (given: {given})") from None
