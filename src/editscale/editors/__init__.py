"""Editing methods behind one interface.

This module is light (no torch import) so that the Snakefile can ask which editors need
covariance statistics. A method = one module (``editscale.editors.<name>``) + its hyperparameter
dataclass in :mod:`editscale.editors.hparams` (torch-free: the config is checked against it at
start-up) + one entry here + one config entry under ``methods:``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

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
    module: (
        str  # module defining ``make_editor(model, tok, hparams, second_moment, seed, state=None)``
    )
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


EDITORS: dict[str, EditorInfo] = {
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


def editor_info(name: str) -> EditorInfo:
    if name not in EDITORS:
        raise KeyError(f"unknown editor {name!r}; known editors: {sorted(EDITORS)}")
    return EDITORS[name]


def load_editor_module(name: str):
    return importlib.import_module(editor_info(name).module)
