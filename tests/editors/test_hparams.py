"""Every field of every built-in editor's hyperparameter dataclasses (editors/hparams.py) is
checked at start-up: a value of the wrong type or shape and one out of its declared range each
stop ``load_config`` with a ConfigError naming the key where the value was set, before any job.
The bad values are derived from the dataclasses themselves (annotations and ``param`` rules), so
a field added later is walked too."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Union

import pytest

from editscale.config import ConfigError, load_config
from editscale.editors import BUILTIN_EDITORS
from editscale.editors.hparams import MemitHParams, RomeHParams
from editscale.io.hparams import FieldError, Rule
from tests.test_config import minimal

# a method of each editor that runs on minimal()'s model 'm' (2 layers): the per_model values are
# those the workflow requires there (the layers whose statistics it computes)
BASE = {
    "rome": {"per_model": {"m": {"layer": 1}}},
    "memit": {"per_model": {"m": {"layers": [1]}}},
    "emmet": {"per_model": {"m": {"layers": [1]}}},
    "alphaedit": {"per_model": {"m": {"layers": [1]}}},
    "encore": {"per_model": {"m": {"layers": [1]}}},
    "ftc": {"per_model": {"m": {}}},
    "mend": {"hparams": {"n_last_layers": 2}, "per_model": {"m": {}}, "training": {}},
}


def method_config(
    editor: str, section: str | None = None, name: str = "", value: Any = None
) -> tuple[dict, str]:
    """minimal() running only ``meth`` (editor ``editor``) with ``value`` set for ``name`` in
    ``section`` (``training``, or the hparams: ``per_model.m`` where the base sets it there, else
    ``hparams``; None: nothing set), and the config key of that value."""
    spec = {"editor": editor, "hparams": {}, **copy.deepcopy(BASE[editor])}
    key = ""
    if section == "hparams" and name in spec["per_model"]["m"]:
        spec["per_model"]["m"][name] = value
        key = f"methods.meth.per_model.m.{name}"
    elif section is not None:
        spec.setdefault(section, {})[name] = value
        key = f"methods.meth.{section}.{name}"
    cfg = minimal()
    cfg["methods"] = {"meth": spec}
    cfg["experiments"] = [{"model": "m", "method": "meth"}]
    return cfg, key


def _args(tp: Any) -> tuple:
    return tuple(a for a in typing.get_args(tp) if a is not type(None))


def sample(tp: Any) -> Any:
    """A value of the annotation's type (shape and element types, not necessarily in range)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return sample(_args(tp)[0])
    if origin is tuple:
        return [sample(a) for a in typing.get_args(tp)]
    if origin is list:
        return [sample(typing.get_args(tp)[0])]
    return {bool: True, int: 1, float: 0.5, str: "a {}"}[tp]


def wrong_types(tp: Any) -> list:
    """Values of the wrong type or shape for the annotation ``tp`` (nested: each level)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return wrong_types(_args(tp)[0])
    if origin is tuple:  # a fixed-length pair: too short, too long, a wrong member
        args = typing.get_args(tp)
        good = [sample(a) for a in args]
        return [good[:-1], good + good[-1:], [wrong_types(args[0])[0], *good[1:]], "x"]
    if origin is list:
        (elem,) = typing.get_args(tp)
        return [{"a": 1}, "x", *[[w] for w in wrong_types(elem)[:3]]]
    return {
        bool: [1, "yes", None],
        int: [1.5, True, "1", [1]],
        float: ["0.5", True, [0.5]],
        str: [3, ["a {}"], None],
    }[tp]


def _leaf(rule: Rule, is_int: bool) -> list:
    """Numbers just outside the rule's bounds (whole numbers for an integer)."""
    out = []
    if rule.ge is not None:
        out.append(rule.ge - 1 if is_int else rule.ge - 0.5)
    if rule.gt is not None:
        out.append(rule.gt)
    if rule.le is not None:
        out.append(rule.le + 1)
    return out


def out_of_range(tp: Any, rule: Rule) -> list:
    """Values of the right type and shape that the field's rule refuses."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        tp, origin = _args(tp)[0], typing.get_origin(_args(tp)[0])
    out: list = ["not-a-choice"] if rule.choices else []
    if rule.nonempty:
        out.append([])
    elem = typing.get_args(tp)[0] if origin is list else tp
    if typing.get_origin(elem) is tuple:  # each member of a pair out of range in turn
        n = len(typing.get_args(elem))
        for x in _leaf(rule, True):
            out += [[[x if i == j else 1 for i in range(n)]] for j in range(n)]
    elif elem in (int, float):
        bad = _leaf(rule, elem is int)
        out += [[x] for x in bad] if origin is list else bad
    elif elem is str and rule.text is not None:
        out.append([" "] if origin is list else "")
    return out


def walked() -> list[tuple[str, str, str, Any, str]]:
    """(editor, section, field, bad value, kind) for every field of every built-in editor."""
    cases = []
    for editor, info in BUILTIN_EDITORS.items():
        for section, cls in (("hparams", info.hparams), ("training", info.training)):
            if cls is None:
                continue
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                rule = f.metadata.get("rule", Rule())
                for v in wrong_types(hints[f.name]):
                    cases.append((editor, section, f.name, v, "type"))
                for v in out_of_range(hints[f.name], rule):
                    cases.append((editor, section, f.name, v, "range"))
    return cases


CASES = walked()


@pytest.mark.parametrize(
    "editor, section, name, value, kind",
    CASES,
    ids=[f"{e}-{s}-{n}-{k}-{v!r}" for e, s, n, v, k in CASES],
)
def test_every_field_is_checked_at_start_up(editor, section, name, value, kind):
    cfg, key = method_config(editor, section, name, value)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"config key '{key}': ")


@pytest.mark.parametrize("editor", sorted(BUILTIN_EDITORS))
def test_the_base_configs_are_valid(editor):
    """The walk's configs differ from a valid one only in the value under test."""
    assert load_config(method_config(editor)[0])["experiments"]


def test_every_numeric_and_text_field_declares_its_values():
    """No field is left to its type alone: numbers have a bound, strings a choice or a pattern."""
    for info in BUILTIN_EDITORS.values():
        for cls in filter(None, (info.hparams, info.training)):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                rule = f.metadata.get("rule", Rule())
                text = repr(hints[f.name])
                if hints[f.name] is bool:
                    continue
                assert rule != Rule(), f"{cls.__name__}.{f.name} declares no values"
                if "int" in text or "float" in text:
                    assert (rule.ge, rule.gt, rule.le) != (None, None, None), f.name
                if hints[f.name] is str:
                    assert rule.choices or rule.text, f.name


@pytest.mark.parametrize("value", [[[5]], [[5, -1]], [[5, 10], [10]], [[0, 5]], [5], [[5, 2.5]]])
def test_context_template_lengths_are_pairs_of_positive_integers(value):
    """The issue's case: [[5]] passed start-up, then model_gates failed unpacking it."""
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"context_template_lengths": value}
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.key == "methods.rome.hparams.context_template_lengths"
    assert repr(value) in info.value.problem
    with pytest.raises(FieldError, match="context_template_lengths") as built:
        RomeHParams(layer=1, context_template_lengths=value)
    assert built.value.field == "context_template_lengths"
    # the valid shapes: pairs, none at all (the bare '{}' template)
    for ok in ([[5, 10], [10, 10]], [[1, 1]], []):
        cfg["methods"]["rome"]["hparams"] = {"context_template_lengths": ok}
        load_config(cfg)


def test_messages_say_what_is_expected():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"context_template_lengths": [[5]]}
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problem == (
        "expected a list of [length, count] pairs of integers, got [[5]] (a list)"
    )
    cfg["methods"]["rome"]["hparams"] = {"context_template_lengths": [[5, -1]]}
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problem == "[0][1] = -1 is out of range (must be >= 1) (given: [[5, -1]])"
    cfg["methods"]["rome"]["hparams"] = {"kl_prompt": "is a"}
    with pytest.raises(ConfigError, match="must contain '{}'"):
        load_config(cfg)
    with pytest.raises(ValueError, match="increasing"):  # a class's own check still runs
        MemitHParams(layers=[1, 1])
