"""Trajectory runner + HDF5 store: per-edit rows, bitwise rebuild, kill-and-resume."""

from __future__ import annotations

import json
import logging
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

from editscale.editing import store
from editscale.editing.runner import export_metrics_csv, run_trajectory
from editscale.editing.store import (
    StoreError,
    TrajectoryWriter,
    initial_weight_norms,
    read_metrics,
    rebuild_weights,
    replay_weights,
)
from editscale.editors.base import ParamUpdate
from tests.conftest import TRAJ_HPARAMS

HPARAMS = TRAJ_HPARAMS


@pytest.fixture(scope="module")
def inputs(traj_inputs):
    return traj_inputs


def run(inputs, out, **kw):
    args = dict(
        inputs,
        out_path=out,
        method="rome",
        editor="rome",
        hparams=HPARAMS,
        n_edits=6,
        snapshot_every=4,
        seed=5,
        config={"test": True},
        progress_every_s=0.0,
    )
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
    for k in (
        "es",
        "ps",
        "ns",
        "es_mag",
        "ps_argmax",
        "update_norm_0",
        "distance_0",
        "weight_norm_0",
        "v_loss",
    ):
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
    import editscale.editing.store as store

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
from editscale.editing.runner import run_trajectory
a = json.loads(sys.argv[1])
run_trajectory(**a)
"""


def test_sigkill_and_resume_equals_uninterrupted(inputs, finished, tmp_path):
    out = tmp_path / "killed.h5"
    args = {k: str(v) for k, v in inputs.items()}
    args.update(
        out_path=str(out),
        method="rome",
        editor="rome",
        hparams=HPARAMS,
        n_edits=6,
        snapshot_every=4,
        seed=5,
        config={"test": True},
        progress_every_s=0.0,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args), str(torch.get_num_threads())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
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
    """A partial file written before the metric existed: resumed, its earlier edits get the
    norms."""
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
    with pytest.raises(StoreError, match="different inputs or settings") as err:
        run(inputs, out, n_edits=2)
    # the message names the file, what it holds and what to do
    msg = str(err.value)
    assert f"{out}.partial" in msg and "1 of 1 edits done" in msg
    assert "Delete it" in msg and "restore the inputs and config" in msg
    assert Path(str(out) + ".partial").exists()  # finished edits are never thrown away


def _matches_finished(finished, out) -> None:
    a, b = read_metrics(finished), read_metrics(out)
    for k in a:
        if k not in TIMINGS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_partial_file_without_a_finished_edit_from_other_settings_is_replaced(
    inputs, finished, tmp_path, caplog
):
    """A failed start leaves a partial file with no edit done: the rerun with the fixed config
    replaces it."""
    out = tmp_path / "z.h5"
    part = str(out) + ".partial"
    shutil.copy(finished, part)
    with h5py.File(part, "r+") as f:
        f.attrs["n_done"] = 0
        f.attrs["complete"] = False
        f.attrs["resume_key"] = "the key of a config since fixed"
        store._stamp_metadata(f)  # as the run with that config wrote it
    with caplog.at_level(logging.INFO, logger="editscale.editing.store"):
        run(inputs, out)
    _matches_finished(finished, out)
    assert not Path(part).exists()
    assert any(
        r.levelno == logging.INFO
        and part in r.getMessage()
        and "no finished edit" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_unreadable_partial_file_is_moved_aside(inputs, finished, tmp_path, caplog):
    """A truncated partial file is kept under another name, with a warning naming it; the run
    starts afresh."""
    out = tmp_path / "t.h5"
    part = Path(str(out) + ".partial")
    shutil.copy(finished, part)
    os.truncate(part, part.stat().st_size // 2)
    truncated = part.read_bytes()
    with caplog.at_level(logging.WARNING, logger="editscale.editing.store"):
        run(inputs, out)
    _matches_finished(finished, out)
    aside = list(tmp_path.glob("t.h5.partial.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == truncated
    assert any(
        r.levelno == logging.WARNING
        and str(part) in r.getMessage()
        and str(aside[0]) in r.getMessage()
        and "truncated" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def _small_trajectory(path: Path, n_edits: int = 4) -> None:
    """A finished trajectory file of one 6x5 matrix with rank-one edits, written through the
    store API."""
    gen = torch.Generator().manual_seed(0)
    writer = TrajectoryWriter.open(
        path,
        n_edits=n_edits,
        params=["m"],
        shapes={"m": (6, 5)},
        dtypes={"m": "torch.float32"},
        kinds={"m": "rank_one"},
        metric_names=["es"],
        attrs={"arch": "llama"},
        resume_key="k",
    )
    w = torch.randn(6, 5, generator=gen)
    writer.write_snapshot(0, {"m": w})
    for t in range(1, n_edits + 1):
        upd = ParamUpdate("m", u=torch.randn(5, generator=gen), v=torch.randn(6, generator=gen))
        w = w + torch.outer(upd.v, upd.u)
        writer.write_edit(t, {"es": t / 10}, [upd], snapshot={"m": w} if t == n_edits else None)
    writer.finish(path)
    writer.close()


def _flip_first_bytes(path: Path, name: str, n: int = 8) -> None:
    """Invert ``n`` bytes at the start of dataset ``name``'s stored data (its first chunk), in
    place."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("name", ["metrics/es", "updates/0/u", "snapshots/0/0"])
def test_bytes_changed_on_disk_fail_the_read_naming_file_and_dataset(tmp_path, name):
    """In an unfinished file (no seal yet) each dataset's fletcher32 checksum finds the change."""
    path = tmp_path / "small.h5"
    _small_trajectory(path)
    path = path.rename(tmp_path / "small.h5.partial")
    assert list(read_metrics(path)["es"]) == [0.1, 0.2, 0.3, 0.4]
    before = rebuild_weights(path, 2)["m"]
    _flip_first_bytes(path, name)
    with pytest.raises(StoreError) as err:
        read_metrics(path)
        rebuild_weights(path, 2)
    assert type(err.value).__name__ == "CorruptDataError"
    assert (
        str(path) in str(err.value)
        and f"/{name}" in str(err.value)
        and "fletcher32" in str(err.value)
    )
    if name != "metrics/es":  # the other datasets are still read as written
        assert list(read_metrics(path)["es"]) == [0.1, 0.2, 0.3, 0.4]
    else:
        assert torch.equal(rebuild_weights(path, 2)["m"], before)


@pytest.mark.parametrize("name", ["metrics/es", "updates/0/u", "snapshots/0/0"])
def test_a_finished_file_with_changed_bytes_is_refused_by_its_seal(tmp_path, name):
    """A finished trajectory is refused whole by its seal, naming the file and the dataset."""
    from editscale.io.h5 import DamagedFileError

    path = tmp_path / "small.h5"
    _small_trajectory(path)
    _flip_first_bytes(path, name)
    for read in (read_metrics, lambda p: rebuild_weights(p, 2)):
        with pytest.raises(DamagedFileError) as err:
            read(path)
        assert str(path) in str(err.value) and f"dataset /{name} fails" in str(err.value)


def test_stats_for_another_layer_are_refused(inputs, tmp_path):
    from editscale.editing.key_stats import StatsMismatchError

    with pytest.raises(StatsMismatchError, match="layer"):
        run(inputs, tmp_path / "y.h5", hparams={**HPARAMS, "layer": 2})
