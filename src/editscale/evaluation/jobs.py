"""Evaluation jobs over a finished trajectory: chunks of checkpoints, and their merge.

Each chunk job rebuilds the edited weights after edit t from the trajectory's HDF5 file (nearest
snapshot + stored updates), loads them into the unedited model and evaluates forgetting (every
fact edited so far) and/or the downstream tasks there, and, given a collapse probe, the held-out
perplexity and generation entropy (:mod:`editscale.evaluation.collapse`) at every checkpoint.
Results are written per checkpoint to ``<chunk>.h5.partial`` and flushed; a killed job resumes at
the first checkpoint not done. The partial file records every setting that defines the chunk's
numbers (:func:`chunk_settings`); one made with other settings is moved aside to
``<chunk>.h5.partial.stale-<timestamp>`` and the chunk started afresh, so a chunk never mixes
checkpoints of two settings (one HDF5 cannot open is moved aside as ``.unreadable-<timestamp>``).
The merge combines the chunks of a trajectory into one HDF5 file (facts x checkpoints matrices,
downstream scores, collapse measures, the trajectory's distances and weight norms carried along,
the curves) and tidy CSVs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from editscale.data.counterfact import check_record_tokens, select_records
from editscale.editing.editor_state import trajectory_editor
from editscale.editing.replay import WeightLoader
from editscale.editing.store import (
    finished_trajectory,
    initial_weight_norms,
    move_aside,
    open_partial,
    read_environment,
    read_metrics,
)
from editscale.evaluation.checkpoints import checkpoint_plan
from editscale.evaluation.collapse import MEASURES as COLLAPSE_MEASURES
from editscale.evaluation.collapse import evaluate_collapse, heldout_token_lists
from editscale.evaluation.downstream import evaluate_task_set
from editscale.evaluation.forgetting import evaluate_facts, forgetting_curves
from editscale.io.files import atomic_open
from editscale.io.h5 import create, finish_sealed, open_verified, write_sealed
from editscale.io.provenance import canonical_json, environment, sha256_file
from editscale.lm.models import arch_of, load_model, model_identity

log = logging.getLogger(__name__)
DOWNSTREAM_METRICS = ("f1", "accuracy", "mcc", "n_invalid")
_STR = h5py.string_dtype()


def collapse_settings(
    probe_path, perplexity_max_tokens: int, generation_max_new_tokens: int
) -> dict | None:
    """What defines the collapse measures of a chunk: the probe's bytes and the two lengths."""
    if probe_path is None:
        return None
    return {
        "probe_sha256": sha256_file(probe_path),
        "perplexity_max_tokens": int(perplexity_max_tokens),
        "generation_max_new_tokens": int(generation_max_new_tokens),
    }


def chunk_settings(
    *,
    trajectory_sha256: str,
    checkpoints: list[dict],
    model_dir,
    dtype: str,
    counterfact_path,
    ordering_path,
    task_sets: dict[str, str],
    forgetting_paraphrases: bool,
    max_new_tokens: int,
    collapse: dict | None,
) -> dict:
    """Everything that defines the numbers of an evaluation chunk, as a JSON-able dict.

    The trajectory's bytes, the checkpoints, the model and dtype, the facts (CounterFact and
    ordering files), the downstream task sets' bytes and generation length, the forgetting
    settings and the collapse settings. Batch sizes and the device are left out, as in the
    trajectory's resume key: they change how the chunk is computed (a smaller batch after running
    out of memory), not what.
    """
    return {
        "trajectory_sha256": trajectory_sha256,
        "checkpoints": checkpoints,
        "model": model_identity(model_dir),
        "dtype": dtype,
        "counterfact_sha256": sha256_file(counterfact_path),
        "ordering_sha256": sha256_file(ordering_path),
        "task_sets_sha256": {name: sha256_file(p) for name, p in sorted(task_sets.items())},
        "forgetting_paraphrases": bool(forgetting_paraphrases),
        "max_new_tokens": int(max_new_tokens),
        "collapse": collapse,
    }


def _settings_difference(found: str | None, settings: dict) -> str:
    """Which settings of a stored chunk differ from ``settings`` (for the log), with both hashes."""
    now = canonical_json(settings)
    if found is None:
        return "it records no settings: written by an older version, or killed as it began"
    old, new = json.loads(found), json.loads(now)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return (
        f"{', '.join(keys) or 'nothing'} differ; settings sha256 {_sha256(found)[:12]} "
        f"!= {_sha256(now)[:12]}"
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _open_chunk_partial(part: Path, settings: dict) -> h5py.File:
    """The chunk's partial file, resumed when it was made with exactly ``settings``, else new.

    A partial file made with other settings is moved aside (``.stale-<timestamp>``) rather than
    resumed: its checkpoints would be mixed with new ones in one chunk, silently or failing only
    at the merge.
    """
    f = open_partial(part, "r+")  # read back whole first; a damaged one is moved aside
    if f is not None and f.attrs.get("settings") != canonical_json(settings):
        found = f.attrs.get("settings")
        f.close()
        f = None
        dest = move_aside(part, "stale")
        log.warning(
            "%s was computed with other settings (%s): moved it aside to %s, starting the chunk "
            "afresh",
            part,
            _settings_difference(found, settings),
            dest,
        )
    return f if f is not None else create(part)


@dataclass
class _CheckpointEvaluator:
    """What one chunk measures at each checkpoint, on the model whose weights the loader set."""

    model: Any
    tok: Any
    records: list[dict]
    sets: dict[str, dict]
    probe: dict | None
    heldout: list | None
    forgetting_paraphrases: bool
    batch_size: int
    downstream_batch_size: int
    max_new_tokens: int
    perplexity_max_tokens: int
    generation_max_new_tokens: int
    perplexity_batch_size: int

    def evaluate(self, g: h5py.Group, ck: dict) -> None:
        """Forgetting, downstream and collapse measures of checkpoint ``ck`` into group ``g``."""
        t = ck["t"]
        if ck["forgetting"] and t > 0:
            res = evaluate_facts(
                self.model,
                self.tok,
                self.records[:t],
                paraphrases=self.forgetting_paraphrases,
                batch_size=self.batch_size,
            )
            for k, v in res.items():
                g.create_dataset(f"forgetting/{k}", data=v)
        if ck["downstream"]:
            for name, ts in self.sets.items():
                r = evaluate_task_set(
                    self.model,
                    self.tok,
                    ts,
                    batch_size=self.downstream_batch_size,
                    max_new_tokens=self.max_new_tokens,
                )
                dg = g.require_group(f"downstream/{name}")
                for m in DOWNSTREAM_METRICS:
                    dg.attrs[m] = float(r[m])
                dg.create_dataset("predictions", data=np.asarray(r["predictions"], dtype=np.int64))
        if self.probe is not None:
            _write_collapse(
                g,
                evaluate_collapse(
                    self.model,
                    self.tok,
                    self.probe,
                    max_tokens=self.perplexity_max_tokens,
                    max_new_tokens=self.generation_max_new_tokens,
                    batch_size=self.perplexity_batch_size,
                    generation_batch_size=self.downstream_batch_size,
                    token_lists=self.heldout,
                ),
            )

    def summary(self, g: h5py.Group, ck: dict) -> str:
        """The checkpoint's downstream F1 and collapse measures, for the log."""
        return "".join(
            f", {n} F1 {g[f'downstream/{n}'].attrs['f1']:.3f}"
            for n in self.sets
            if ck["downstream"]
        ) + (
            ""
            if self.probe is None
            else (
                f", perplexity {g['collapse'].attrs['perplexity']:.4g}, generation "
                f"entropy {g['collapse'].attrs['generation_entropy']:.3f}"
            )
        )


def _weight_loader(
    trajectory_path, model, tok, records: list[dict], model_dir, stats_path, editor_file
) -> WeightLoader:
    """Puts the weights after any edit into ``model``; the trajectory's editor (built when first
    needed) replays the edits a trajectory keeping snapshots only did not store."""
    return WeightLoader(
        trajectory_path,
        model,
        arch_of(model),
        records,
        lambda: trajectory_editor(trajectory_path, model, tok, model_dir, stats_path, editor_file),
    )


def _load_probe(collapse_probe, tok, max_tokens: int) -> tuple[dict | None, list | None]:
    """The collapse probe (None without one) and its held-out documents' tokens."""
    if collapse_probe is None:
        return None, None
    probe = json.loads(Path(collapse_probe).read_text())
    return probe, (
        heldout_token_lists(tok, probe["perplexity"]["docs"], max_tokens) if probe else None
    )


def _begin_chunk(
    f: h5py.File,
    part: Path,
    settings: dict,
    traj_sha: str,
    collapse: dict | None,
    checkpoints: list[dict],
) -> list[dict]:
    """Record the settings of a new chunk file; the checkpoints not done yet (a resumed file)."""
    if "done" not in f.attrs:
        f.attrs["settings"] = canonical_json(settings)
        f.attrs["trajectory_sha256"] = traj_sha
        f.attrs["collapse_settings"] = json.dumps(collapse, sort_keys=True)
        f.attrs["checkpoints"] = json.dumps(checkpoints)
        f.attrs["environment"] = json.dumps(environment())
        f.attrs["done"] = json.dumps([])
    done = set(json.loads(f.attrs["done"]))
    if done:
        log.info(
            "resuming %s: %d of %d checkpoints already done", part, len(done), len(checkpoints)
        )
    return [c for c in checkpoints if c["t"] not in done]


def _run_checkpoints(
    f: h5py.File, todo: list[dict], loader: WeightLoader, evaluator: _CheckpointEvaluator
) -> None:
    """Evaluate each checkpoint of ``todo`` in turn, marking it done after a flush."""
    done = set(json.loads(f.attrs["done"]))
    for i, ck in enumerate(todo):
        t = ck["t"]
        t0 = time.perf_counter()
        loader.load(t)
        if f"t{t}" in f:  # begun by a killed run: redo it whole
            del f[f"t{t}"]
        g = f.create_group(f"t{t}")
        evaluator.evaluate(g, ck)
        g.attrs["seconds"] = time.perf_counter() - t0
        f.flush()
        done.add(t)
        f.attrs["done"] = json.dumps(sorted(done))
        f.flush()
        log.info(
            "checkpoint t=%d (%d/%d in this job): %.1f s%s",
            t,
            i + 1,
            len(todo),
            time.perf_counter() - t0,
            evaluator.summary(g, ck),
        )


def run_eval_chunk(
    *,
    trajectory_path,
    model_dir,
    counterfact_path,
    ordering_path,
    task_sets: dict[str, str],
    out_path,
    checkpoints: list[dict],
    forgetting_paraphrases: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    batch_size: int = 64,
    downstream_batch_size: int = 16,
    max_new_tokens: int = 3,
    collapse_probe=None,
    perplexity_max_tokens: int = 128,
    generation_max_new_tokens: int = 24,
    perplexity_batch_size: int = 16,
    stats_path=None,
    editor_file=None,
) -> None:
    """Evaluate the given checkpoints of one trajectory and write ``out_path`` (HDF5).

    ``stats_path``, ``editor_file``: the trajectory's key statistics and editor networks, used
    only to replay the edits of a trajectory that keeps snapshots only (``store_updates: false``,
    :mod:`editscale.editing.replay`).

    ``collapse_probe``: the JSON file of :func:`editscale.evaluation.collapse.build_probe`; with
    it, every checkpoint also gets the held-out perplexity (documents cut to
    ``perplexity_max_tokens`` tokens, ``perplexity_batch_size`` per forward pass) and the entropy
    of greedy generations of ``generation_max_new_tokens`` tokens (``downstream_batch_size``
    prompts per batch).
    """
    meta = finished_trajectory(trajectory_path)
    records = select_records(counterfact_path, ordering_path, meta["n_edits"])
    collapse = collapse_settings(collapse_probe, perplexity_max_tokens, generation_max_new_tokens)
    model, tok = load_model(model_dir, dtype=dtype, device=device)
    check_record_tokens(records, tok, model.config, counterfact_path)
    probe, heldout = _load_probe(collapse_probe, tok, perplexity_max_tokens)
    loader = _weight_loader(
        trajectory_path, model, tok, records, model_dir, stats_path, editor_file
    )
    evaluator = _CheckpointEvaluator(
        model=model,
        tok=tok,
        records=records,
        sets={name: json.loads(Path(p).read_text()) for name, p in sorted(task_sets.items())},
        probe=probe,
        heldout=heldout,
        forgetting_paraphrases=forgetting_paraphrases,
        batch_size=batch_size,
        downstream_batch_size=downstream_batch_size,
        max_new_tokens=max_new_tokens,
        perplexity_max_tokens=perplexity_max_tokens,
        generation_max_new_tokens=generation_max_new_tokens,
        perplexity_batch_size=perplexity_batch_size,
    )
    traj_sha = sha256_file(trajectory_path)
    settings = chunk_settings(
        trajectory_sha256=traj_sha,
        checkpoints=checkpoints,
        model_dir=model_dir,
        dtype=dtype,
        counterfact_path=counterfact_path,
        ordering_path=ordering_path,
        task_sets=task_sets,
        forgetting_paraphrases=forgetting_paraphrases,
        max_new_tokens=max_new_tokens,
        collapse=collapse,
    )
    _write_chunk(out_path, settings, traj_sha, collapse, checkpoints, loader, evaluator)


def _write_chunk(
    out_path,
    settings: dict,
    traj_sha: str,
    collapse: dict | None,
    checkpoints: list[dict],
    loader: WeightLoader,
    evaluator: _CheckpointEvaluator,
) -> None:
    """Evaluate the checkpoints into ``<out_path>.partial`` (resuming it), then seal it and
    rename it to ``out_path``."""
    part = Path(str(out_path) + ".partial")
    f = _open_chunk_partial(part, settings)
    try:
        todo = _begin_chunk(f, part, settings, traj_sha, collapse, checkpoints)
        _run_checkpoints(f, todo, loader, evaluator)
        f.attrs["complete"] = True
    finally:
        f.close()
    finish_sealed(part)
    os.replace(part, out_path)


def _write_collapse(g: h5py.Group, res: dict) -> None:
    """The collapse measures of one checkpoint: scalars as attributes, per-item values as
    datasets."""
    cg = g.create_group("collapse")
    for m in COLLAPSE_MEASURES:
        cg.attrs[m] = float(res[m])
    cg.create_dataset("doc_nll", data=np.asarray(res["doc_nll"], dtype=np.float64))
    cg.create_dataset("entropies", data=np.asarray(res["entropies"], dtype=np.float64))
    cg.create_dataset("generations", data=np.array(res["generations"], dtype=object), dtype=_STR)


def _read_collapse(g: h5py.Group) -> dict:
    return {
        **{m: float(g.attrs[m]) for m in COLLAPSE_MEASURES},
        "doc_nll": g["doc_nll"][()],
        "entropies": g["entropies"][()],
        "generations": [
            s.decode() if isinstance(s, bytes) else str(s) for s in g["generations"][()]
        ],
    }


@dataclass
class _Chunks:
    """What the chunk files of one trajectory hold: per checkpoint t its forgetting columns,
    downstream scores and collapse measures; the chunks' paths, hashes and checkpoints; the
    collapse settings and (files that record them) the other settings of each chunk."""

    results: dict[int, dict] = field(default_factory=dict)
    info: list[dict] = field(default_factory=list)
    collapse_settings: set[str] = field(default_factory=set)
    other_settings: dict[str, dict] = field(default_factory=dict)


def _read_chunks(chunk_paths: list[str], trajectory_path, traj_sha: str) -> _Chunks:
    """Read every chunk file, refusing one computed from another version of the trajectory."""
    out = _Chunks()
    for p in chunk_paths:
        with open_verified(p) as f:
            if f.attrs["trajectory_sha256"] != traj_sha:
                raise ValueError(
                    f"evaluation chunk {p} was computed from another version of {trajectory_path}"
                )
            out.info.append(
                {
                    "path": str(p),
                    "sha256": sha256_file(p),
                    "checkpoints": json.loads(f.attrs["checkpoints"]),
                }
            )
            out.collapse_settings.add(str(f.attrs.get("collapse_settings", "null")))
            if "settings" in f.attrs:
                out.other_settings[str(p)] = {
                    k: v for k, v in json.loads(f.attrs["settings"]).items() if k != "checkpoints"
                }
            for key in f:
                out.results[int(key[1:])] = _read_checkpoint(f[key])
    return out


def _read_checkpoint(g: h5py.Group) -> dict:
    return {
        "forgetting": {k: g["forgetting"][k][()] for k in g.get("forgetting", {})},
        "downstream": {k: dict(g["downstream"][k].attrs) for k in g.get("downstream", {})},
        "collapse": _read_collapse(g["collapse"]) if "collapse" in g else None,
    }


def _check_chunks(chunks: _Chunks, plan: list[dict], trajectory_path) -> None:
    """Refuse chunks of different settings, and a plan with checkpoints in no chunk."""
    if len(chunks.collapse_settings) > 1:
        raise ValueError(
            f"the evaluation chunks of {trajectory_path} were computed with different collapse "
            f"settings: {sorted(chunks.collapse_settings)}"
        )
    _check_same_settings(chunks.other_settings, trajectory_path)
    missing = [c["t"] for c in plan if c["t"] not in chunks.results]
    if missing:
        raise ValueError(
            f"checkpoints {missing[:10]} of {trajectory_path} are in none of the chunk files"
        )


@dataclass
class _Merged:
    """The merged matrices and series of one trajectory (see :func:`merge_eval_chunks`)."""

    f_ckpts: np.ndarray  # forgetting checkpoints
    d_ckpts: np.ndarray  # downstream checkpoints
    c_ckpts: np.ndarray  # checkpoints with collapse measures
    mats: dict[str, np.ndarray]  # forgetting test -> (facts, f_ckpts), NaN before a fact's edit
    success: np.ndarray  # (n_edits,) bool: the edit succeeded right after it
    curves: dict[str, np.ndarray]
    tasks: list[str]
    collapse: list[dict]


def _merge(results: dict[int, dict], plan: list[dict], traj: dict, n: int, test: str) -> _Merged:
    f_ckpts = np.array([c["t"] for c in plan if c["forgetting"]], dtype=np.int64)
    d_ckpts = np.array([c["t"] for c in plan if c["downstream"]], dtype=np.int64)
    keys = sorted({k for t in f_ckpts for k in results[int(t)]["forgetting"]})
    mats = {k: np.full((n, len(f_ckpts)), np.nan) for k in keys}
    for c, t in enumerate(f_ckpts):
        for k in keys:
            mats[k][: int(t), c] = results[int(t)]["forgetting"][k]
    success = traj["es_argmax"] == 1 if test == "argmax_ok" else traj["es"] == 1
    curves = forgetting_curves(mats[test], f_ckpts, success) if len(f_ckpts) else {}
    c_ckpts = np.array(
        [c["t"] for c in plan if results[c["t"]]["collapse"] is not None], dtype=np.int64
    )
    return _Merged(
        f_ckpts=f_ckpts,
        d_ckpts=d_ckpts,
        c_ckpts=c_ckpts,
        mats=mats,
        success=success,
        curves=curves,
        tasks=sorted({k for t in d_ckpts for k in results[int(t)]["downstream"]}),
        collapse=[results[int(t)]["collapse"] for t in c_ckpts],
    )


def _write_merged_h5(
    out_path,
    merged: _Merged,
    results: dict[int, dict],
    traj: dict,
    *,
    trajectory_path,
    traj_sha: str,
    chunk_info: list[dict],
    params: list[str],
    test: str,
    collapse_settings: str,
) -> None:
    with write_sealed(out_path) as out:
        out.attrs["trajectory"] = str(trajectory_path)
        out.attrs["trajectory_sha256"] = traj_sha
        out.attrs["chunks"] = json.dumps(chunk_info)
        out.attrs["forgetting_test"] = test
        out.attrs["params"] = json.dumps(params)  # names of the edited matrices (distance_i order)
        # where the trajectory ran (CPU, GPUs), for the figures
        out.attrs["trajectory_environment"] = read_environment(trajectory_path)
        fg = out.create_group("forgetting")
        fg["checkpoints"] = merged.f_ckpts
        fg["success_after_edit"] = merged.success.astype(np.int8)
        for k, m in merged.mats.items():
            fg.create_dataset(k, data=m, compression="gzip")
        for k, v in merged.curves.items():
            fg[f"curve_{k}"] = v
        dg = out.create_group("downstream")
        dg["checkpoints"] = merged.d_ckpts
        for task in merged.tasks:
            for m in DOWNSTREAM_METRICS:
                dg[f"{task}/{m}"] = np.array(
                    [results[int(t)]["downstream"][task][m] for t in merged.d_ckpts]
                )
        _write_merged_collapse(out, merged.c_ckpts, merged.collapse, collapse_settings)
        tg = out.create_group("trajectory")
        for k, v in traj.items():
            if (
                k == "edit"
                or k == "case_id"
                or k.startswith(("distance_", "update_norm_", "weight_norm_"))
                or k in ("es", "ps", "ns")
            ):
                tg[k] = v
        # ||W_0||_F of each edited matrix (from the unedited snapshot):
        # weight_norm_i / this = norm growth
        tg["weight_norm_initial"] = np.array(
            initial_weight_norms(trajectory_path), dtype=np.float64
        )


def _write_tidy_csvs(
    merged: _Merged, results: dict[int, dict], forgetting_csv, downstream_csv, collapse_csv
) -> None:
    """Curve rows have no edit; fact rows give each edited fact's test at each checkpoint."""
    rows = [
        ("", int(t), f"forgetting_{k}", float(v[c]))
        for k, v in merged.curves.items()
        for c, t in enumerate(merged.f_ckpts)
    ]
    for k, mat in merged.mats.items():
        facts, cks = np.nonzero(~np.isnan(mat))
        rows += [
            (int(i) + 1, int(merged.f_ckpts[c]), k, float(mat[i, c])) for i, c in zip(facts, cks)
        ]
    _write_csv(forgetting_csv, ["edit", "checkpoint", "metric", "value"], rows)
    _write_csv(
        downstream_csv,
        ["checkpoint", "task", "metric", "value"],
        [
            (int(t), task, m, float(results[int(t)]["downstream"][task][m]))
            for t in merged.d_ckpts
            for task in merged.tasks
            for m in DOWNSTREAM_METRICS
        ],
    )
    if collapse_csv is not None:
        _write_csv(
            collapse_csv,
            ["checkpoint", "metric", "value"],
            [
                (int(t), m, float(r[m]))
                for t, r in zip(merged.c_ckpts, merged.collapse)
                for m in COLLAPSE_MEASURES
            ],
        )


def merge_eval_chunks(
    chunk_paths: list[str],
    trajectory_path,
    out_path,
    forgetting_csv,
    downstream_csv,
    collapse_csv=None,
    *,
    forgetting_every: int,
    downstream_every: int,
    test: str = "argmax_ok",
) -> None:
    """Combine the chunk files of one trajectory; derive the forgetting curves; write tidy CSVs.

    ``collapse_csv``: where to write the collapse measures (checkpoint, metric, value); the rows
    are those of the checkpoints whose chunk measured them (none for chunks without a probe).
    Chunks whose :func:`chunk_settings` differ (beyond their checkpoints) are refused, naming what
    differs, rather than merged into mixed matrices.
    """
    meta = finished_trajectory(trajectory_path)
    plan = checkpoint_plan(meta["n_edits"], forgetting_every, downstream_every)
    traj_sha = sha256_file(trajectory_path)
    chunks = _read_chunks(chunk_paths, trajectory_path, traj_sha)
    _check_chunks(chunks, plan, trajectory_path)
    traj = read_metrics(trajectory_path)
    merged = _merge(chunks.results, plan, traj, meta["n_edits"], test)
    _write_merged_h5(
        out_path,
        merged,
        chunks.results,
        traj,
        trajectory_path=trajectory_path,
        traj_sha=traj_sha,
        chunk_info=chunks.info,
        params=meta["params"],
        test=test,
        collapse_settings=chunks.collapse_settings.pop() if chunks.collapse_settings else "null",
    )
    _write_tidy_csvs(merged, chunks.results, forgetting_csv, downstream_csv, collapse_csv)


def _check_same_settings(by_chunk: dict[str, dict], trajectory_path) -> None:
    """Refuse to merge chunks computed with different settings, naming the settings that differ."""
    distinct = {canonical_json(s) for s in by_chunk.values()}
    if len(distinct) <= 1:
        return
    first = next(iter(by_chunk.values()))
    keys = sorted(
        {k for s in by_chunk.values() for k in set(s) | set(first) if s.get(k) != first.get(k)}
    )
    raise ValueError(
        f"the evaluation chunks of {trajectory_path} were computed with different settings "
        f"({', '.join(keys)} differ): rerun the chunks, e.g. snakemake --forcerun eval_chunk"
    )


def _write_merged_collapse(
    out: h5py.File, checkpoints: np.ndarray, results: list[dict], settings: str
) -> None:
    """Group ``collapse``: per checkpoint the scalars, per checkpoint x prompt the generations and
    their entropies, per checkpoint x document the mean NLL."""
    cg = out.create_group("collapse")
    cg.attrs["settings"] = settings
    cg["checkpoints"] = checkpoints
    for m in COLLAPSE_MEASURES:
        cg[m] = np.array([r[m] for r in results], dtype=np.float64)
    if not results:
        return
    cg["entropies"] = np.vstack([r["entropies"] for r in results]).astype(np.float64)
    cg["doc_nll"] = np.vstack([r["doc_nll"] for r in results]).astype(np.float64)
    cg.create_dataset(
        "generations", data=np.array([r["generations"] for r in results], dtype=object), dtype=_STR
    )


def _write_csv(path, header: list[str], rows: list[tuple]) -> None:
    with atomic_open(path, "w", newline="", sealed=True) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
