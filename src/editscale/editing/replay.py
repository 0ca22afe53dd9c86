"""The edited weights of a trajectory after any edit, in a model: from the file, or by replaying.

A trajectory stores every edit's update (ROME's rank-one factors, MEND's low-rank factors,
FT-C's dense delta) and snapshots every ``snapshot_every`` edits; :func:`editscale.editing.store.
rebuild_weights` then gives the weights after any edit from the file alone. Dense updates are
large (FT-C on GPT-J: 256 MiB an edit before compression, ``benchmarks/bench_ftc_storage.py``),
so a method may set ``store_updates: false``: the trajectory keeps its snapshots and per-edit
metrics only, and the weights after an edit between two snapshots are rebuilt here by loading the
earlier snapshot and running the editor again on the same records, in order. Editors are
deterministic functions of the model and the record (no random state; ROME's context templates
come from the trajectory file), so the replay gives the runner's weights bit for bit on the same
machine; every snapshot the replay passes is compared bitwise with the stored one, and a
difference stops the job (:class:`ReplayMismatch`) instead of evaluating other weights. On GPUs
this holds when the evaluation runs on the same kind of device and software as the trajectory
(kernels may differ between GPU models); the check says so when it does not.

:class:`WeightLoader` serves the evaluation chunks and the disabling job: they ask for their
checkpoints in increasing order, so each replay continues from where the last one stopped, and
a chunk's replay passes (and checks) every snapshot between its first and last checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch

from editscale.editing.store import (
    StoreError,
    open_trajectory,
    read_environment,
    rebuild_weights,
    snapshot_steps,
    updates_stored,
)
from editscale.editors.base import apply_updates
from editscale.io.h5 import has_user_block
from editscale.lm.models import ArchSpec, edit_parameter

log = logging.getLogger(__name__)


class ReplayMismatch(StoreError):
    """Replaying the editor did not reproduce a stored snapshot bit for bit."""


def load_weights_into(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (module path or bias key -> tensor) into the model's parameters."""
    with torch.no_grad():
        for name, w in weights.items():
            edit_parameter(model, name).copy_(w)


def _mismatch_message(path: str | os.PathLike, e: int, name: str, diff: float, sealed: bool) -> str:
    """Why a replay can differ from its stored snapshot, and the remedy. A sealed file was
    verified before the replay began, so its snapshot is the one written: the editor computed
    something else here than in the run (another device type, library or CPU kernel)."""
    head = (
        f"{path}: replaying the editor up to edit {e} gave {name} != its stored snapshot "
        f"(relative Frobenius difference {diff:.3g}). "
    )
    if not sealed:
        return head + (
            "The file carries no seal (written before seals), so either a snapshot was damaged "
            "on disk or the editor is not deterministic here: rerun the trajectory"
        )
    return head + (
        "The file passed its seal, so the snapshot is the one the run wrote: the editor computes "
        f"differently here than where the trajectory ran ({read_environment(path)}). Run this "
        "job on the same kind of device and software as the trajectory (on Slurm: the GPU type "
        "profiles/slurm/config.yaml pins with `constraint` for the trajectory, eval_chunk and "
        "disabling rules), or rerun the trajectory with store_updates: true"
    )


class WeightLoader:
    """Sets a model's edited tensors to their values after edit ``t`` of one trajectory.

    ``records``: the trajectory's records in edit order; ``make_editor``: builds the trajectory's
    editor on the model (called once, only when a replay is needed: a trajectory that stores its
    updates never builds one). The model's other parameters must be the unedited model's.
    """

    def __init__(
        self,
        trajectory_path: str | os.PathLike,
        model,
        spec: ArchSpec,
        records: list[dict],
        make_editor: Callable[[], object],
    ):
        self.path, self.model, self.spec, self.records = trajectory_path, model, spec, records
        self._make_editor = make_editor
        self._editor = None
        self._at: int | None = None  # the edit the model's edited tensors hold, while known
        with open_trajectory(trajectory_path) as f:  # its seal checked: stored bytes are trusted
            self._snapshots = set(snapshot_steps(f))
            self._sealed = has_user_block(trajectory_path)
        self._replays = not updates_stored(trajectory_path)  # snapshots only: replay in between
        self.replayed = 0  # edits recomputed so far (for the logs)

    def load(self, t: int) -> None:
        """Put the weights after edit ``t`` (0 = unedited) into the model."""
        device = next(self.model.parameters()).device
        if not self._replays:
            load_weights_into(self.model, rebuild_weights(self.path, t, self.spec, device=device))
            return
        if self._at is None or self._at > t:
            base = max(s for s in self._snapshots if s <= t)
            load_weights_into(
                self.model, rebuild_weights(self.path, base, self.spec, device=device)
            )
            self._at = base
        # else continue from the last edit loaded, through (and checking) any snapshot on the way
        if self._at < t and self._editor is None:
            self._editor = self._make_editor()
        t0, start = time.perf_counter(), self._at
        for e in range(start + 1, t + 1):
            apply_updates(self.model, self._editor.compute(self.records[e - 1]).updates, self.spec)
            self._at = e
            if e in self._snapshots:
                self._check_snapshot(e)
        self.replayed += t - start
        if t > start:
            log.info(
                "replayed edits %d..%d of %s (%.1f s)",
                start + 1,
                t,
                self.path,
                time.perf_counter() - t0,
            )

    def _check_snapshot(self, e: int) -> None:
        stored = rebuild_weights(
            self.path, e, self.spec, device=next(self.model.parameters()).device
        )
        for name, want in stored.items():
            got = edit_parameter(self.model, name).detach()
            if not torch.equal(got, want):
                diff = float(
                    (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)
                )
                self._at = None
                raise ReplayMismatch(_mismatch_message(self.path, e, name, diff, self._sealed))
