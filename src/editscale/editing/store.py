"""HDF5 store of one edit trajectory, written incrementally and resumable.

Layout of ``<trajectory>.h5``::

    attrs: format, method, editor, n_edits, snapshot_every, n_done, complete, params (json),
           conv1d, config (json), config_hash, hparams (json), seed, environment (json),
           model (json manifest), ordering_sha256, counterfact_sha256, stats_sha256, resume_key
    editor_state/<key>            strings (e.g. context_templates)
    metrics/<name>                (n_edits,) float64 per-edit values (NaN until written); files
                                  written before a metric existed lack its dataset
    updates/<i>/u, updates/<i>/v  (n_edits, in) / (n_edits, out) float32 rank-one factors of param i
    updates/<i>/dense             (n_edits, out, in) float32 for methods without factors
    updates/<i>/u, v, offsets     kind low_rank (MEND): (rows, in) / (rows, out) float32 factor rows
                                  of all edits, growing; edit t owns rows offsets[t-1]:offsets[t]
                                  (delta = v^T u); offsets (n_edits + 1,) int64
    updates/<i>                   kind replay (``store_updates: false``): no update is stored; the
                                  weights after an edit between two snapshots are rebuilt by
                                  replaying the editor from the earlier one
                                  (:mod:`editscale.editing.replay`,
                                  checked bitwise against the later one)
    snapshots/<i>/<t>             exact copy (storage orientation and dtype) of param i after edit t
    updates/<i>/bias              (n_edits, out) float32 bias deltas, when the editor also changes
                                  the bias of param i's module (attrs bias=True; FT-C include_bias);
                                  the file's attrs bias_params (json) list those modules
    bias_snapshots/<i>/<t>        exact copy of that bias after edit t (at the same steps)
    carry/<name>/rows, offsets    what a stateful editor carries between edits (AlphaEdit's inserted
                                  keys): float64 rows of all edits, growing; edit t owns rows
                                  offsets[t-1]:offsets[t]; read back in order on resume

With ``edits_per_step`` k > 1 (attrs; one update per step of k edits, MEMIT's batches) a step's
update and carried rows are stored with its first edit and its other k-1 edits hold empty ones
(:meth:`TrajectoryWriter.write_step`): every reader above works unchanged, and the weights after
any edit of a step are those after the whole step, as its per-edit metrics were measured.

While running, the file is ``<trajectory>.h5.partial``; ``n_done`` is advanced (and the file
flushed) only after an edit's metrics, update and snapshot are all written. The finished file is
renamed to its final name with ``complete=True``, so a half-written file never passes for a
finished one. A partial file resumed by a runner that records more metrics gets their datasets
(NaN) on reopening; :attr:`TrajectoryWriter.added_metrics` names them, for the runner to fill in.
A partial file made with other inputs is replaced when it holds no finished edit and refused
otherwise; one HDF5 cannot open (truncated, garbage) is moved aside by :func:`open_partial`.

Every numeric dataset is written with HDF5's fletcher32 checksum (files written before it have
none), so bytes changed on disk make the read fail instead of passing wrong numbers on; the
readers here turn that failure into a :class:`CorruptDataError` naming the file and dataset.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from editscale.editors.base import ParamUpdate, apply_update, bias_key
from editscale.io.files import atomic_path
from editscale.io.h5 import (
    DamagedFileError,
    create,
    finish_sealed,
    metadata_digest,
    open_h5,
    open_verified,
    read_dataset,
    readable_problem,
)
from editscale.lm.models import ARCHITECTURES, ArchSpec

log = logging.getLogger(__name__)

FORMAT = "editscale-trajectory/1"
_STR = h5py.string_dtype()
# Every numeric dataset carries a checksum: a read of bytes changed on disk fails (needs chunks).
_CHECKSUM = {"fletcher32": True}


class StoreError(RuntimeError):
    pass


class CorruptDataError(StoreError, DamagedFileError):
    """A trajectory file's bytes are not those written (its seal, a dataset's checksum or its
    metadata digest fails, or HDF5 cannot read it back): the file is damaged."""


class UpdatesNotStored(StoreError):
    """The trajectory keeps snapshots only (update kind ``replay``): edits between snapshots are
    rebuilt by replaying the editor (:class:`editscale.editing.replay.WeightLoader`)."""


REPLAY = "replay"


def partial_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".partial")


def move_aside(path: str | os.PathLike, reason: str) -> Path:
    """Rename ``path`` to ``<path>.<reason>-<timestamp>`` (never deleting it) and return the new
    name.

    Used for unfinished files that cannot be resumed, so that their bytes stay for inspection.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.{reason}-{stamp}")
    n = 1
    while dest.exists():  # two in the same second
        dest = path.with_name(f"{path.name}.{reason}-{stamp}-{n}")
        n += 1
    os.replace(path, dest)
    return dest


def open_partial(path: str | os.PathLike, mode: str = "r") -> h5py.File | None:
    """Open an unfinished HDF5 file to resume it; None when there is none to resume.

    The file is first read back whole by a separate process
    (:func:`editscale.io.h5.readable_problem`: every object visited, every dataset's checksum): a
    file HDF5 cannot read back (truncated or cut short by a full disk, structures pointing past
    its end, not HDF5 at all) would otherwise stop every rerun with an error that does not name
    it, or crash the job. It is moved aside to ``<path>.unreadable-<timestamp>`` with a warning
    naming it and the problem, and the caller starts afresh. A file locked by another process is
    not unreadable: that stays an error, naming it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        problem = readable_problem(path)
        f = None if problem is not None else h5py.File(path, mode)
    except BlockingIOError as err:
        raise StoreError(
            f"{path} is open in another process (is another job writing it?): {err}"
        ) from err
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as err:
        problem = str(err)
    if problem is None:
        return f
    dest = move_aside(path, "unreadable")
    log.warning(
        "cannot resume the unfinished file %s (%s): moved it aside to %s and starting afresh",
        path,
        problem,
        dest,
    )
    return None


def _read(ds: h5py.Dataset, sel=()) -> np.ndarray:
    """:func:`editscale.io.h5.read_dataset`, its failure a :class:`CorruptDataError` (a
    :class:`StoreError`, as the store's other refusals)."""
    try:
        return read_dataset(ds, sel)
    except DamagedFileError as err:
        raise CorruptDataError(str(err)) from err


def _torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bits
        return t.view(torch.int16).numpy()
    return t.numpy()


def _numpy_to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "torch.bfloat16":
        return t.view(torch.bfloat16)
    return t


class TrajectoryWriter:
    """Append-only writer of one trajectory; create or resume with :meth:`open`."""

    def __init__(self, f: h5py.File, path: Path, added_metrics: list[str] | None = None):
        self.f, self.path = f, path
        self.added_metrics = list(added_metrics or [])

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        n_edits: int,
        params: list[str],
        shapes: dict[str, tuple],
        dtypes: dict[str, str],
        kinds: dict[str, str],
        metric_names: list[str],
        attrs: dict,
        resume_key: str,
        biases: dict[str, str] | None = None,
        carry_dims: dict[str, int] | None = None,
    ) -> "TrajectoryWriter":
        """Create ``path.partial``, or reopen it when its ``resume_key`` matches.

        ``biases``: {module: dtype} of the params whose module's bias every edit also changes.
        ``carry_dims``: {name: row width} of what the editor carries between edits.
        """
        biases = dict(biases or {})
        part = partial_path(path)
        f = _open_resumable(part, resume_key)
        if f is not None:
            return cls(f, part, _add_missing_metrics(f, metric_names))
        part.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(part, suffix=".new") as tmp, create(tmp) as f:
            _write_header(f, n_edits, params, dtypes, biases, resume_key, attrs)
            g = f.create_group("metrics")
            for name in metric_names:
                g.create_dataset(name, shape=(n_edits,), dtype="f8", fillvalue=np.nan, **_CHECKSUM)
            for i, p in enumerate(params):
                _create_param_groups(f, i, p, kinds[p], shapes[p], n_edits, p in biases)
            f.create_group("editor_state")
            for name, dim in (carry_dims or {}).items():
                _create_carry(f, name, dim, n_edits)
            _stamp_metadata(f)
            f.flush()
        return cls(open_h5(part, "r+"), part)

    @property
    def n_done(self) -> int:
        return int(self.f.attrs["n_done"])

    def write_editor_state(self, state: dict) -> None:
        g = self.f["editor_state"]
        for k, v in state.items():
            if isinstance(v, list) and all(isinstance(s, str) for s in v):
                if k in g:
                    del g[k]
                g.create_dataset(k, data=np.array(v, dtype=object), dtype=_STR)
            else:
                g.attrs[k] = json.dumps(v)
        _stamp_metadata(self.f)
        self.f.flush()

    def write_snapshot(self, t: int, weights: dict[str, torch.Tensor]) -> None:
        """Copies of every edited tensor after edit ``t``: ``weights[p]`` of each param and
        ``weights[bias_key(p)]`` of each param whose bias is edited."""
        params = json.loads(self.f.attrs["params"])
        biased = set(_bias_params(self.f))
        for i, p in enumerate(params):
            groups = [(f"snapshots/{i}", p)] + (
                [(f"bias_snapshots/{i}", bias_key(p))] if p in biased else []
            )
            for group, key in groups:
                g = self.f[group]
                if str(t) in g:
                    del g[str(t)]
                g.create_dataset(
                    str(t),
                    data=_torch_to_numpy(weights[key]),
                    compression="gzip",
                    compression_opts=1,
                    chunks=True,
                    **_CHECKSUM,
                )

    def write_edit(
        self,
        t: int,
        metrics: dict[str, float],
        updates: list[ParamUpdate],
        snapshot: dict[str, torch.Tensor] | None = None,
        carry: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record edit ``t`` (1-based) and advance ``n_done`` to ``t`` after a flush."""
        self.write_step(t, [metrics], updates, snapshot=snapshot, carry=carry)

    def write_step(
        self,
        t: int,
        metrics: list[dict[str, float]],
        updates: list[ParamUpdate],
        snapshot: dict[str, torch.Tensor] | None = None,
        carry: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record one editing step of ``len(metrics)`` edits, ``t .. t + len(metrics) - 1``
        (1-based), made by the one update ``updates``, and advance ``n_done`` to the step's last
        edit after a flush (a run killed mid-step redoes the whole step).

        The step's update and carried rows are stored with its first edit ``t``; its other edits
        store an empty update (zero factors, no low-rank rows, no carried rows), so that the weights
        "after edit t'" for any t' of the step are the weights after the whole step, as its per-edit
        metrics were measured. ``snapshot``: the weights after the step, stored under its last edit.
        An HDF5 error while writing (a full disk) is raised as a :class:`StoreError` naming the
        file.
        """
        try:
            self._write_step(t, metrics, updates, snapshot, carry)
        except StoreError:
            raise
        except (OSError, RuntimeError) as err:
            raise StoreError(
                f"{self.path}: writing edits from {t} on failed ({type(err).__name__}: {err}). "
                "A rerun checks the file and resumes it from its last committed edit, or moves it "
                "aside when it is damaged"
            ) from err

    def _write_step(
        self,
        t: int,
        metrics: list[dict[str, float]],
        updates: list[ParamUpdate],
        snapshot: dict[str, torch.Tensor] | None,
        carry: dict[str, torch.Tensor] | None,
    ) -> None:
        k = len(metrics)
        if k < 1:
            raise StoreError(f"step at edit {t}: no edit's metrics given")
        if t != self.n_done + 1:
            raise StoreError(f"edit {t} written out of order (n_done={self.n_done})")
        last = t + k - 1
        if last > int(self.f.attrs["n_edits"]):
            raise StoreError(
                f"step {t}..{last} runs past the file's {int(self.f.attrs['n_edits'])} edits"
            )
        names = set(self.f["carry"]) if "carry" in self.f else set()
        if set(carry or {}) != names:
            raise StoreError(
                f"edit {t}: carried {sorted(carry or {})}, the store expects {sorted(names)}"
            )
        for name, rows in (carry or {}).items():
            g = self.f[f"carry/{name}"]
            start = int(
                _read(g["offsets"], t - 1)
            )  # rows past it belong to no finished edit: overwritten
            end = start + int(rows.shape[0])
            g["rows"].resize(end, axis=0)
            g["rows"][start:end] = rows.detach().to("cpu", torch.float64).numpy()
            g["offsets"][t : last + 1] = end  # the step's later edits carry no rows
        params = json.loads(self.f.attrs["params"])
        for name in metrics[0]:
            self.f[f"metrics/{name}"][t - 1 : last] = [row[name] for row in metrics]
        by_module = {u.module: u for u in updates}
        for i, p in enumerate(params):
            g = self.f[f"updates/{i}"]
            if g.attrs["kind"] == REPLAY:
                continue
            self._write_update(g, t, last, p, by_module[p])
        if snapshot is not None:
            self.write_snapshot(last, snapshot)
        self.f.flush()
        self.f.attrs["n_done"] = last
        self.f.flush()

    @staticmethod
    def _write_update(g: h5py.Group, t: int, last: int, p: str, upd: ParamUpdate) -> None:
        """``upd`` as edit ``t``'s update of param ``p`` (group ``g``), empty ones for
        ``t+1 .. last``."""
        if upd.kind != g.attrs["kind"]:
            raise StoreError(
                f"edit {t}: a {upd.kind} update for {p}, whose store kind is {g.attrs['kind']}"
            )
        if (upd.bias is not None) != ("bias" in g):
            raise StoreError(
                f"edit {t}: the update of {p} {'changes' if upd.bias is not None else 'leaves'} "
                f"its bias, but the store {'does not record' if 'bias' not in g else 'expects'} "
                "bias updates"
            )
        if upd.bias is not None:
            g["bias"][t - 1] = _torch_to_numpy(upd.bias.float())
            g["bias"][t:last] = 0.0
        if upd.kind == "rank_one":
            g["u"][t - 1] = _torch_to_numpy(upd.u.float())
            g["v"][t - 1] = _torch_to_numpy(upd.v.float())
            g["u"][t:last] = 0.0
            g["v"][t:last] = 0.0
        elif upd.kind == "low_rank":
            # rows past offsets[n_done] belong to no finished edit (a killed run): overwritten
            start = int(_read(g["offsets"], t - 1))
            end = start + int(upd.u.shape[0])
            for name, fac in (("u", upd.u), ("v", upd.v)):
                g[name].resize(end, axis=0)
                g[name][start:end] = _torch_to_numpy(fac.float())
            g["offsets"][t : last + 1] = end
        else:
            g["dense"][t - 1] = _torch_to_numpy(upd.dense.float())
            for s in range(t, last):
                g["dense"][s] = 0.0

    def finish(self, final_path: str | os.PathLike) -> None:
        """Mark the file complete, seal it (:func:`editscale.io.h5.seal`) and rename it to
        ``final_path``."""
        self.f.attrs["complete"] = True
        self.f.flush()
        self.f.close()
        finish_sealed(self.path)
        os.replace(self.path, final_path)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


def _open_resumable(part: Path, resume_key: str) -> h5py.File | None:
    """The partial file ``part`` opened to resume, when it was made with ``resume_key``; None when
    there is none or it holds no finished edit (it is then replaced); an error when it holds
    finished edits made with other inputs or settings."""
    f = open_partial(part, "r+")
    if f is None:
        return None
    problem = partial_problem(f)
    if problem is not None:
        f.close()
        dest = move_aside(part, "damaged")
        log.warning(
            "cannot resume %s (%s): moved it aside to %s and starting afresh", part, problem, dest
        )
        return None
    if f.attrs.get("resume_key") == resume_key:
        return f
    found, n_done, n_total = (
        f.attrs.get("resume_key"),
        int(f.attrs.get("n_done", 0)),
        f.attrs.get("n_edits"),
    )
    f.close()
    if n_done > 0:
        raise StoreError(
            f"{part} holds an unfinished trajectory ({n_done} of {n_total} edits done) made with "
            f"different inputs or settings (resume key {found!r} != {resume_key!r}). Delete it to "
            "start afresh (its edits are lost), or restore the inputs and config it was made with "
            "to resume it"
        )
    log.info(
        "replacing %s: it holds no finished edit and was made with different inputs or settings",
        part,
    )
    return None


_COUNTERS = frozenset({"n_done", "complete", "metadata_sha256"})


def _stamp_metadata(f: h5py.File) -> None:
    """Record the digest of the file's metadata (:func:`editscale.io.h5.metadata_digest`: every
    attribute but the counters that advance as it grows, and the editor's stored strings)."""
    f.attrs["metadata_sha256"] = metadata_digest(f, skip_attrs=_COUNTERS)


def check_metadata(f: h5py.File) -> None:
    """Refuse a trajectory file whose metadata (hyperparameters, seed, config, context templates,
    ...) are not those written: :class:`CorruptDataError` naming the file. Files from before the
    digest have none to check."""
    stored = f.attrs.get("metadata_sha256")
    if stored is None:
        return
    if metadata_digest(f, skip_attrs=_COUNTERS) != stored:
        raise CorruptDataError(
            f"{f.filename}: its metadata (attributes such as hparams, seed and config, or the "
            "editor's stored context templates) are not those written (metadata_sha256 differs): "
            "the file is damaged or was edited; delete it and rerun the trajectory"
        )


def _offsets_problem(f: h5py.File, n_done: int) -> str | None:
    """Growing row datasets (MEND's factor rows, carried rows) whose offsets do not fit
    ``n_done``."""
    groups = [f[f"updates/{k}"] for k in f.get("updates", {})] + [
        f[f"carry/{k}"] for k in f.get("carry", {})
    ]
    for g in groups:
        if "offsets" not in g:
            continue
        off = _read(g["offsets"], slice(0, n_done + 1))
        rows = g["u"] if "u" in g else g["rows"]
        if np.any(np.diff(off) < 0) or int(off[-1]) > rows.shape[0]:
            return f"{g.name}/offsets do not fit its {rows.shape[0]} rows and {n_done} edits"
    return None


def partial_problem(f: h5py.File) -> str | None:
    """Why the unfinished trajectory file ``f`` cannot be resumed, or None when it can: its
    metadata digest, its committed edit count against its size, the unedited snapshot and the
    growing rows' offsets. (:func:`open_partial` has read every dataset back already.)"""
    try:
        check_metadata(f)
        n_done, n_edits = int(f.attrs["n_done"]), int(f.attrs["n_edits"])
        if not 0 <= n_done <= n_edits:
            return f"n_done {n_done} is outside 0..{n_edits}"
        if n_done > 0 and "0" not in f.get("snapshots/0", {}):
            return f"{n_done} edits committed but no unedited snapshot (snapshots/0/0)"
        return _offsets_problem(f, n_done)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        return f"{type(err).__name__}: {err}"


def _add_missing_metrics(f: h5py.File, metric_names: list[str]) -> list[str]:
    """Give a resumed file (NaN) datasets for the metrics it lacks (a file from before they
    existed); their names."""
    added = [name for name in metric_names if name not in f["metrics"]]
    for name in added:
        f["metrics"].create_dataset(
            name,
            shape=(int(f.attrs["n_edits"]),),
            dtype="f8",
            fillvalue=np.nan,
            **_CHECKSUM,
        )
    if added:
        f.flush()
    return added


def _write_header(
    f: h5py.File,
    n_edits: int,
    params: list[str],
    dtypes: dict[str, str],
    biases: dict[str, str],
    resume_key: str,
    attrs: dict,
) -> None:
    """The file attributes of a new trajectory file (``attrs``: scalars as they are, others
    JSON)."""
    f.attrs["format"] = FORMAT
    f.attrs["n_edits"] = n_edits
    f.attrs["n_done"] = 0
    f.attrs["complete"] = False
    f.attrs["params"] = json.dumps(params)
    f.attrs["param_dtypes"] = json.dumps(dtypes)
    f.attrs["bias_params"] = json.dumps([p for p in params if p in biases])
    f.attrs["bias_dtypes"] = json.dumps(biases)
    f.attrs["resume_key"] = resume_key
    for k, v in attrs.items():
        f.attrs[k] = (
            v if isinstance(v, (int, float, str, bool, np.integer, np.floating)) else json.dumps(v)
        )


def _create_param_groups(
    f: h5py.File, i: int, p: str, kind: str, shape: tuple, n_edits: int, biased: bool
) -> None:
    """Groups ``updates/<i>`` (datasets of the update kind), ``snapshots/<i>`` and, when the
    module's bias is edited, the bias deltas and ``bias_snapshots/<i>`` of param ``p``."""
    out_dim, in_dim = shape
    ug = f.create_group(f"updates/{i}")
    ug.attrs["module"] = p
    ug.attrs["kind"] = kind
    if kind == "rank_one":
        ug.create_dataset("u", shape=(n_edits, in_dim), dtype="f4", chunks=(1, in_dim), **_CHECKSUM)
        ug.create_dataset(
            "v", shape=(n_edits, out_dim), dtype="f4", chunks=(1, out_dim), **_CHECKSUM
        )
    elif kind == "low_rank":
        for name, dim in (("u", in_dim), ("v", out_dim)):
            ug.create_dataset(
                name,
                shape=(0, dim),
                maxshape=(None, dim),
                dtype="f4",
                chunks=(16, dim),
                **_CHECKSUM,
            )
        ug.create_dataset("offsets", shape=(n_edits + 1,), dtype="i8", fillvalue=0, **_CHECKSUM)
    elif kind == REPLAY:
        pass  # snapshots only
    elif kind == "dense":
        ug.create_dataset(
            "dense",
            shape=(n_edits, out_dim, in_dim),
            dtype="f4",
            chunks=(1, out_dim, in_dim),
            compression="gzip",
            compression_opts=1,
            **_CHECKSUM,
        )
    else:
        raise StoreError(f"unknown update kind {kind!r} for {p}")
    f.create_group(f"snapshots/{i}")
    ug.attrs["bias"] = biased
    if biased:
        if kind != REPLAY:
            ug.create_dataset(
                "bias", shape=(n_edits, out_dim), dtype="f4", chunks=(1, out_dim), **_CHECKSUM
            )
        f.create_group(f"bias_snapshots/{i}")


def _create_carry(f: h5py.File, name: str, dim: int, n_edits: int) -> None:
    """Group ``carry/<name>``: growing rows of width ``dim`` and each edit's end offset."""
    cg = f.create_group(f"carry/{name}")
    cg.create_dataset(
        "rows", shape=(0, dim), maxshape=(None, dim), dtype="f8", chunks=(16, dim), **_CHECKSUM
    )
    cg.create_dataset("offsets", shape=(n_edits + 1,), dtype="i8", fillvalue=0, **_CHECKSUM)


# -- readers --------------------------------------------------------------------------------
def open_trajectory(path: str | os.PathLike) -> h5py.File:
    """A trajectory file opened read-only after its checks: a finished one against its seal
    (:func:`editscale.io.h5.open_verified`), a ``.partial`` one against its metadata digest
    (:func:`check_metadata`); a failure names the file."""
    f = open_h5(path) if str(path).endswith(".partial") else open_verified(path)
    try:
        check_metadata(f)
    except BaseException:
        f.close()
        raise
    return f


def _config_hparams(cfg: dict, method: str) -> list[dict]:
    """The hyperparameters a config gives ``method`` on each of its models (``hparams`` updated
    by ``per_model``), as the rules pass them to the runner."""
    spec = cfg.get("methods", {}).get(method, {})
    base = spec.get("hparams", {})
    return [base] + [{**base, **over} for over in spec.get("per_model", {}).values()]


def check_hparams_match_config(path: str | os.PathLike, f: h5py.File) -> None:
    """Refuse a trajectory file whose ``hparams`` attribute is not what its own ``config``
    attribute gives the method (one of the two was changed after the run)."""
    cfg = json.loads(f.attrs.get("config", "{}"))
    method = str(f.attrs.get("method", ""))
    if method not in cfg.get("methods", {}):
        return  # made outside the workflow (tests, the API): no config to compare with
    hparams = json.loads(f.attrs["hparams"])
    wanted = [json.loads(json.dumps(h)) for h in _config_hparams(cfg, method)]
    if hparams not in wanted:
        keys = sorted(
            k for k in set(hparams) | set(wanted[0]) if hparams.get(k) != wanted[0].get(k)
        )
        raise CorruptDataError(
            f"{path}: its hparams attribute disagrees with its own config attribute "
            f"(methods.{method}; differing keys: {', '.join(keys) or 'per_model'}): one of them "
            "was changed after the run, so the editor cannot be rebuilt from it; rerun the "
            "trajectory"
        )


def read_editor_state(f: h5py.File) -> dict[str, list[str]]:
    """The editor's stored string lists (e.g. ROME's context templates) of an open trajectory
    file."""
    g = f.get("editor_state", {})
    return {k: [s.decode() if isinstance(s, bytes) else s for s in g[k][()]] for k in g}


def read_carry(f: h5py.File, t_to: int) -> list[dict[str, torch.Tensor]]:
    """What the editor carried after each of edits 1..``t_to``, in order ({} per edit without
    any)."""
    g = f.get("carry")
    if g is None:
        return [{} for _ in range(t_to)]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(t_to)]
    for name in g:
        offsets = _read(g[name]["offsets"], slice(0, t_to + 1))
        rows = (
            torch.from_numpy(_read(g[name]["rows"], slice(0, int(offsets[-1])))) if t_to else None
        )
        for t in range(t_to):
            out[t][name] = rows[int(offsets[t]) : int(offsets[t + 1])]
    return out


def read_editor_setup(path: str | os.PathLike) -> dict:
    """What the runner made the trajectory's editor with: ``editor`` (its name), ``hparams``,
    ``seed`` and ``state`` (:func:`read_editor_state`), from a trajectory file."""
    with open_trajectory(path) as f:
        check_hparams_match_config(path, f)
        return {
            "editor": str(f.attrs["editor"]),
            "hparams": json.loads(f.attrs["hparams"]),
            "seed": int(f.attrs["seed"]),
            "state": read_editor_state(f),
        }


def read_partial_editor_state(path: str | os.PathLike) -> dict[str, list[str]] | None:
    """The editor state stored in the resumable partial file of trajectory ``path`` when it holds
    finished edits, else None (an unreadable one is moved aside by :func:`open_partial`)."""
    f = open_partial(partial_path(path), "r")
    if f is None:
        return None
    with f:
        if int(f.attrs.get("n_done", 0)) == 0 or partial_problem(f) is not None:
            return None  # nothing to resume, or a damaged file the writer moves aside
        return read_editor_state(f)


def finished_trajectory(path: str | os.PathLike) -> dict:
    """``n_edits`` (edits done) and ``params`` (the edited matrices) of a finished trajectory
    file; a ValueError when it is not finished."""
    with open_trajectory(path) as f:
        if not bool(f.attrs.get("complete", False)):
            raise ValueError(f"{path} is not a finished trajectory (complete flag missing)")
        return {"n_edits": int(f.attrs["n_done"]), "params": json.loads(f.attrs["params"])}


def read_edits_per_step(path: str | os.PathLike) -> int:
    """Records per editing step of a trajectory file (1 for files from before steps existed)."""
    with open_trajectory(path) as f:
        return int(f.attrs.get("edits_per_step", 1))


def read_environment(path: str | os.PathLike) -> str:
    """The JSON of where the trajectory ran (CPU, GPUs; ``"{}"`` in files without it)."""
    with open_trajectory(path) as f:
        return str(f.attrs.get("environment", "{}"))


def read_metrics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The per-edit metric columns of a trajectory file (finished or partial), first ``n_done``
    rows."""
    with open_trajectory(path) as f:
        n = int(f.attrs["n_done"])
        return {k: _read(f["metrics"][k], slice(0, n)) for k in f["metrics"]}


def read_updates(f: h5py.File, t_from: int, t_to: int) -> list[list[ParamUpdate]]:
    """Updates of edits ``t_from+1 .. t_to`` (1-based, inclusive end), in order."""
    params = json.loads(f.attrs["params"])
    cols = []
    for i, p in enumerate(params):
        g = f[f"updates/{i}"]
        if g.attrs["kind"] == REPLAY:
            if t_to <= t_from:
                cols.append([])
                continue
            raise UpdatesNotStored(
                f"{f.filename}: the updates of {p} are not stored (store_updates: false); the "
                f"weights after edits {t_from + 1}..{t_to} are rebuilt by replaying the editor "
                f"from snapshot {t_from} "
                "(editscale.editing.replay.WeightLoader)"
            )
        if g.attrs["kind"] == "rank_one":
            us, vs = _read(g["u"], slice(t_from, t_to)), _read(g["v"], slice(t_from, t_to))
            cols.append(
                [
                    ParamUpdate(p, u=torch.from_numpy(u), v=torch.from_numpy(v))
                    for u, v in zip(us, vs)
                ]
            )
        elif g.attrs["kind"] == "low_rank":
            off = _read(g["offsets"], slice(t_from, t_to + 1))
            us, vs = _read(g["u"], slice(off[0], off[-1])), _read(g["v"], slice(off[0], off[-1]))
            cols.append(
                [
                    ParamUpdate(
                        p,
                        u=torch.from_numpy(us[a - off[0] : b - off[0]]),
                        v=torch.from_numpy(vs[a - off[0] : b - off[0]]),
                    )
                    for a, b in zip(off[:-1], off[1:])
                ]
            )
        else:
            ds = _read(g["dense"], slice(t_from, t_to))
            cols.append([ParamUpdate(p, dense=torch.from_numpy(d)) for d in ds])
        if "bias" in g:
            for upd, b in zip(cols[-1], _read(g["bias"], slice(t_from, t_to))):
                upd.bias = torch.from_numpy(b)
    return [list(row) for row in zip(*cols)]


def _bias_params(f: h5py.File) -> list[str]:
    """The params whose module's bias is edited too (none in files from before bias updates)."""
    return json.loads(f.attrs.get("bias_params", "[]"))


def _apply(weights: dict[str, torch.Tensor], upd: ParamUpdate, spec: ArchSpec) -> None:
    apply_update(weights[upd.module], upd, spec, bias=weights.get(bias_key(upd.module)))


def snapshot_steps(f: h5py.File) -> list[int]:
    return sorted(int(k) for k in f["snapshots/0"]) if "snapshots/0" in f else []


def updates_stored(path: str | os.PathLike) -> bool:
    """Whether a trajectory file stores every edit's update (False: snapshots only, the edits in
    between rebuilt by replaying the editor, :mod:`editscale.editing.replay`)."""
    with open_trajectory(path) as f:
        return not any(
            f[f"updates/{i}"].attrs["kind"] == REPLAY
            for i in range(len(json.loads(f.attrs["params"])))
        )


def replay_weights(
    path: str | os.PathLike,
    t_to: int,
    spec: ArchSpec | str | None = None,
    device: str | torch.device = "cpu",
    block: int = 64,
):
    """Yield ``(t, weights)`` after every edit ``t = 1 .. t_to`` in turn, from the unedited
    snapshot.

    ``weights`` is the same dict of tensors each time, updated in place (copy what is kept). Each
    step applies one stored update with :func:`apply_update`, so the values are bitwise those of
    :func:`rebuild_weights` (and of the runner). Updates are read ``block`` edits at a time.
    """
    weights = rebuild_weights(path, 0, spec, device=device)
    with open_trajectory(path) as f:
        spec = _spec(f, spec)
        n_done = int(f.attrs["n_done"])
        if not 0 <= t_to <= n_done:
            raise StoreError(
                f"{path}: edits up to {t_to} requested, but the file holds edits 0..{n_done}"
            )
        for start in range(0, t_to, block):
            for i, row in enumerate(read_updates(f, start, min(start + block, t_to))):
                for upd in row:
                    _apply(weights, upd, spec)
                yield start + i + 1, weights


def initial_weight_norms(path: str | os.PathLike) -> list[float]:
    """||W_0||_F (float64) of each edited matrix, in ``params`` order, from the unedited snapshot
    (edited biases are not matrices: left out)."""
    with open_trajectory(path) as f:
        params = json.loads(f.attrs["params"])
    weights = rebuild_weights(path, 0)
    return [float(torch.linalg.norm(weights[p].double())) for p in params]


def _spec(f: h5py.File, spec: ArchSpec | str | None) -> ArchSpec:
    if spec is None:
        spec = f.attrs["arch"]
    return ARCHITECTURES[spec] if isinstance(spec, str) else spec


def rebuild_weights(
    path: str | os.PathLike,
    t: int,
    spec: ArchSpec | str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The edited matrices after edit ``t`` (0 = before any edit), from the nearest snapshot.

    Keyed by module path; an edited bias is included under ``bias_key(module)``. Applies the
    stored updates with the runner's own :func:`apply_update`, so on the same device the result
    equals the runner's in-memory weights bit for bit.
    """
    with open_trajectory(path) as f:
        n_done = int(f.attrs["n_done"])
        if not 0 <= t <= n_done:
            raise StoreError(f"{path}: edit {t} requested, but the file holds edits 0..{n_done}")
        if spec is None:
            spec = f.attrs["arch"]
        if isinstance(spec, str):
            spec = ARCHITECTURES[spec]
        params = json.loads(f.attrs["params"])
        dtypes = json.loads(f.attrs["param_dtypes"])
        base = max(s for s in snapshot_steps(f) if s <= t)
        weights = {
            p: _numpy_to_torch(_read(f[f"snapshots/{i}/{base}"]), dtypes[p]).to(device)
            for i, p in enumerate(params)
        }
        biased = set(_bias_params(f))
        bias_dtypes = json.loads(f.attrs.get("bias_dtypes", "{}"))
        for i, p in enumerate(params):
            if p in biased:
                weights[bias_key(p)] = _numpy_to_torch(
                    _read(f[f"bias_snapshots/{i}/{base}"]), bias_dtypes[p]
                ).to(device)
        for row in read_updates(f, base, t):
            for upd in row:
                _apply(weights, upd, spec)
    return weights
