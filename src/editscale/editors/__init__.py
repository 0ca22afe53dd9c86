"""Editing methods behind one interface.

This module is light (no torch import) so that the Snakefile can ask which editors need
covariance statistics. A method = one module (``editscale.editors.<name>``) + one entry here
+ one config entry under ``methods:``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class EditorInfo:
    module: str  # module defining ``make_editor(model, tok, hparams, stats_path, seed)``
    needs_covariance: bool  # the workflow computes key statistics for it


EDITORS: dict[str, EditorInfo] = {
    "rome": EditorInfo(module="editscale.editors.rome", needs_covariance=True),
}


def editor_info(name: str) -> EditorInfo:
    if name not in EDITORS:
        raise KeyError(f"unknown editor {name!r}; known editors: {sorted(EDITORS)}")
    return EDITORS[name]


def load_editor_module(name: str):
    return importlib.import_module(editor_info(name).module)
