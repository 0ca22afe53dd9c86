"""Editing from Python: load a model, edit it with any registered editor, read the scores, restore.

    from editscale.api import Session, load

    model, tok = load("path/to/hf-folder")           # a hub id needs revision= and folder=
    session = Session(model, tok, "rome", hparams={"layer": 5}, stats="layer5.h5")
    edits = session.apply(records)                    # CounterFact-style records, one per step
    print(edits[0].scores["es"], edits[0].updates)    # ES/PS/NS as the workflow scores them
    session.restore()                                 # the original weights, bitwise

The edit step is the workflow's own (:class:`editscale.editing.runner.EditedModel`, which
:func:`editscale.editing.runner.run_trajectory` runs): the same editor, the same update
arithmetic and the same scoring, so a session's per-edit scores are those a trajectory stores for
the same model, records, hyperparameters, statistics and seed. More in ``docs/api.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from editscale.data.counterfact import validate_record
from editscale.editing.editor_state import load_second_moments, make_editor
from editscale.editing.runner import EditedModel, Step
from editscale.editors import editor_info, edits_per_step_problem, stats_layers
from editscale.editors.base import ParamUpdate
from editscale.lm.models import load_model, model_identity

__all__ = ["Edit", "Session", "compute_stats", "load", "model_folder"]

log = logging.getLogger(__name__)


def load(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    folder: str | os.PathLike | None = None,
    dtype: str = "float32",
    device: str = "cpu",
):
    """``(model, tokenizer)`` from ``source``: a Hugging Face model folder, a hub id (with a pinned
    ``revision``, downloaded into ``folder``) or a ``.gguf`` file (dequantised into ``folder``, or
    reused from there when its manifest names the same file bytes).

    The folder loaded is remembered on the model (:func:`model_folder`), so that a
    :class:`Session` can check key statistics files against the model's identity.
    """
    path = Path(source)
    if path.is_dir():
        folder = path
    elif path.suffix == ".gguf":
        folder = _prepared_gguf(path, _needs_folder(folder, source))
    else:
        if not revision:
            raise ValueError(f"{source}: a hub model needs a pinned revision (revision=...)")
        from editscale.lm.models import download_model

        folder = Path(_needs_folder(folder, source))
        download_model(str(source), revision, folder)
    model, tok = load_model(folder, dtype=dtype, device=device)
    model.editscale_model_dir = Path(folder)
    return model, tok


def _needs_folder(folder, source) -> Path:
    if folder is None:
        raise ValueError(f"{source}: say where to prepare the model folder (folder=...)")
    return Path(folder)


def _prepared_gguf(path: Path, folder: Path) -> Path:
    """The model folder of a GGUF file: prepared once, reused while the file is the same."""
    from editscale.io.provenance import sha256_file
    from editscale.lm.gguf import prepare_gguf_model
    from editscale.lm.models import read_manifest

    if (folder / "config.json").exists():
        if read_manifest(folder).get("gguf_sha256") == sha256_file(path):
            return folder
        raise ValueError(f"{folder} holds another model than {path}: choose another folder")
    prepare_gguf_model({"path": str(path)}, folder)
    return folder


def model_folder(model) -> Path | None:
    """The folder :func:`load` loaded ``model`` from (None for a model loaded otherwise)."""
    return getattr(model, "editscale_model_dir", None)


def compute_stats(
    model,
    tok,
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    hparams: dict,
    corpus: str = "custom",
    max_doc_tokens: int = 1024,
    batch_tokens: int = 8192,
    model_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Key statistics of every layer the editor with ``hparams`` reads (``layer`` or ``layers``),
    over the documents ``texts``: one file ``<out_dir>/layer<L>.h5`` per layer, in the editor's
    order (what :class:`Session`'s ``stats`` takes), tagged with the model's identity and a
    fingerprint of the texts. A file already there with the same settings is kept."""
    from editscale.editing.key_stats import compute_key_second_moment

    texts = list(texts)
    folder = _model_dir(model, model_dir, "compute_stats")
    fingerprint = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    attrs = {**model_identity(folder), "corpus": corpus, "corpus_fingerprint": fingerprint}
    paths = []
    for layer in stats_layers(hparams):
        out = Path(out_dir) / f"layer{layer}.h5"
        if not out.exists():
            compute_key_second_moment(
                model,
                tok,
                layer,
                texts,
                out,
                n_docs=len(texts),
                max_doc_tokens=max_doc_tokens,
                batch_tokens=batch_tokens,
                attrs=attrs,
            )
        paths.append(out)
    return paths


def _model_dir(model, model_dir, who: str) -> Path:
    folder = model_dir if model_dir is not None else model_folder(model)
    if folder is None:
        raise ValueError(
            f"{who}: the model's folder is unknown (load it with editscale.api.load, or pass "
            "model_dir=...); key statistics are checked against the model's identity"
        )
    return Path(folder)


@dataclass
class Edit:
    """One edited record: its edit number (1-based, in the session), its ``case_id``, its
    ``scores`` (the row the workflow's trajectory stores: ``es``, ``ps``, ``ns``, magnitudes,
    argmax variants, update norms, distances, weight norms, the editor's diagnostics, times) and
    the ``updates`` of the step that edited it (shared by the records of one step)."""

    edit: int
    case_id: int
    scores: dict[str, float]
    updates: list[ParamUpdate] = field(repr=False)


class Session:
    """One editor on one model, edited record after record.

    ``editor``: a name of :data:`editscale.editors.EDITORS`; ``hparams``: its hyperparameters
    (the config's ``methods.<m>.hparams`` merged with ``per_model``); ``stats``: the key
    statistics of editors that need them, as a file path, a list of paths (one per layer of
    ``layers``), or ``{layer: C}`` tensors; ``editor_file``: trained editor networks (MEND);
    ``seed``: the editor's seed (ROME's context templates); ``model_dir``: the model's folder when
    the model was not loaded with :func:`load`.
    """

    def __init__(
        self,
        model,
        tok,
        editor: str,
        *,
        hparams: dict | None = None,
        stats=None,
        seed: int = 0,
        editor_file: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        eval_batch_size: int = 64,
    ):
        self.name, self.hparams, self.seed = editor, dict(hparams or {}), seed
        info = editor_info(editor)
        if info.needs_covariance and stats is None:
            raise ValueError(f"editor {editor!r} needs key statistics (stats=...)")
        if info.needs_editor_file and editor_file is None:
            raise ValueError(f"editor {editor!r} needs an editor file (editor_file=...)")
        if isinstance(stats, dict) or stats is None:
            second_moment = stats
        else:
            folder = _model_dir(model, model_dir, "Session")
            second_moment = load_second_moments(stats, folder, self.hparams)
        self._make = dict(
            editor=editor,
            hparams=self.hparams,
            second_moment=second_moment,
            seed=seed,
            editor_file=editor_file,
            model_dir=_model_dir(model, model_dir, "Session") if editor_file is not None else None,
        )
        self.edited = self._start(model, tok, state=None, eval_batch_size=eval_batch_size)
        self.steps: list[Step] = []
        self.edits: list[Edit] = []

    def _start(self, model, tok, state: dict | None, eval_batch_size: int) -> EditedModel:
        m = self._make
        ed = make_editor(
            m["editor"],
            model,
            tok,
            m["hparams"],
            m["second_moment"],
            m["seed"],
            state=state,
            editor_file=m["editor_file"],
            model_dir=m["model_dir"],
        )
        return EditedModel(model, tok, ed, eval_batch_size)

    @property
    def editor(self):
        """The editor object (``compute``/``compute_batch`` give updates without applying them)."""
        return self.edited.editor

    def apply(self, records: Sequence[dict], edits_per_step: int = 1) -> list[Edit]:
        """Edit ``records`` in order, ``edits_per_step`` at a time (more than one: a batched editor,
        one update per step), scoring every record after its step; returns their :class:`Edit`s.
        Successive calls go on editing the edited model."""
        records = list(records)
        for i, rec in enumerate(records):
            validate_record(rec, i)
        k = edits_per_step
        if k < 1:
            raise ValueError(f"Session.apply: edits_per_step must be >= 1 (got {k})")
        problem = edits_per_step_problem(self.name, k, {"the number of records": len(records)})
        if problem is not None:
            raise ValueError(f"Session.apply: edits_per_step {problem}")
        out = []
        for j in range(0, len(records), k):
            step = self.edited.step(records[j : j + k], len(self.edits) + 1, batched=k != 1)
            self.steps.append(step)
            new = [Edit(int(r["edit"]), int(r["case_id"]), r, step.updates) for r in step.rows]
            self.edits.extend(new)
            out.extend(new)
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """Copies of the edited tensors as they are now, by parameter name."""
        return {k: w.detach().clone() for k, w in self.edited.weights().items()}

    def restore(self) -> None:
        """Put the original weights back (bitwise) and start the editor afresh with its state
        (ROME's context templates): the next :meth:`apply` edits the unedited model as a new
        session would."""
        old = self.edited
        old.restore()
        state = old.editor.state_strings()
        self.edited = self._start(old.model, old.tok, state, old.eval_batch_size)
        self.steps, self.edits = [], []
