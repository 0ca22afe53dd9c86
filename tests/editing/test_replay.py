"""store_updates: false: snapshots only, the weights in between rebuilt by replaying the editor."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from editscale.data.counterfact import select_records
from editscale.editing.editor_state import trajectory_editor
from editscale.editing.replay import ReplayMismatch, WeightLoader
from editscale.editing.runner import run_trajectory
from editscale.editing.store import UpdatesNotStored, read_metrics, rebuild_weights, updates_stored
from editscale.lm.models import arch_of, edit_parameter, load_model
from tests.conftest import TRAJ_HPARAMS

torch.set_num_threads(1)

FTC = {"layer": 0, "lr": 1e-2, "norm_constraint": 1e-3, "num_steps": 4, "include_bias": True}
N_EDITS, SNAPSHOT_EVERY = 7, 3
TIMINGS = {"edit_seconds", "eval_seconds"}


def _run(inputs, out, *, editor="ftc", hparams=FTC, stats=False, **kw):
    args = dict(
        model_dir=inputs["model_dir"],
        counterfact_path=inputs["counterfact_path"],
        ordering_path=inputs["ordering_path"],
        stats_path=inputs["stats_path"] if stats else None,
        out_path=out,
        method=editor,
        editor=editor,
        hparams=hparams,
        n_edits=N_EDITS,
        snapshot_every=SNAPSHOT_EVERY,
        seed=3,
        progress_every_s=0.0,
    )
    args.update(kw)
    run_trajectory(**args)
    return out


@pytest.fixture(scope="module")
def ftc_pair(traj_inputs, tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    return (
        _run(traj_inputs, d / "stored.h5"),
        _run(traj_inputs, d / "replayed.h5", store_updates=False),
    )


def _loader(inputs, path, stats=False):
    model, tok = load_model(inputs["model_dir"])
    records = select_records(inputs["counterfact_path"], inputs["ordering_path"], N_EDITS)
    calls = []

    def make():
        calls.append(1)
        return trajectory_editor(
            path, model, tok, inputs["model_dir"], inputs["stats_path"] if stats else None
        )

    return WeightLoader(path, model, arch_of(model), records, make), model, calls


def _assert_model_holds(model, weights: dict[str, torch.Tensor]) -> None:
    for name, w in weights.items():
        assert torch.equal(edit_parameter(model, name).detach(), w), name


def test_snapshots_only_same_metrics_and_snapshots(ftc_pair):
    stored, replayed = ftc_pair
    assert updates_stored(stored) and not updates_stored(replayed)
    with h5py.File(stored) as a, h5py.File(replayed) as b:
        assert "dense" in a["updates/0"] and "bias" in a["updates/0"]
        assert list(b["updates/0"]) == [] and b["updates/0"].attrs["kind"] == "replay"
        assert sorted(int(k) for k in b["snapshots/0"]) == [0, 3, 6, 7]
        assert sorted(int(k) for k in b["bias_snapshots/0"]) == [0, 3, 6, 7]
        for t in (0, 3, 6, 7):
            np.testing.assert_array_equal(a[f"snapshots/0/{t}"][()], b[f"snapshots/0/{t}"][()])
            np.testing.assert_array_equal(
                a[f"bias_snapshots/0/{t}"][()], b[f"bias_snapshots/0/{t}"][()]
            )
        assert (
            b.attrs["store_updates"] == np.False_ and a.attrs["resume_key"] != b.attrs["resume_key"]
        )
    ma, mb = read_metrics(stored), read_metrics(replayed)
    for k in ma:
        if k not in TIMINGS:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    with pytest.raises(UpdatesNotStored, match="replaying the editor"):
        rebuild_weights(replayed, 4)
    assert set(rebuild_weights(replayed, 6)) == set(
        rebuild_weights(stored, 6)
    )  # snapshots still load


def test_replay_rebuilds_every_edit_bitwise(traj_inputs, ftc_pair):
    """Every edit, in order and then out of order, equals the stored trajectory's rebuild (matrix
    and bias); the editor is built once, and only for the replayed file."""
    stored, replayed = ftc_pair
    loader, model, calls = _loader(traj_inputs, replayed)
    for t in [*range(N_EDITS + 1), 2, 5, 0, 4]:
        loader.load(t)
        _assert_model_holds(model, rebuild_weights(stored, t))
    assert len(calls) == 1 and loader.replayed > 0
    # a file with every update stored never builds an editor
    plain, model2, calls2 = _loader(traj_inputs, stored)
    plain.load(5)
    _assert_model_holds(model2, rebuild_weights(stored, 5))
    assert calls2 == [] and plain.replayed == 0


def test_rome_replay_uses_the_stored_templates_and_statistics(traj_inputs, tmp_path):
    stored = _run(
        traj_inputs, tmp_path / "rome.h5", editor="rome", hparams=TRAJ_HPARAMS, stats=True
    )
    replayed = _run(
        traj_inputs,
        tmp_path / "rome_r.h5",
        editor="rome",
        hparams=TRAJ_HPARAMS,
        stats=True,
        store_updates=False,
    )
    loader, model, _ = _loader(traj_inputs, replayed, stats=True)
    for t in (2, 5):
        loader.load(t)
        _assert_model_holds(model, rebuild_weights(stored, t))


def _nudge_snapshot(src, dest, step: int = 3) -> None:
    """Copy trajectory ``src`` to ``dest`` with one weight of snapshot ``step`` one ulp up."""
    import shutil

    shutil.copy(src, dest)
    with h5py.File(dest, "r+") as f:
        w = f[f"snapshots/0/{step}"][()]
        w[0, 0] = np.nextafter(w[0, 0], np.float32(np.inf))
        f[f"snapshots/0/{step}"][...] = w


def test_a_replay_that_misses_a_snapshot_stops(traj_inputs, ftc_pair, tmp_path):
    """A replay passing a snapshot it does not reproduce bit for bit raises, naming the file.
    The file is resealed after the change, as if the run had written that snapshot: the
    message then blames the device or software, not the file, and names the remedy."""
    from editscale.io.h5 import seal

    bad = tmp_path / "tampered.h5"
    _nudge_snapshot(ftc_pair[1], bad)
    seal(bad)
    loader, _, _ = _loader(traj_inputs, bad)
    loader.load(2)  # replays edits 1-2 from the unedited snapshot
    with pytest.raises(ReplayMismatch, match=r"tampered.h5.*edit 3.*passed its seal") as err:
        loader.load(4)  # continues through snapshot 3
    assert "same kind of device" in str(err.value) and "store_updates: true" in str(err.value)


def test_a_damaged_snapshot_is_refused_before_any_replay(traj_inputs, ftc_pair, tmp_path):
    """A snapshot changed on disk (no reseal) is refused by the file's seal, naming the file,
    instead of being blamed on a non-deterministic editor."""
    from editscale.io.h5 import DamagedFileError

    bad = tmp_path / "damaged.h5"
    _nudge_snapshot(ftc_pair[1], bad)
    with pytest.raises(DamagedFileError, match=r"damaged.h5: its bytes are not those written"):
        _loader(traj_inputs, bad)


def test_killed_replayed_trajectory_resumes_from_its_last_snapshot(
    traj_inputs, ftc_pair, tmp_path, monkeypatch
):
    """Killed after edit 5 (snapshot 3): the resumed run replays edits 4-5 and writes the same
    metrics and snapshots as the uninterrupted run."""
    from editscale.editing import runner as traj_mod

    out = tmp_path / "killed.h5"
    real = traj_mod.evaluate_record
    count = {"n": 0}

    def dying(*a, **kw):
        count["n"] += 1
        if count["n"] == 6:
            raise KeyboardInterrupt("simulated kill during edit 6")
        return real(*a, **kw)

    monkeypatch.setattr(traj_mod, "evaluate_record", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(traj_inputs, out, store_updates=False)
    with h5py.File(str(out) + ".partial") as f:
        assert int(f.attrs["n_done"]) == 5
    monkeypatch.setattr(traj_mod, "evaluate_record", real)
    _run(traj_inputs, out, store_updates=False)
    ma, mb = read_metrics(ftc_pair[1]), read_metrics(out)
    for k in ma:
        if k not in TIMINGS:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    with h5py.File(ftc_pair[1]) as a, h5py.File(out) as b:
        for t in (6, 7):
            np.testing.assert_array_equal(a[f"snapshots/0/{t}"][()], b[f"snapshots/0/{t}"][()])
        assert json.loads(a.attrs["params"]) == json.loads(b.attrs["params"])
