"""The trajectory runner: one model, one method, one ordering, edited sequentially.

After every edit the runner records, for the record just edited, ES/PS/NS with magnitudes and
argmax variants, the normalised distance ||W_t - W_0||_F / numel of every edited matrix
(``distance_i``), its Frobenius norm ||W_t||_F (``weight_norm_i``, in float64, of the matrix as
stored), the Frobenius norm of the edit's update (``update_norm_i``), the editor's diagnostics
and wall times. When the editor also changes the module's bias (FT-C ``include_bias``), the bias
gets ``bias_update_norm_i`` (||delta b||_2) and ``bias_distance_i`` (||b_t - b_0||_2 / numel(b));
the matrix metrics stay those of the matrix alone. Everything goes to the HDF5 store, flushed
after each edit; a killed run resumes from its last complete edit (metrics a partial file from an
older version lacks are recomputed for its edits by replaying the stored updates). With
``store_updates=False`` the updates are not stored, only the snapshots (every ``snapshot_every``
edits and the last): a resumed run, the evaluation chunks and the disabling job rebuild the edits
in between by replaying the editor (:mod:`editscale.editing.replay`).

With ``edits_per_step`` k > 1 (a batched editor: MEMIT, EMMET, AlphaEdit, ENCORE) each step edits
k records with one update; the k records are then scored after the step, each in its own row, the
step's update is stored with its first edit (``update_norm_i`` there, 0 on the others: their
stored updates are empty) and a killed run resumes at its last finished step.

The edit step (:class:`EditedModel`) is the one the Python API (:mod:`editscale.api`) uses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editscale.data.counterfact import check_record_tokens, select_records
from editscale.editing.editor_state import (
    load_second_moments,
    make_editor,
    stats_sha256,
)
from editscale.editing.replay import WeightLoader
from editscale.editing.store import REPLAY, TrajectoryWriter, read_carry, replay_weights
from editscale.editors import editor_info, edits_per_step_problem
from editscale.editors.base import EditResult, ParamUpdate, apply_updates, bias_key
from editscale.io.files import atomic_open
from editscale.lm.models import (
    arch_of,
    edit_parameter,
    load_model,
    model_identity,
    read_manifest,
    sha256_file,
)
from editscale.lm.scoring import METRIC_NAMES, evaluate_record

log = logging.getLogger(__name__)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _hash(obj) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, default=_json_default).encode()
    ).hexdigest()


# --------------------------------------------------------------------------------------------
# The edit step, shared by the runner and the Python API (editscale.api)


@dataclass
class Step:
    """One editing step: the records edited together (edits ``first`` .. ``first + k - 1``), the
    editor's result (its ``updates``, diagnostics, carried rows) and one metrics row per record."""

    first: int
    records: list[dict]
    result: EditResult
    rows: list[dict[str, float]]
    seconds: float  # the step's editing time (computing and applying the update)

    @property
    def updates(self) -> list[ParamUpdate]:
        return self.result.updates


class EditedModel:
    """A model edited by one editor: the edited tensors' unedited values, the edit step and the
    per-edit metrics the trajectory records (ES/PS/NS with magnitudes and argmax variants,
    ``update_norm_i``, ``distance_i``, ``weight_norm_i``, bias metrics, the editor's diagnostics,
    times). Build it on the unedited model, right after the editor."""

    def __init__(self, model, tok, editor, eval_batch_size: int = 64):
        self.model, self.tok, self.editor = model, tok, editor
        self.eval_batch_size = eval_batch_size
        self.spec = arch_of(model)
        self.carry_dims = dict(editor.carry_dims)  # declared: editors.base.Editor
        self.params = list(editor.edited_modules)
        edited_biases = set(editor.edited_biases)  # FT-C include_bias
        self.biases = [p for p in self.params if p in edited_biases]
        keys = self.params + [bias_key(p) for p in self.biases]
        self.originals = {k: edit_parameter(model, k).detach().clone() for k in keys}

    def metric_names(self) -> list[str]:
        n = range(len(self.params))
        bias_metrics = [
            f"bias_{m}_{i}"
            for i, p in enumerate(self.params)
            if p in self.biases
            for m in ("update_norm", "distance")
        ]
        return (
            ["edit", "case_id", *METRIC_NAMES]
            + [f"{m}_{i}" for m in ("update_norm", "distance", "weight_norm") for i in n]
            + bias_metrics
            + list(self.editor.info_names)
            + ["edit_seconds", "eval_seconds"]
        )

    def weights(self) -> dict[str, torch.Tensor]:
        """The edited tensors as they are now (the model's own tensors, not copies)."""
        return {name: edit_parameter(self.model, name) for name in self.originals}

    @torch.no_grad()
    def restore(self) -> None:
        """Put the unedited values back into every edited tensor (bitwise)."""
        for name, w in self.originals.items():
            edit_parameter(self.model, name).copy_(w)

    def step(self, records: list[dict], first: int, batched: bool) -> Step:
        """Edit ``records`` in one step (``batched``: with ``compute_batch``, else ``compute`` of
        the one record), apply the update, hand the editor what it carries, and score every
        record after the step (edit numbers ``first``, ``first + 1``, ...)."""
        t0 = time.perf_counter()
        ed = self.editor
        result = ed.compute_batch(records) if batched else ed.compute(records[0])
        apply_updates(self.model, result.updates, self.spec)
        if self.carry_dims:
            ed.commit(result.carry)
        seconds = time.perf_counter() - t0
        shared = {**self._weight_metrics(), **self._info(result)}
        rows = [
            self._row(first + j, rec, j == 0, shared, result, seconds / len(records))
            for j, rec in enumerate(records)
        ]
        return Step(first, list(records), result, rows, seconds)

    def _weight_metrics(self) -> dict[str, float]:
        """What every edit of a step shares: the edited tensors' distances and norms after it."""
        out = {}
        for i, p in enumerate(self.params):
            w = edit_parameter(self.model, p).double()
            out[f"distance_{i}"] = float((w - self.originals[p].double()).norm()) / w.numel()
            out[f"weight_norm_{i}"] = float(torch.linalg.norm(w))
            if p in self.biases:  # ||b_t - b_0||_2 / numel(b), as distance_i for the matrix
                b = edit_parameter(self.model, bias_key(p)).double()
                b0 = self.originals[bias_key(p)].double()
                out[f"bias_distance_{i}"] = float((b - b0).norm()) / b.numel()
        return out

    def _info(self, result: EditResult) -> dict[str, float]:
        return {name: float(result.info.get(name, np.nan)) for name in self.editor.info_names}

    def _row(self, edit: int, rec: dict, first: bool, shared: dict, result, edit_s: float) -> dict:
        t2 = time.perf_counter()
        scores = evaluate_record(self.model, self.tok, rec, batch_size=self.eval_batch_size)
        row = {
            "edit": edit,
            "case_id": rec["case_id"],
            **scores,
            **shared,
            "edit_seconds": edit_s,
            "eval_seconds": time.perf_counter() - t2,
        }
        by_module = {u.module: u for u in result.updates}
        for i, p in enumerate(self.params):  # the step's update is stored with its first edit
            row[f"update_norm_{i}"] = by_module[p].frobenius_norm() if first else 0.0
            if p in self.biases:
                row[f"bias_update_norm_{i}"] = by_module[p].bias_norm() if first else 0.0
        return row


# --------------------------------------------------------------------------------------------
# The trajectory


@dataclass(frozen=True)
class Trajectory:
    """One trajectory: its inputs, its output file and its settings (the keywords of
    :func:`run_trajectory`).

    ``stats_path``: the key statistics (one file, or one per layer of ``layers``);
    ``editor_file``: the trained editor networks of editors that need one (MEND);
    ``store_updates``: False keeps snapshots only (see the module docstring);
    ``edits_per_step``: records edited together in one step (a batched editor's
    ``compute_batch``); every record of a step is then scored after the whole step.
    """

    model_dir: str | os.PathLike
    counterfact_path: str | os.PathLike
    ordering_path: str | os.PathLike
    stats_path: str | os.PathLike | list | None
    out_path: str | os.PathLike
    method: str
    editor: str
    hparams: dict
    n_edits: int
    snapshot_every: int
    seed: int
    dtype: str = "float32"
    device: str = "cpu"
    config: dict | None = None
    eval_batch_size: int = 64
    progress_every_s: float = 30.0
    editor_file: str | os.PathLike | None = None
    store_updates: bool = True
    edits_per_step: int = 1


def run_trajectory(**settings) -> None:
    """Run (or resume) one sequential editing trajectory and write ``out_path`` (HDF5);
    ``settings``: the fields of :class:`Trajectory`."""
    write_trajectory(Trajectory(**settings))


def write_trajectory(tr: Trajectory) -> None:
    """Run (or resume) the trajectory ``tr`` and write its file."""
    t_start = time.perf_counter()
    records = _check_inputs(tr)
    torch.manual_seed(tr.seed)
    model, tok = load_model(tr.model_dir, dtype=tr.dtype, device=tr.device)
    check_record_tokens(records, tok, model.config, tr.counterfact_path)
    second_moment = load_second_moments(tr.stats_path, tr.model_dir, tr.hparams)
    identity = model_identity(tr.model_dir)
    shas = {
        "stats": stats_sha256(tr.stats_path),
        "editor_file": sha256_file(tr.editor_file) if tr.editor_file is not None else None,
    }
    resume_key = _resume_key(tr, identity, records, shas)
    attrs = _file_attrs(tr, arch_of(model), identity, shas)
    # The writer needs the editor's matrices and diagnostics; build the editor (context
    # templates from the file when resuming, else generated with the seed) on the unedited model.
    ed = make_editor(
        tr.editor,
        model,
        tok,
        tr.hparams,
        second_moment,
        tr.seed,
        state=_peek_editor_state(tr.out_path),
        editor_file=tr.editor_file,
        model_dir=tr.model_dir,
    )
    edited = EditedModel(model, tok, ed, tr.eval_batch_size)
    if edited.carry_dims and not tr.store_updates:
        raise ValueError(
            f"method {tr.method!r}: editor {tr.editor!r} carries state from edit to edit, which "
            "replaying from snapshots (store_updates: false) cannot rebuild; set "
            "store_updates: true"
        )
    writer = _open_store(tr, edited, attrs, resume_key)
    try:
        _start_or_resume(writer, edited, records, tr.n_edits)
        log.info(
            "trajectory %s: %d edits with %s on %s (%s), editing %s",
            tr.out_path,
            tr.n_edits,
            tr.editor,
            identity["model_id"],
            tr.dtype,
            edited.params,
        )
        _edit_all(tr, writer, edited, records)
        writer.finish(tr.out_path)
    finally:
        writer.close()
    log.info("trajectory done in %.1f s: %s", time.perf_counter() - t_start, tr.out_path)


def _check_inputs(tr: Trajectory) -> list[dict]:
    """Refuse settings a trajectory cannot run and return its records, before any model work."""
    check_steps(
        tr.editor,
        tr.n_edits,
        tr.snapshot_every,
        tr.edits_per_step,
        tr.store_updates,
        where=f"method {tr.method!r}",
    )
    if editor_info(tr.editor).needs_editor_file and tr.editor_file is None:
        raise ValueError(f"editor {tr.editor!r} needs an editor file (editor_file=...)")
    return select_records(tr.counterfact_path, tr.ordering_path, tr.n_edits)


def _resume_key(tr: Trajectory, identity: dict, records: list[dict], shas: dict) -> str:
    """The hash of everything that defines the trajectory's edits: a partial file resumes only
    under the same key."""
    key_inputs = {
        "method": tr.method,
        "editor": tr.editor,
        "hparams": tr.hparams,
        "model": identity,
        "seed": tr.seed,
        "n_edits": tr.n_edits,
        "snapshot_every": tr.snapshot_every,
        "dtype": tr.dtype,
        "case_ids": [r["case_id"] for r in records],
        "stats": shas["stats"],
    }
    if shas["editor_file"] is not None:
        key_inputs["editor_file"] = shas["editor_file"]
    if not tr.store_updates:
        key_inputs["store_updates"] = False
    if tr.edits_per_step != 1:  # files of one edit per step keep their former key
        key_inputs["edits_per_step"] = tr.edits_per_step
    return _hash(key_inputs)


def _file_attrs(tr: Trajectory, spec, identity: dict, shas: dict) -> dict:
    """The trajectory file's attributes: settings, inputs' hashes, config and environment."""
    from editscale.io.provenance import config_hash, environment

    return {
        "method": tr.method,
        "editor": tr.editor,
        "arch": spec.name,
        "conv1d": spec.conv1d,
        "snapshot_every": tr.snapshot_every,
        "edits_per_step": tr.edits_per_step,
        "seed": tr.seed,
        "dtype": tr.dtype,
        "hparams": tr.hparams,
        "model": read_manifest(tr.model_dir),
        "model_id": identity["model_id"],
        "revision": identity["revision"],
        "counterfact_sha256": sha256_file(tr.counterfact_path),
        "ordering_sha256": sha256_file(tr.ordering_path),
        "stats_sha256": shas["stats"] or "",
        "editor_file_sha256": shas["editor_file"] or "",
        "store_updates": bool(tr.store_updates),
        "config": tr.config or {},
        "config_hash": config_hash(tr.config or {}),
        "environment": environment(),
    }


def _open_store(
    tr: Trajectory, edited: EditedModel, attrs: dict, resume_key: str
) -> TrajectoryWriter:
    """Open the trajectory's partial file: a new one, or the one of an interrupted run."""
    orig, spec = edited.originals, edited.spec
    return TrajectoryWriter.open(
        tr.out_path,
        n_edits=tr.n_edits,
        params=edited.params,
        shapes={p: tuple(_out_in_shape(orig[p], spec)) for p in edited.params},
        dtypes={p: str(orig[p].dtype) for p in edited.params},
        kinds={p: edited.editor.update_kind if tr.store_updates else REPLAY for p in edited.params},
        metric_names=edited.metric_names(),
        attrs=attrs,
        resume_key=resume_key,
        biases={p: str(orig[bias_key(p)].dtype) for p in edited.biases},
        carry_dims=edited.carry_dims,
    )


def _start_or_resume(
    writer: TrajectoryWriter, edited: EditedModel, records: list[dict], n_edits: int
) -> None:
    """A new file gets the editor's state and the unedited snapshot; a resumed one puts the
    weights (and what the editor carries) after its last finished edit into the model."""
    if writer.n_done == 0:
        writer.write_editor_state(edited.editor.state_strings())
        writer.write_snapshot(0, edited.originals)
        return
    log.info("resuming %s after edit %d of %d", writer.path, writer.n_done, n_edits)
    device = edited.originals[edited.params[0]].device
    _backfill_weight_norms(writer, edited.params, edited.spec, device=device)
    # the matrices and any edited bias after the last finished edit: from the file, or
    # (store_updates false) by replaying this editor from the last snapshot
    WeightLoader(writer.path, edited.model, edited.spec, records, lambda: edited.editor).load(
        writer.n_done
    )
    if edited.carry_dims:  # what the editor carried after each finished edit, in order
        for carried in read_carry(writer.f, writer.n_done):
            edited.editor.commit(carried)


def _edit_all(
    tr: Trajectory, writer: TrajectoryWriter, edited: EditedModel, records: list[dict]
) -> None:
    """The edits not yet in the file, one step at a time, each written (and flushed) after it."""
    k, n_edits = tr.edits_per_step, tr.n_edits
    last_log = time.perf_counter()
    for t in range(writer.n_done + 1, n_edits + 1, k):
        step = edited.step(records[t - 1 : t - 1 + k], t, batched=k != 1)
        last = t + len(step.records) - 1
        snap = None
        if last % tr.snapshot_every == 0 or last == n_edits:
            snap = edited.weights()
        carry = step.result.carry if edited.carry_dims else None
        writer.write_step(t, step.rows, step.updates, snapshot=snap, carry=carry)
        now = time.perf_counter()
        if now - last_log >= tr.progress_every_s or last == n_edits or t == 1:
            last_log = now
            _log_step(step, last, n_edits)


def _log_step(step: Step, last: int, n_edits: int) -> None:
    rows = step.rows
    es, ps, ns = (float(np.mean([r[m] for r in rows])) for m in ("es", "ps", "ns"))
    log.info(
        "edit %d/%d case %d: ES %.2f PS %.2f NS %.2f dist %.3g | %.2f s edit, %.2f s eval",
        last,
        n_edits,
        step.records[-1]["case_id"],
        es,
        ps,
        ns,
        rows[0]["distance_0"],
        step.seconds,
        sum(r["eval_seconds"] for r in rows),
    )


def check_steps(
    editor: str,
    n_edits: int,
    snapshot_every: int,
    edits_per_step: int = 1,
    store_updates: bool = True,
    where: str = "trajectory",
) -> None:
    """Refuse step settings a trajectory cannot run, naming ``where`` they come from (the
    problems are those the workflow's config check finds, :func:`editscale.editors.
    edits_per_step_problem`)."""
    if n_edits < 1 or snapshot_every < 1 or edits_per_step < 1:
        raise ValueError(
            f"{where}: n_edits, snapshot_every and edits_per_step must be >= 1 "
            f"(got {n_edits}, {snapshot_every}, {edits_per_step})"
        )
    counts = {"n_edits": n_edits, "snapshot_every": snapshot_every}
    problem = edits_per_step_problem(editor, edits_per_step, counts, store_updates)
    if problem is not None:
        raise ValueError(f"{where}: edits_per_step {problem}")


def _backfill_weight_norms(writer: TrajectoryWriter, params: list[str], spec, device) -> None:
    """Fill ``weight_norm_i`` of the edits done when a resumed partial file lacked that metric."""
    names = [f"weight_norm_{i}" for i in range(len(params))]
    if not set(names) & set(writer.added_metrics) or writer.n_done == 0:
        return
    log.info(
        "%s predates the weight_norm metrics: replaying %d edits to fill them in",
        writer.path,
        writer.n_done,
    )
    for t, weights in replay_weights(writer.path, writer.n_done, spec, device=device):
        for i, p in enumerate(params):
            writer.f[f"metrics/{names[i]}"][t - 1] = float(torch.linalg.norm(weights[p].double()))
    writer.f.flush()


def _out_in_shape(weight: torch.Tensor, spec) -> torch.Size:
    return weight.T.shape if spec.conv1d else weight.shape


def _peek_editor_state(out_path) -> dict | None:
    """The editor state stored in a resumable partial file with finished edits (an unreadable one is
    moved aside by :func:`open_partial`)."""
    from editscale.editing.store import read_partial_editor_state

    return read_partial_editor_state(out_path)


def export_metrics_csv(h5_path, csv_path) -> None:
    """Write the per-edit metrics of a trajectory file as CSV (one row per edit)."""
    from editscale.editing.store import read_metrics

    cols = read_metrics(h5_path)
    names = ["edit", "case_id"] + [k for k in sorted(cols) if k not in ("edit", "case_id")]
    n = len(cols["edit"])
    with atomic_open(csv_path, "w", newline="", sealed=True) as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for i in range(n):
            w.writerow(
                [
                    int(cols[k][i]) if k in ("edit", "case_id") else repr(float(cols[k][i]))
                    for k in names
                ]
            )
