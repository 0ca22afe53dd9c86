"""What every editor returns, and the one function that applies it to a model.

An edit is a list of :class:`ParamUpdate`, one per edited matrix, either rank-one factors
(``delta = v u^T`` in (out, in) orientation), low-rank factors (``u`` (r, in) and ``v`` (r, out):
``delta = v^T u``, a sum of r outer products; MEND) or a dense delta in (out, in) orientation. The
trajectory runner and the rebuild-from-HDF5 code both call :func:`apply_update`, so weights
rebuilt from a file equal the runner's weights bit for bit on the same device.

An update may also change the module's bias (``bias``: an (out,) delta; FT-C with
``include_bias``, as the public baseline, which fine-tunes every parameter of the module). In
dicts of edited tensors (snapshots, rebuilt weights) the bias of module ``m`` is keyed
:func:`bias_key` ``(m)`` = ``m + ".bias"``, which :func:`editscale.lm.models.edit_parameter`
resolves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Protocol, Sequence, runtime_checkable

import torch

from editscale.lm.models import ArchSpec, edit_parameter

BIAS_SUFFIX = ".bias"


def bias_key(module: str) -> str:
    """The key of ``module``'s bias in dicts of edited tensors
    (``transformer.h.0.mlp.c_proj.bias``)."""
    return module + BIAS_SUFFIX


@dataclass
class ParamUpdate:
    module: str  # module path of the edited matrix, e.g. transformer.h.5.mlp.c_proj
    u: torch.Tensor | None = None  # (in,) rank-one key-side factor, or (r, in) low-rank factors
    v: torch.Tensor | None = None  # (out,) rank-one value-side factor, or (r, out) low-rank factors
    dense: torch.Tensor | None = None  # (out, in) dense delta
    bias: torch.Tensor | None = None  # (out,) delta of the module's bias (None: bias unchanged)

    @property
    def kind(self) -> str:
        if self.dense is not None:
            return "dense"
        return "low_rank" if self.u.dim() == 2 else "rank_one"

    def delta_out_in(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        if self.u.dim() == 2:
            return self.v.T @ self.u
        return torch.outer(self.v, self.u)

    def frobenius_norm(self) -> float:
        """||delta||_F of the matrix (the bias, if changed, is not included: :meth:`bias_norm`)."""
        if self.dense is not None:
            return float(self.dense.double().norm())
        if self.u.dim() == 2:  # ||V^T U||_F^2 = trace((U U^T)(V V^T)), without forming the matrix
            u, v = self.u.double(), self.v.double()
            return float(((u @ u.T) * (v @ v.T)).sum().clamp(min=0).sqrt())
        return float(self.u.double().norm() * self.v.double().norm())

    def bias_norm(self) -> float:
        """||delta b||_2 of the bias (0.0 when the update leaves the bias alone)."""
        return 0.0 if self.bias is None else float(self.bias.double().norm())


@dataclass
class EditResult:
    updates: list[ParamUpdate]
    info: dict[str, float] = field(default_factory=dict)  # scalar diagnostics (losses, steps)
    vectors: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # e.g. ROME's keys and v*, for tests
    # what an editor carries to its next edits (AlphaEdit: the keys just inserted), as (rows, dim)
    # tensors: the runner stores them with the edit and hands them to ``editor.commit`` after
    # applying the updates, and again in order when it resumes
    carry: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def apply_update(
    weight: torch.Tensor, update: ParamUpdate, spec: ArchSpec, bias: torch.Tensor | None = None
) -> None:
    """Add an update to a stored weight (and, if the update changes it, to ``bias``) in place, in
    the tensors' own orientation and dtype."""
    if update.bias is not None:
        if bias is None:
            raise ValueError(
                f"the update of {update.module} changes its bias, but no bias tensor was given"
            )
        bias.add_(update.bias.to(device=bias.device, dtype=bias.dtype))
    if update.dense is not None:
        delta = update.dense.T if spec.conv1d else update.dense
    elif update.u.dim() == 2:
        delta = update.u.T @ update.v if spec.conv1d else update.v.T @ update.u
    elif spec.conv1d:
        delta = torch.outer(update.u, update.v)
    else:
        delta = torch.outer(update.v, update.u)
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def apply_updates(model, updates: list[ParamUpdate], spec: ArchSpec) -> None:
    for upd in updates:
        bias = edit_parameter(model, bias_key(upd.module)) if upd.bias is not None else None
        apply_update(edit_parameter(model, upd.module), upd, spec, bias=bias)


# ----------------------------------------------------------------------------- the interface

UPDATE_KINDS = ("rank_one", "low_rank", "dense")  # ParamUpdate.kind of an editor's updates


@runtime_checkable
class Editor(Protocol):
    """What the workflow calls on an editor (the runner, replay, the single-edit diagnostic and
    the disabling job). ``make_editor(model, tok, hparams, second_moment, seed, state=None)`` of
    an editor module returns one (with ``editor_file=`` and ``identity=`` when its
    :class:`editscale.editors.EditorInfo` sets ``needs_editor_file``).

    Optional capabilities are declared, never probed: ``edited_biases`` (modules whose bias the
    edits change too; FT-C ``include_bias``) and ``carry_dims`` ({name: row width} of what each
    edit carries to the next ones in :attr:`EditResult.carry`, which the runner stores and hands
    back to :meth:`commit`; AlphaEdit, ENCORE) are empty for most editors (:class:`EditorBase`
    has those defaults). Editing several records per step is :class:`BatchEditor`, declared by
    ``EditorInfo.batched``.
    """

    name: str
    update_kind: str  # one of UPDATE_KINDS: how the trajectory file stores the updates
    info_names: Sequence[str]  # the scalar diagnostics of EditResult.info, one metric each
    edited_biases: Sequence[str]
    carry_dims: Mapping[str, int]

    @property
    def edited_modules(self) -> list[str]:
        """The module paths of the edited matrices, in a fixed order (metrics ``*_i``)."""
        ...

    def state_strings(self) -> dict[str, list[str]]:
        """What a resumed run needs to continue identically (stored in the trajectory file)."""
        ...

    def compute(self, record: dict) -> EditResult:
        """The updates inserting one CounterFact record, computed on the model as it is; the
        model's weights are unchanged afterwards (the caller applies the updates)."""
        ...

    def commit(self, carry: Mapping[str, torch.Tensor]) -> None:
        """Take what an applied edit carries (``EditResult.carry``); only with ``carry_dims``."""
        ...


@runtime_checkable
class BatchEditor(Editor, Protocol):
    """An editor that inserts several records with one update (``EditorInfo.batched``)."""

    def compute_batch(self, records: list[dict]) -> EditResult: ...


class EditorBase:
    """The optional capabilities switched off: no bias edited, nothing carried between edits."""

    edited_biases: Sequence[str] = ()
    carry_dims: Mapping[str, int] = MappingProxyType({})

    def commit(self, carry: Mapping[str, torch.Tensor]) -> None:
        if carry:
            raise ValueError(f"editor {self.name!r} carries nothing, got {sorted(carry)}")


EDITOR_MEMBERS = (
    "name",
    "update_kind",
    "info_names",
    "edited_biases",
    "carry_dims",
    "edited_modules",
    "state_strings",
    "compute",
    "commit",
)


def check_editor(editor: object, batched: bool = False) -> Editor:
    """``editor`` if it has every member of :class:`Editor` (and ``compute_batch`` of
    :class:`BatchEditor` when ``batched``) and a known ``update_kind``, else TypeError naming what
    it lacks."""
    members = EDITOR_MEMBERS + (("compute_batch",) if batched else ())
    missing = [m for m in members if not hasattr(editor, m)]
    kind = "BatchEditor" if batched else "Editor"
    if missing:
        raise TypeError(f"{type(editor).__name__} is not an {kind}: it lacks {missing}")
    if editor.update_kind not in UPDATE_KINDS:
        raise TypeError(
            f"{type(editor).__name__}.update_kind {editor.update_kind!r} is not one of "
            f"{UPDATE_KINDS}"
        )
    return editor


def edited_tensor_names(editor: Editor) -> list[str]:
    """The keys of every tensor an editor changes: its matrices, then ``bias_key(m)`` of each
    module whose bias it edits (``editor.edited_biases``, empty for most editors)."""
    return list(editor.edited_modules) + [bias_key(m) for m in editor.edited_biases]
