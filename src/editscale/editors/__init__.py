"""Editing methods behind one interface (:class:`editscale.editors.base.Editor`).

This module is light (no torch import) so that the Snakefile can ask which editors need
covariance statistics. A method = one module (``editscale.editors.<name>``, with ``make_editor``)
+ its hyperparameter dataclass in :mod:`editscale.editors.hparams` (torch-free: the config is
checked against it at start-up) + one entry in :data:`EDITORS` + one config entry under
``methods:``. An editor outside the package is named by its module instead: ``methods.<m>.editor:
my_pkg.my_editor`` resolves to that module's ``EDITOR_INFO`` (docs/extending.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Iterator, Mapping

from editscale.editors.hparams import (
    AlphaEditHParams,
    EmmetHParams,
    EncoreHParams,
    FtcHParams,
    MemitHParams,
    MendHParams,
    MendTrainHParams,
    RomeHParams,
)


@dataclass(frozen=True)
class EditorInfo:
    """What the workflow needs to know of an editor before running it (its capabilities)."""

    # module defining ``make_editor(model, tok, hparams, second_moment, seed, state=None)``,
    # which returns an editors.base.Editor
    module: str
    needs_covariance: bool  # the workflow computes key statistics for it
    # the editor needs a trained editor file (MEND): make_editor then also takes
    # ``editor_file=<path>`` and ``identity=<models.model_identity of the model>``
    needs_editor_file: bool = False
    # the dataclasses (editors.hparams, torch-free) of ``methods.<m>.hparams`` merged with
    # ``per_model``, and of ``methods.<m>.training`` (editors that train an editor file): the
    # config is checked against them at start-up
    hparams: type | None = None
    training: type | None = None
    # the editor edits several records in one step (``compute_batch(records)``): trajectories may
    # set ``edits_per_step`` > 1 (MEMIT's batches); the others edit one record per step
    batched: bool = False


BUILTIN_EDITORS: dict[str, EditorInfo] = {
    "rome": EditorInfo(module="editscale.editors.rome", needs_covariance=True, hparams=RomeHParams),
    "memit": EditorInfo(
        module="editscale.editors.memit", needs_covariance=True, hparams=MemitHParams, batched=True
    ),
    "emmet": EditorInfo(
        module="editscale.editors.emmet", needs_covariance=True, hparams=EmmetHParams, batched=True
    ),
    "alphaedit": EditorInfo(
        module="editscale.editors.alphaedit",
        needs_covariance=True,
        hparams=AlphaEditHParams,
        batched=True,
    ),
    "encore": EditorInfo(
        module="editscale.editors.encore",
        needs_covariance=True,
        hparams=EncoreHParams,
        batched=True,
    ),
    "ftc": EditorInfo(module="editscale.editors.ftc", needs_covariance=False, hparams=FtcHParams),
    "mend": EditorInfo(
        module="editscale.editors.mend",
        needs_covariance=False,
        needs_editor_file=True,
        hparams=MendHParams,
        training=MendTrainHParams,
    ),
}


DECLARATION = "EDITOR_INFO"  # the attribute of a module outside the package declaring its editor


def declared_editor(module: str) -> EditorInfo:
    """The :class:`EditorInfo` a module declares as ``EDITOR_INFO`` (an editor outside the
    package); KeyError when no such module exists, TypeError when it declares none or one without
    its hyperparameter dataclass. Import the module light (no torch): the config check at
    start-up reads it."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and (module == err.name or module.startswith(err.name + ".")):
            raise KeyError(module) from None  # the module itself is absent, not one it imports
        raise
    info = mod.__dict__.get(DECLARATION)
    if not isinstance(info, EditorInfo):
        raise TypeError(
            f"editor module {module!r} declares no {DECLARATION} (an editscale.editors.EditorInfo)"
        )
    if info.hparams is None:  # the config check builds it
        raise TypeError(f"{module}.{DECLARATION} names no hparams dataclass")
    return info


class EditorTable(Mapping[str, EditorInfo]):
    """The editors by name: the built-in ones (iterated, listed in messages), and any other name
    looked up as an importable module that declares its editor (:func:`declared_editor`)."""

    def __init__(self, builtin: Mapping[str, EditorInfo]):
        self._builtin = dict(builtin)

    def __getitem__(self, name: str) -> EditorInfo:
        if name in self._builtin:
            return self._builtin[name]
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise KeyError(name)
        return declared_editor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builtin)

    def __len__(self) -> int:
        return len(self._builtin)


EDITORS = EditorTable(BUILTIN_EDITORS)


def editor_info(name: str) -> EditorInfo:
    if name not in EDITORS:
        raise KeyError(f"unknown editor {name!r}; known editors: {sorted(EDITORS)}")
    return EDITORS[name]


def load_editor_module(name: str):
    return importlib.import_module(editor_info(name).module)


def stats_layers(hparams: dict) -> list[int]:
    """The layers whose key statistics an editor with ``hparams`` reads, in the editor's order:
    ``layers`` (MEMIT) or ``layer`` (ROME)."""
    return [int(x) for x in hparams["layers"]] if "layers" in hparams else [int(hparams["layer"])]


def edits_per_step_problem(
    editor: str,
    edits_per_step: int,
    counts: dict[str, int],
    store_updates: bool = True,
    store_updates_key: str = "store_updates",
) -> str | None:
    """What forbids editing ``edits_per_step`` records per step with ``editor`` (None: nothing).

    ``counts``: the counts of edits that must end a step (n_edits, snapshot_every, checkpoints),
    by the name to give them; ``store_updates_key`` names the store_updates setting. The text
    follows the value of edits_per_step (``"2 does not divide n_edits = 5: ..."``), so the
    workflow's config check and the runner can put their own key before it.
    """
    k = edits_per_step
    if k == 1:
        return None
    info = editor_info(editor)
    if not info.batched:
        batched = sorted(n for n, e in EDITORS.items() if e.batched)
        return (
            f"{k}, but editor {editor!r} edits one record per step; the editors "
            f"that edit in batches are {batched}"
        )
    if not store_updates:
        return (
            f"{k} needs {store_updates_key}: true (replaying from snapshots "
            "rebuilds one edit at a time)"
        )
    for name, value in counts.items():
        if value % k:
            return (
                f"{k} does not divide {name} = {value}: every checkpoint and the last "
                "edit must end a step"
            )
    return None
