"""The one base of every hyperparameter dataclass, and the start-up check of config values.

Standard library only (no torch), so that :func:`editscale.config.check_config` can build the
dataclasses from a config before any job runs. A hyperparameter class is a dataclass deriving
from :class:`HParams`: its ``label`` names the set in messages, each field's annotation gives its
type and shape (``list[tuple[int, int]]``: a list of pairs of integers) and :func:`param` next to
it the values it takes (:class:`Rule`: bounds, choices, a non-empty list, a pattern of text).
Building the dataclass checks every field against both (:meth:`HParams.__post_init__`; a class
with its own ``__post_init__`` calls ``super().__post_init__()`` first, then refuses the
combinations of values it cannot run with), and :meth:`HParams.from_dict` builds it from a mapping
after refusing keys that are not fields. :func:`check_hparams` names the config key of a refusal.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
import types
import typing
from typing import Any, ClassVar, Iterator, Literal, Mapping, TypeVar, Union

__all__ = ["HParams", "HParamError", "FieldError", "Rule", "param", "check_hparams"]

T = TypeVar("T")
H = TypeVar("H", bound="HParams")


@dataclasses.dataclass(frozen=True)
class Rule:
    """The values a hyperparameter takes beyond its annotation's type and shape.

    The bounds apply to every number in the value (a list's elements, a pair's members); ``text``
    (a regular expression and what it asks, in words) to every string in it. ``what`` describes
    the annotation in messages when its words would not ("a list of [length, count] pairs")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple = ()
    nonempty: bool = False  # a list with at least one element
    text: tuple[str, str] | None = None
    what: str | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the annotated type), or None."""
        if self.choices and value not in self.choices:
            return f"must be {' or '.join(map(repr, self.choices))}, not {value!r}"
        if self.nonempty and isinstance(value, (list, tuple)) and not value:
            return f"must be non-empty, got {value!r}"
        for at, leaf in _leaves(value):
            problem = self._leaf_problem(leaf)
            if problem is not None:
                where = f"{at} = {leaf!r}" if at else repr(leaf)
                given = f" (given: {value!r})" if at else ""
                return f"{where} {problem}{given}"
        return None

    def _leaf_problem(self, leaf: Any) -> str | None:
        if isinstance(leaf, str):
            if self.text is not None and not re.search(self.text[0], leaf):
                return f"must {self.text[1]}"
            return None
        bounds = [("ge", ">=", self.ge), ("gt", ">", self.gt), ("le", "<=", self.le)]
        for name, sign, bound in bounds:
            if bound is not None and not _within(leaf, name, bound):
                return f"is out of range (must be {sign} {bound:g})"
        return None


def _within(x: float, name: str, bound: float) -> bool:
    return {"ge": x >= bound, "gt": x > bound, "le": x <= bound}[name]


def _leaves(value: Any, at: str = "") -> Iterator[tuple[str, Any]]:
    """The numbers (booleans excluded) and strings in ``value``, with their index path."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{at}[{i}]")
    elif isinstance(value, str) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
    ):
        yield at, value


def param(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule: Any):
    """A dataclass field with its :class:`Rule` (``ge``, ``gt``, ``le``, ``choices``,
    ``nonempty``, ``text``, ``what``): ``steps: int = param(20, ge=1)``."""
    return dataclasses.field(
        default=default, default_factory=factory, metadata={"rule": Rule(**rule)}
    )


class FieldError(ValueError):
    """A field's value of the wrong type or shape, or outside its :class:`Rule`; ``field`` names
    it and ``problem`` says what is wrong."""

    def __init__(self, label: str, name: str, problem: str):
        self.field = name
        self.problem = problem
        super().__init__(f"{label}: {name}: {problem}")


class HParams:
    """Mixin of the hyperparameter dataclasses (frozen or not): every field checked when built,
    :meth:`from_dict`."""

    label: ClassVar[str] = "hyperparameters"  # how messages name the set ("ROME hyperparameters")

    def __post_init__(self) -> None:
        check_fields(self)

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


def _fixed(args: tuple) -> bool:
    """Whether a ``tuple[...]`` annotation's arguments give a fixed length (no ``...``)."""
    return bool(args) and Ellipsis not in args


def _expected(tp: Any) -> str:
    """A type annotation in words: ``a number``, ``a list or null``, ``one of ['a', 'b']``,
    ``a list of [an integer, an integer]``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is tuple and _fixed(args):
        return f"[{', '.join(_expected(a) for a in args)}]"
    if origin in (list, tuple):
        args = tuple(a for a in args if a is not Ellipsis)
        return f"a list of {_expected(args[0])}" if args else "a list"
    return _EXPECTED.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a field annotation: ints are numbers, booleans are neither; a
    ``tuple[int, int]`` is a list of exactly two integers."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is tuple and _fixed(args):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_matches(v, a) for v, a in zip(value, args))
        )
    if origin in (list, tuple):
        args = tuple(a for a in args if a is not Ellipsis)
        return isinstance(value, (list, tuple)) and (
            not args or all(_matches(v, args[0]) for v in value)
        )
    return _matches_plain(value, tp)


def _matches_plain(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, tp) if isinstance(tp, type) else True


def field_problem(f: dataclasses.Field, tp: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``f`` annotated ``tp``: its type or shape, then
    its :class:`Rule` (None: nothing)."""
    rule = f.metadata.get("rule", Rule())
    if not _matches(value, tp):
        return f"expected {rule.what or _expected(tp)}, got {_type_name(value)}"
    return rule.problem(value)


def check_fields(obj: Any) -> None:
    """Every field of the dataclass ``obj`` against its annotation and :class:`Rule`;
    :class:`FieldError` naming the first that fails."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        problem = field_problem(f, hints[f.name], getattr(obj, f.name))
        if problem is not None:
            raise FieldError(getattr(cls, "label", cls.__name__), f.name, problem)


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
    (an integer is accepted for a float, a boolean for neither, and no number for a boolean;
    nested lists their shape and element types) and its :class:`Rule` (ranges, choices), and the
    dataclass's own ``__post_init__`` accepts them.

    ``where`` is the config key holding ``values`` (e.g. ``methods.mend.training``): a value's key
    is ``<where>.<name>`` unless ``keys`` gives another (merged values: ``per_model`` entries
    override ``hparams``). A :class:`FieldError` is pinned on its field; another
    ``__post_init__`` error on the given value without which the dataclass accepts the rest, else
    on the first given value its message names, else on ``where``.
    """
    keys = keys or {}

    def key(name: str) -> str:
        return keys.get(name, f"{where}.{name}")

    _check_names(cls, values, key)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        problem = field_problem(fields[name], hints[name], value)
        if problem is not None:
            raise HParamError(key(name), problem)
    try:
        return cls(**values)
    except FieldError as e:
        raise HParamError(key(e.field), e.problem) from None
    except (TypeError, ValueError) as e:
        culprits = _refused_by(cls, values) or [
            n for n in values if re.search(rf"\b{re.escape(n)}\b", str(e))
        ]
        if not culprits:
            raise HParamError(where, f"{e} (given: {dict(values)})") from None
        given = ", ".join(f"{n}={values[n]!r}" for n in culprits)
        raise HParamError(key(culprits[0]), f"{e} (given: {given})") from None
