"""The editors' hyperparameter dataclasses, and their check against a config at start-up.

Torch-free (standard library only) so that :func:`editscale.config.check_config` can build these
dataclasses from a config before any job runs: an unknown key, a value of the wrong type or a
value a dataclass refuses is then reported with its config key at start-up, not as a bare error
inside a job (after Snakemake has already deleted that job's previous outputs). The editor
modules (which import torch) take the same classes from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union

__all__ = [
    "TARGET_POSITIONS",
    "RomeHParams",
    "MemitHParams",
    "EmmetHParams",
    "AlphaEditHParams",
    "EncoreHParams",
    "FtcHParams",
    "MendHParams",
    "MendTrainHParams",
    "HParamError",
    "check_hparams",
]

TARGET_POSITIONS = ("own", "last_prompt")


def _from_dict(cls, d: dict, label: str):
    """``cls(**d)`` after refusing keys that are not fields of ``cls`` (``label`` names the set)."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {label}: {unknown} (known: {sorted(known)})")
    return cls(**d)


@dataclass
class RomeHParams:
    layer: int
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    mom2_adjustment: bool = True
    context_template_lengths: list = field(default_factory=lambda: [[5, 10], [10, 10]])
    context_template_top_k: int = 5
    key_mode: str = "original"  # original | homogeneous (r-ROME)

    def __post_init__(self):
        if self.key_mode not in ("original", "homogeneous"):
            raise ValueError(
                f"rome.key_mode must be 'original' or 'homogeneous', not {self.key_mode!r}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "RomeHParams":
        return _from_dict(cls, d, "ROME hyperparameters")


@dataclass
class MemitHParams:
    """MEMIT (Meng et al. 2023): the public GPT-J/GPT-2 XL settings are the defaults, except the
    layers (model-specific: GPT-J 3-8, GPT-2 XL 13-17) and ``mom2_update_weight`` (GPT-J 15000,
    GPT-2 XL 20000)."""

    layers: list
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    mom2_update_weight: float = 15000.0
    context_template_lengths: list = field(default_factory=lambda: [[10, 5]])
    context_template_starts: list = field(
        default_factory=lambda: ["The", "Therefore", "Because", "I", "You"]
    )
    context_template_top_k: int = 5

    def __post_init__(self):
        if not self.layers or any(
            not isinstance(x, int) or isinstance(x, bool) for x in self.layers
        ):
            raise ValueError(
                f"memit.layers must be a non-empty list of layer indices, not {self.layers!r}"
            )
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"memit.layers must be increasing without repeats, not {self.layers!r}"
            )
        if self.mom2_update_weight <= 0:
            raise ValueError(
                f"memit.mom2_update_weight must be > 0, not {self.mom2_update_weight!r}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "MemitHParams":
        return _from_dict(cls, d, "MEMIT hyperparameters")


@dataclass
class EmmetHParams(MemitHParams):
    """EMMET (Gupta et al. 2024): MEMIT's targets, keys and layer spreading with equality
    constraints. Defaults: the public GPT-J settings (one layer; ``mom2_update_weight`` 1)."""

    mom2_update_weight: float = 1.0
    emmet_lambda: float = (
        0.1  # added to D = K^T C^-1 K (batches of 2 or more) against ill-conditioning
    )
    update_norm_lambda: float = 0.0  # added to C's diagonal

    def __post_init__(self):
        super().__post_init__()
        if self.emmet_lambda < 0 or self.update_norm_lambda < 0:
            raise ValueError("emmet: emmet_lambda and update_norm_lambda must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "EmmetHParams":
        return _from_dict(cls, d, "EMMET hyperparameters")


@dataclass
class AlphaEditHParams(MemitHParams):
    """AlphaEdit (Fang et al. 2025): MEMIT's targets and keys, the update projected onto the null
    space of the preserved keys. Defaults: the public GPT-J / Llama3-8B settings."""

    v_num_grad_steps: int = 25
    nullspace_threshold: float = 2e-2  # eigenvalues of C below it span the null space
    L2: float = 10.0  # the public name: the update's ridge term

    def __post_init__(self):
        super().__post_init__()
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise ValueError("alphaedit: nullspace_threshold and L2 must be > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "AlphaEditHParams":
        return _from_dict(cls, d, "AlphaEdit hyperparameters")


@dataclass
class EncoreHParams(MemitHParams):
    """ENCORE (Gupta et al. 2025): MEMIT with most-probable early stopping of the target search
    and a norm penalty on the update. Defaults: the public Llama3-8B settings."""

    v_num_grad_steps: int = 25
    update_norm_lambda: float = 20.0  # mu: mu I added to lambda C (the norm penalty)
    prob_cutoff: float = (
        -2.0
    )  # < 0: stop at the |n|-th pass with every target token top-1; > 0: mean prob
    add_prev_edits: bool = True  # the earlier steps' keys join C (sequential editing)

    def __post_init__(self):
        super().__post_init__()
        if self.update_norm_lambda < 0:
            raise ValueError("encore: update_norm_lambda must be >= 0")
        if self.prob_cutoff < 0 and self.prob_cutoff != int(self.prob_cutoff):
            raise ValueError(
                "encore: a negative prob_cutoff counts passes and must be a whole number"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "EncoreHParams":
        return _from_dict(cls, d, "ENCORE hyperparameters")


@dataclass
class FtcHParams:
    layer: int = 0
    num_steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # L-infinity radius around the weights before the edit
    early_stop_loss: float = 1e-2
    target_positions: str = "own"  # own | last_prompt (the public baseline's scoring)
    include_bias: bool = False  # also fine-tune (and clamp) the module's bias: the public baseline

    def __post_init__(self):
        if self.target_positions not in TARGET_POSITIONS:
            raise ValueError(
                f"ftc.target_positions must be one of {TARGET_POSITIONS}, not {self.target_positions!r}"
            )
        if self.num_steps < 1 or self.lr <= 0 or self.norm_constraint <= 0:
            raise ValueError("ftc: num_steps >= 1, lr > 0 and norm_constraint > 0 are required")
        if not isinstance(self.include_bias, bool):
            raise ValueError(f"ftc.include_bias must be true or false, not {self.include_bias!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "FtcHParams":
        return _from_dict(cls, d, "FT-C hyperparameters")


@dataclass
class MendHParams:
    """Edit-time settings (``methods.<m>.hparams``): which matrices, and the public ``lr_scale``."""

    layers: list | None = None  # explicit layers; None = the last ``n_last_layers`` layers
    n_last_layers: int = 3
    lr_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict) -> "MendHParams":
        return _from_dict(cls, d, "MEND hyperparameters")

    def layer_indices(self, n_layer: int) -> list[int]:
        """The edited layers (sorted) of a model with ``n_layer`` blocks; ValueError if any is outside it."""
        layers = (
            list(self.layers)
            if self.layers is not None
            else list(range(n_layer - self.n_last_layers, n_layer))
        )
        bad = [layer for layer in layers if not 0 <= layer < n_layer]
        if bad or not layers:
            raise ValueError(f"mend layers {layers} are outside the model's {n_layer} layers")
        return sorted(layers)


@dataclass
class MendTrainHParams:
    rank: int = 1920
    n_hidden: int = 1
    combine: bool = True
    edit_lr_init: float = 1e-4
    lr: float = 1e-6
    lr_lr: float = 1e-4
    cedit: float = 0.1
    cloc: float = 1.0
    accumulate: int = 10  # training edits per optimiser step
    grad_clip: float = 100.0
    max_steps: int = 100000  # training edits in all
    val_every: int = 5000  # training edits between validations
    early_stop_patience: int = 4  # validations without a lower validation loss
    norm_records: int = 1000
    loc_docs: int = 1000
    loc_max_tokens: int = 128
    checkpoint_every: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.checkpoint_every % self.accumulate or self.val_every % self.accumulate:
            raise ValueError(
                "mend training: checkpoint_every and val_every must be multiples of accumulate"
            )
        if (
            min(
                self.max_steps,
                self.val_every,
                self.norm_records,
                self.loc_docs,
                self.loc_max_tokens,
            )
            < 1
        ):
            raise ValueError(
                "mend training: max_steps, val_every, norm_records, loc_docs, loc_max_tokens >= 1"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "MendTrainHParams":
        return _from_dict(cls, d, "MEND training hyperparameters")


# --------------------------------------------------------------------------- start-up check


class HParamError(ValueError):
    """A hyperparameter a dataclass does not accept; ``key`` is its dotted config key.

    Same attributes and message as :class:`editscale.config.ConfigError` (which is not imported
    here, to keep this module free of the config machinery)."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


T = TypeVar("T")

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
