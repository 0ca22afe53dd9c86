"""The trajectory runner: one model, one method, one ordering, edited sequentially.

After every edit the runner records, for the record just edited, ES/PS/NS with magnitudes and
argmax variants, the normalised distance ||W_t - W_0||_F / numel of every edited matrix
(``distance_i``), its Frobenius norm ||W_t||_F (``weight_norm_i``, in float64, of the matrix as
stored), the Frobenius norm of the edit's update (``update_norm_i``), the editor's diagnostics
and wall times. When the editor also changes the module's bias (FT-C ``include_bias``), the bias
gets ``bias_update_norm_i`` (||delta b||_2) and ``bias_distance_i`` (||b_t - b_0||_2 / numel(b));
the matrix metrics stay those of the matrix alone. Everything goes to the HDF5 store, flushed after each edit; a killed run resumes
from its last complete edit (metrics a partial file from an older version lacks are recomputed
for its edits by replaying the stored updates). With ``store_updates=False`` the updates are not
stored, only the snapshots (every ``snapshot_every`` edits and the last): a resumed run, the
evaluation chunks and the disabling job rebuild the edits in between by replaying the editor
(:mod:`editscale.editing.replay`).

With ``edits_per_step`` k > 1 (a batched editor: MEMIT, EMMET, AlphaEdit, ENCORE) each step edits k
records with one update; the k records are then scored after the step, each in its own row, the
step's update is stored with its first edit (``update_norm_i`` there, 0 on the others: their
stored updates are empty) and a killed run resumes at its last finished step.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from editscale.data import counterfact
from editscale.editing.replay import WeightLoader
from editscale.editing.store import (
    REPLAY,
    TrajectoryWriter,
    read_carry,
    read_editor_state,
    replay_weights,
)
from editscale.editors import EDITORS, editor_info, load_editor_module
from editscale.editors.base import apply_updates, bias_key
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


def select_records(counterfact_path, ordering_path, n_edits: int) -> list[dict]:
    """The first ``n_edits`` records of an ordering, validated, failing before any model work."""
    records = counterfact.records_by_case_id(counterfact.load_counterfact(counterfact_path))
    order = counterfact.read_ordering(ordering_path)
    if len(order) < n_edits:
        raise ValueError(
            f"n_edits={n_edits} but the ordering {ordering_path} has only {len(order)} records"
        )
    missing = [c for c in order[:n_edits] if c not in records]
    if missing:
        raise ValueError(
            f"ordering {ordering_path} names case_ids absent from {counterfact_path}: {missing[:5]}"
        )
    return [records[c] for c in order[:n_edits]]


def load_second_moment(stats_path, model_dir, layer: int) -> torch.Tensor:
    from editscale.editing.key_stats import load_key_second_moment

    expect = {**model_identity(model_dir), "layer": layer}
    return load_key_second_moment(stats_path, expect=expect)


def stats_layers(hparams: dict) -> list[int]:
    """The layers whose key statistics an editor reads: ``layers`` (MEMIT) or ``layer`` (ROME)."""
    return [int(x) for x in hparams["layers"]] if "layers" in hparams else [int(hparams["layer"])]


def _stats_paths(stats_path) -> list:
    return [stats_path] if isinstance(stats_path, (str, os.PathLike)) else list(stats_path)


def load_second_moments(stats_path, model_dir, hparams: dict) -> dict[int, torch.Tensor] | None:
    """{layer: C} from one statistics file per layer of :func:`stats_layers` (``stats_path``: a
    path, or a list in that order), each checked to be of this model and layer; None without."""
    if stats_path is None:
        return None
    paths, layers = _stats_paths(stats_path), stats_layers(hparams)
    if len(paths) != len(layers):
        raise ValueError(
            f"{len(paths)} statistics files {paths} for the {len(layers)} layers {layers}"
        )
    return {layer: load_second_moment(p, model_dir, layer) for p, layer in zip(paths, layers)}


def stats_sha256(stats_path) -> str | None:
    """The statistics' sha256 (several files: their sha256s joined by commas, in layer order)."""
    return (
        None if stats_path is None else ",".join(sha256_file(p) for p in _stats_paths(stats_path))
    )


def trajectory_editor(trajectory_path, model, tok, model_dir, stats_path=None, editor_file=None):
    """The editor of a trajectory, built on ``model`` (the unedited model) as the runner built it:
    the method's hparams, seed and stored editor state (ROME's context templates) read from the
    trajectory file, the key statistics and editor networks from the same inputs."""
    with h5py.File(trajectory_path, "r") as f:
        hparams = json.loads(f.attrs["hparams"])
        editor_name = str(f.attrs["editor"])
        seed = int(f.attrs["seed"])
        state = read_editor_state(f)
    second_moment = load_second_moments(stats_path, model_dir, hparams)
    extra = (
        {}
        if editor_file is None
        else {"editor_file": editor_file, "identity": model_identity(model_dir)}
    )
    return load_editor_module(editor_name).make_editor(
        model, tok, hparams, second_moment, seed, state=state, **extra
    )


def run_trajectory(
    *,
    model_dir,
    counterfact_path,
    ordering_path,
    stats_path,
    out_path,
    method: str,
    editor: str,
    hparams: dict,
    n_edits: int,
    snapshot_every: int,
    seed: int,
    dtype: str = "float32",
    device: str = "cpu",
    config: dict | None = None,
    eval_batch_size: int = 64,
    progress_every_s: float = 30.0,
    editor_file=None,
    store_updates: bool = True,
    edits_per_step: int = 1,
) -> None:
    """Run (or resume) one sequential editing trajectory and write ``out_path`` (HDF5).

    ``editor_file``: the trained editor networks of editors that need one (MEND).
    ``store_updates``: False keeps snapshots only (see the module docstring).
    ``edits_per_step``: records edited together in one step (a batched editor's
    ``compute_batch``); every record of a step is then scored after the whole step.
    """
    t_start = time.perf_counter()
    check_steps(
        editor, n_edits, snapshot_every, edits_per_step, store_updates, where=f"method {method!r}"
    )
    if editor_info(editor).needs_editor_file and editor_file is None:
        raise ValueError(f"editor {editor!r} needs an editor file (editor_file=...)")
    records = select_records(counterfact_path, ordering_path, n_edits)
    module = load_editor_module(editor)
    torch.manual_seed(seed)
    model, tok = load_model(model_dir, dtype=dtype, device=device)
    spec = arch_of(model)
    second_moment = load_second_moments(stats_path, model_dir, hparams)

    identity = model_identity(model_dir)
    stats_sha = stats_sha256(stats_path)
    editor_sha = sha256_file(editor_file) if editor_file is not None else None
    key_inputs = {
        "method": method,
        "editor": editor,
        "hparams": hparams,
        "model": identity,
        "seed": seed,
        "n_edits": n_edits,
        "snapshot_every": snapshot_every,
        "dtype": dtype,
        "case_ids": [r["case_id"] for r in records],
        "stats": stats_sha,
    }
    if editor_sha is not None:
        key_inputs["editor_file"] = editor_sha
    if not store_updates:
        key_inputs["store_updates"] = False
    if edits_per_step != 1:  # files of one edit per step keep their former key
        key_inputs["edits_per_step"] = edits_per_step
    resume_key = _hash(key_inputs)
    from editscale.io.provenance import config_hash, environment

    attrs = {
        "method": method,
        "editor": editor,
        "arch": spec.name,
        "conv1d": spec.conv1d,
        "snapshot_every": snapshot_every,
        "edits_per_step": edits_per_step,
        "seed": seed,
        "dtype": dtype,
        "hparams": hparams,
        "model": read_manifest(model_dir),
        "model_id": identity["model_id"],
        "revision": identity["revision"],
        "counterfact_sha256": sha256_file(counterfact_path),
        "ordering_sha256": sha256_file(ordering_path),
        "stats_sha256": stats_sha or "",
        "editor_file_sha256": editor_sha or "",
        "store_updates": bool(store_updates),
        "config": config or {},
        "config_hash": config_hash(config or {}),
        "environment": environment(),
    }

    # The writer needs the editor's matrices and diagnostics; build the editor (context
    # templates from the file when resuming, else generated with the seed) on the unedited model.
    part_state = _peek_editor_state(out_path)
    extra = {} if editor_file is None else {"editor_file": editor_file, "identity": identity}
    ed = module.make_editor(model, tok, hparams, second_moment, seed, state=part_state, **extra)
    carry_dims = dict(getattr(ed, "carry_dims", {}))
    if carry_dims and not store_updates:
        raise ValueError(
            f"method {method!r}: editor {editor!r} carries state from edit to edit, which replaying "
            "from snapshots (store_updates: false) cannot rebuild; set store_updates: true"
        )
    params = ed.edited_modules
    biases = [p for p in params if p in set(getattr(ed, "edited_biases", ()))]  # FT-C include_bias
    originals = {p: edit_parameter(model, p).detach().clone() for p in params}
    originals.update(
        {bias_key(p): edit_parameter(model, bias_key(p)).detach().clone() for p in biases}
    )
    shapes = {p: tuple(_out_in_shape(originals[p], spec)) for p in params}
    metric_names = (
        ["edit", "case_id", *METRIC_NAMES]
        + [f"update_norm_{i}" for i in range(len(params))]
        + [f"distance_{i}" for i in range(len(params))]
        + [f"weight_norm_{i}" for i in range(len(params))]
        + [
            f"bias_{m}_{i}"
            for i, p in enumerate(params)
            if p in biases
            for m in ("update_norm", "distance")
        ]
        + list(ed.info_names)
        + ["edit_seconds", "eval_seconds"]
    )
    writer = TrajectoryWriter.open(
        out_path,
        n_edits=n_edits,
        params=params,
        shapes=shapes,
        dtypes={p: str(originals[p].dtype) for p in params},
        kinds={p: ed.update_kind if store_updates else REPLAY for p in params},
        metric_names=metric_names,
        attrs=attrs,
        resume_key=resume_key,
        biases={p: str(originals[bias_key(p)].dtype) for p in biases},
        carry_dims=carry_dims,
    )
    try:
        if writer.n_done == 0:
            writer.write_editor_state(ed.state_strings())
            writer.write_snapshot(0, originals)
        else:
            log.info("resuming %s after edit %d of %d", writer.path, writer.n_done, n_edits)
            _backfill_weight_norms(writer, params, spec, device=originals[params[0]].device)
            # the matrices and any edited bias after the last finished edit: from the file, or
            # (store_updates false) by replaying this editor from the last snapshot
            WeightLoader(writer.path, model, spec, records, lambda: ed).load(writer.n_done)
            if carry_dims:  # what the editor carried after each finished edit, in order
                for carried in read_carry(writer.f, writer.n_done):
                    ed.commit(carried)
        numel = {p: originals[p].numel() for p in params}
        last_log = time.perf_counter()
        log.info(
            "trajectory %s: %d edits with %s on %s (%s), editing %s",
            out_path,
            n_edits,
            editor,
            identity["model_id"],
            dtype,
            params,
        )
        k = edits_per_step
        for t in range(writer.n_done + 1, n_edits + 1, k):
            recs = records[t - 1 : t - 1 + k]
            t0 = time.perf_counter()
            result = ed.compute(recs[0]) if k == 1 else ed.compute_batch(recs)
            apply_updates(model, result.updates, spec)
            if carry_dims:
                ed.commit(result.carry)
            t1 = time.perf_counter()
            rows = []
            by_module = {u.module: u for u in result.updates}
            step = {}  # what every edit of the step shares: the weights after it, the editor's diagnostics
            for i, p in enumerate(params):
                w = edit_parameter(model, p).double()
                step[f"distance_{i}"] = float((w - originals[p].double()).norm()) / numel[p]
                step[f"weight_norm_{i}"] = float(torch.linalg.norm(w))
                if p in biases:  # ||b_t - b_0||_2 / numel(b), as distance_i for the matrix
                    b = edit_parameter(model, bias_key(p)).double()
                    step[f"bias_distance_{i}"] = (
                        float((b - originals[bias_key(p)].double()).norm()) / b.numel()
                    )
            for name in ed.info_names:
                step[name] = float(result.info.get(name, np.nan))
            for j, rec in enumerate(recs):
                t2 = time.perf_counter()
                scores = evaluate_record(model, tok, rec, batch_size=eval_batch_size)
                row = {
                    "edit": t + j,
                    "case_id": rec["case_id"],
                    **scores,
                    **step,
                    "edit_seconds": (t1 - t0) / k,
                    "eval_seconds": time.perf_counter() - t2,
                }
                for i, p in enumerate(params):  # the step's update is stored with its first edit
                    row[f"update_norm_{i}"] = by_module[p].frobenius_norm() if j == 0 else 0.0
                    if p in biases:
                        row[f"bias_update_norm_{i}"] = by_module[p].bias_norm() if j == 0 else 0.0
                rows.append(row)
            last = t + len(recs) - 1
            snap = None
            if last % snapshot_every == 0 or last == n_edits:
                snap = {name: edit_parameter(model, name) for name in originals}
            writer.write_step(
                t, rows, result.updates, snapshot=snap, carry=result.carry if carry_dims else None
            )
            now = time.perf_counter()
            if now - last_log >= progress_every_s or last == n_edits or t == 1:
                last_log = now
                es, ps, ns = (float(np.mean([r[m] for r in rows])) for m in ("es", "ps", "ns"))
                log.info(
                    "edit %d/%d case %d: ES %.2f PS %.2f NS %.2f dist %.3g | %.2f s edit, %.2f s eval",
                    last,
                    n_edits,
                    recs[-1]["case_id"],
                    es,
                    ps,
                    ns,
                    rows[0]["distance_0"],
                    t1 - t0,
                    sum(r["eval_seconds"] for r in rows),
                )
        writer.finish(out_path)
    finally:
        writer.close()
    log.info("trajectory done in %.1f s: %s", time.perf_counter() - t_start, out_path)


def check_steps(
    editor: str,
    n_edits: int,
    snapshot_every: int,
    edits_per_step: int = 1,
    store_updates: bool = True,
    where: str = "trajectory",
) -> None:
    """Refuse step settings a trajectory cannot run, naming ``where`` they come from."""
    if n_edits < 1 or snapshot_every < 1 or edits_per_step < 1:
        raise ValueError(
            f"{where}: n_edits, snapshot_every and edits_per_step must be >= 1 "
            f"(got {n_edits}, {snapshot_every}, {edits_per_step})"
        )
    if edits_per_step == 1:
        return
    if not editor_info(editor).batched:
        batched = sorted(n for n, i in EDITORS.items() if i.batched)
        raise ValueError(
            f"{where}: edits_per_step {edits_per_step}, but editor {editor!r} edits one record per "
            f"step; the editors that edit in batches are {batched}"
        )
    if not store_updates:
        raise ValueError(
            f"{where}: edits_per_step {edits_per_step} needs store_updates: true (replaying "
            "from snapshots rebuilds one edit at a time)"
        )
    for name, value in (("n_edits", n_edits), ("snapshot_every", snapshot_every)):
        if value % edits_per_step:
            raise ValueError(
                f"{where}: {name} {value} is not a multiple of edits_per_step {edits_per_step} "
                "(snapshots and the last edit must end a step)"
            )


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
    from editscale.editing.store import open_partial, partial_path, read_editor_state

    f = open_partial(partial_path(out_path), "r")
    if f is None:
        return None
    with f:
        if int(f.attrs.get("n_done", 0)) == 0:
            return None
        return read_editor_state(f)


def export_metrics_csv(h5_path, csv_path) -> None:
    """Write the per-edit metrics of a trajectory file as CSV (one row per edit)."""
    from editscale.editing.store import read_metrics

    cols = read_metrics(h5_path)
    names = ["edit", "case_id"] + [k for k in sorted(cols) if k not in ("edit", "case_id")]
    n = len(cols["edit"])
    tmp = Path(str(csv_path) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for i in range(n):
            w.writerow(
                [
                    int(cols[k][i]) if k in ("edit", "case_id") else repr(float(cols[k][i]))
                    for k in names
                ]
            )
    os.replace(tmp, csv_path)
