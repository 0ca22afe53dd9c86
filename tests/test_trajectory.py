"""Trajectory runner + HDF5 store: per-edit rows, bitwise rebuild, kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TRAJ_HPARAMS
from editscale.store import StoreError, initial_weight_norms, read_metrics, rebuild_weights, replay_weights
from editscale.trajectory import export_metrics_csv, run_trajectory

HPARAMS = TRAJ_HPARAMS


@pytest.fixture(scope="module")
def inputs(traj_inputs):
    return traj_inputs


def run(inputs, out, **kw):
    args = dict(inputs, out_path=out, method="rome", editor="rome", hparams=HPARAMS, n_edits=6,
                snapshot_every=4, seed=5, config={"test": True}, progress_every_s=0.0)
    args.update(kw)
    run_trajectory(**args)


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("traj") / "sample0.h5"
    run(inputs, out)
    return out


TIMINGS = {"edit_seconds", "eval_seconds"}


def test_rows_and_attributes(finished, tmp_path):
    m = read_metrics(finished)
    assert list(m["edit"]) == [1, 2, 3, 4, 5, 6]
    assert list(m["case_id"]) == [103, 101, 104, 100, 105, 109]
    for k in ("es", "ps", "ns", "es_mag", "ps_argmax", "update_norm_0", "distance_0", "weight_norm_0", "v_loss"):
        assert np.isfinite(m[k]).all(), k
    assert (np.diff(m["distance_0"]) != 0).all()
    with h5py.File(finished) as f:
        assert f.attrs["complete"] and int(f.attrs["n_done"]) == 6
        assert sorted(int(k) for k in f["snapshots/0"]) == [0, 4, 6]
        templates = [s.decode() for s in f["editor_state/context_templates"][()]]
        assert templates[0] == "{}" and len(templates) == 3
        assert json.loads(f.attrs["hparams"]) == HPARAMS
    csv = tmp_path / "m.csv"
    export_metrics_csv(finished, csv)
    lines = csv.read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("edit,case_id,")


def test_first_distance_equals_update_norm_over_numel(finished):
    m = read_metrics(finished)
    with h5py.File(finished) as f:
        numel = f["snapshots/0/0"].size
    assert m["distance_0"][0] == pytest.approx(m["update_norm_0"][0] / numel, rel=1e-5)


def test_rebuild_is_bitwise(finished):
    with h5py.File(finished) as f:
        snap4 = torch.from_numpy(f["snapshots/0/4"][()])
        snap6 = torch.from_numpy(f["snapshots/0/6"][()])
    # from the unedited snapshot (t=0) + updates 1..4 == the runner's weights at t=4
    import editscale.store as store

    with h5py.File(finished) as f:
        w = torch.from_numpy(f["snapshots/0/0"][()])
        for row in store.read_updates(f, 0, 4):
            for upd in row:
                store.apply_update(w, upd, store.ARCHITECTURES["gpt2"])
    assert torch.equal(w, snap4)
    rebuilt6 = rebuild_weights(finished, 6)
    assert torch.equal(next(iter(rebuilt6.values())), snap6)
    with pytest.raises(StoreError, match="edits 0..6"):
        rebuild_weights(finished, 7)


def test_deterministic_rerun(inputs, finished, tmp_path):
    out = tmp_path / "again.h5"
    run(inputs, out)
    a, b = read_metrics(finished), read_metrics(out)
    for k in a:
        if k not in TIMINGS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


CHILD = """
import logging, sys, json
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))  # the parent's count: results are compared bitwise
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
from editscale.trajectory import run_trajectory
a = json.loads(sys.argv[1])
run_trajectory(**a)
"""


def test_sigkill_and_resume_equals_uninterrupted(inputs, finished, tmp_path):
    out = tmp_path / "killed.h5"
    args = {k: str(v) for k, v in inputs.items()}
    args.update(out_path=str(out), method="rome", editor="rome", hparams=HPARAMS, n_edits=6,
                snapshot_every=4, seed=5, config={"test": True}, progress_every_s=0.0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args), str(torch.get_num_threads())],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    deadline = time.time() + 120
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("edit 3/6"):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not out.exists() and Path(str(out) + ".partial").exists()
    with h5py.File(str(out) + ".partial") as f:
        assert int(f.attrs["n_done"]) >= 3 and not f.attrs["complete"]
    run(inputs, out)
    a, b = read_metrics(finished), read_metrics(out)
    for k in a:
        if k not in TIMINGS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with h5py.File(finished) as fa, h5py.File(out) as fb:
        np.testing.assert_array_equal(fa["updates/0/u"][()], fb["updates/0/u"][()])
        np.testing.assert_array_equal(fa["snapshots/0/6"][()], fb["snapshots/0/6"][()])


def test_weight_norm_equals_norm_of_rebuilt_weight(finished):
    m = read_metrics(finished)
    for t in range(1, 7):
        w = next(iter(rebuild_weights(finished, t).values()))
        assert m["weight_norm_0"][t - 1] == float(torch.linalg.norm(w.double())), t
    w0 = next(iter(rebuild_weights(finished, 0).values()))
    assert initial_weight_norms(finished) == [float(torch.linalg.norm(w0.double()))]
    assert m["weight_norm_0"][0] != initial_weight_norms(finished)[0]
    assert [t for t, _ in replay_weights(finished, 6)] == [1, 2, 3, 4, 5, 6]


def test_resume_of_a_partial_file_without_weight_norms_fills_them_in(inputs, finished, tmp_path):
    """A partial file written before the metric existed: resumed, its earlier edits get the norms."""
    out = tmp_path / "old.h5"
    shutil.copy(finished, str(out) + ".partial")
    with h5py.File(str(out) + ".partial", "r+") as f:
        f.attrs["n_done"] = 3
        f.attrs["complete"] = False
        del f["metrics/weight_norm_0"]
    run(inputs, out)
    a, b = read_metrics(finished), read_metrics(out)
    for k in a:
        if k not in TIMINGS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_partial_file_from_other_settings_is_refused(inputs, tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(ValueError):  # n_edits larger than the ordering: fails before any model work
        run(inputs, out, n_edits=50)
    run(inputs, out, n_edits=1)
    os.replace(out, str(out) + ".partial")  # pretend it was interrupted
    with pytest.raises(StoreError, match="different inputs or settings"):
        run(inputs, out, n_edits=2)


def test_stats_for_another_layer_are_refused(inputs, tmp_path):
    from editscale.stats import StatsMismatchError

    with pytest.raises(StatsMismatchError, match="layer"):
        run(inputs, tmp_path / "y.h5", hparams={**HPARAMS, "layer": 2})
