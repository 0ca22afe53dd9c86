"""The sequential yardstick: binning on edits per key dimension, onsets, and ROME's denominator
recovered from a stored trajectory equal to the one the editor recorded."""

import math
import shutil

import numpy as np
import pytest

from editscale.io import paths
from editscale.reporting import yardstick as ys

RULE = {"norm_multiple": 10.0, "window": 5, "min_history": 3, "refractory": 2}


def _traj(side, method, n, d_key, norms, first, sample=0, **extra):
    metrics = {
        "edit": np.arange(1, n + 1, dtype=float),
        "case_id": np.arange(n, dtype=float),
        "es": np.linspace(1.0, 0.0, n),
        "ps": np.full(n, 0.5),
        "ns": np.full(n, 0.25),
        "update_norm_0": np.asarray(norms, dtype=float),
        **extra,
    }
    from editscale.evaluation.disabling import find_onsets

    return ys.Trajectory(
        side=side,
        method=method,
        sample=sample,
        d_key=d_key,
        metrics=metrics,
        forgetting=(np.array([10.0, 20.0]), np.array([5.0, 40.0])),
        norm_growth=np.linspace(1.0, 3.0, n),
        subject_first=np.asarray(first, dtype=bool),
        jump=ys.jump_ratio(np.asarray(norms, dtype=float), RULE["window"]),
        onsets=sorted({o.edit for o in find_onsets(np.asarray(norms, dtype=float), **RULE)}),
    )


def test_jump_ratio_is_norm_over_trailing_median():
    x = np.array([1.0, 2.0, 3.0, 30.0, 1.0])
    j = ys.jump_ratio(x, 2)
    assert math.isnan(j[0])
    assert j[1] == pytest.approx(2.0)  # 2 / median(1)
    assert j[3] == pytest.approx(30.0 / 2.5)  # 30 / median(2, 3)
    assert j[4] == pytest.approx(1.0 / 16.5)


def test_bins_pool_samples_on_edits_per_key_dimension():
    n, d = 20, 100  # 0.01 .. 0.2 edits per key dimension
    norms = np.ones(n)
    norms[11] = 50.0  # edit 12 (0.12 per key dimension): an onset
    first = np.arange(n) % 2 == 0
    gaps = np.where(first, 2.0, 0.5)
    a = _traj("a", "rome", n, d, norms, first, key_gap=gaps, denominator=np.where(first, 1.0, 4.0))
    b = _traj("a", "rome", n, d, np.ones(n), ~first, sample=1, key_gap=gaps[::-1])
    rows = ys.yardstick_rows([a, b], bins=(0.0, 0.1, 0.2))
    assert [r["bin"] for r in rows] == ["0-0.1", "0.1-0.2"]
    lo, hi = rows
    assert lo["edits"] == 20 and hi["edits"] == 20 and lo["samples"] == 2
    assert lo["es"] == pytest.approx(np.mean(np.linspace(1, 0, n)[:10]))
    assert a.onsets == [12]
    assert lo["onsets_per_100"] == 0 and hi["onsets_per_100"] == pytest.approx(5.0)
    assert lo["subject_first"] == pytest.approx(0.5)
    # forgetting: checkpoint 10 (0.1) in the first bin, 20 (0.2) in the second
    assert lo["forgotten"] == pytest.approx(5.0) and hi["forgotten"] == pytest.approx(40.0)
    assert hi["norm_growth"] == pytest.approx(3.0)
    # key gap split by subject-first, pooled over both samples (b's gaps reversed)
    assert lo["key_gap_first"] > lo["key_gap_inside"]
    # b has no denominator metric: the split is n/a for the group, not a partial pool
    assert math.isnan(lo["denominator_first"]) and math.isnan(lo["denominator_min"])
    assert lo["key_gap_max"] == 2.0
    onsets = ys.onset_rows([a, b])
    assert len(onsets) == 1 and onsets[0]["edit"] == 12 and onsets[0]["jump"] == pytest.approx(50)
    assert onsets[0]["per_key_dim"] == pytest.approx(0.12)
    assert onsets[0]["subject_first"] is False  # edit 12 is index 11, odd


@pytest.fixture(scope="module")
def rome_run(tmp_path_factory, traj_inputs):
    """A run directory with ROME and r-ROME trajectories (6 edits) of the tiny GPT-2, laid out as
    the workflow lays them out, and its config."""
    from editscale.editing.runner import export_metrics_csv, run_trajectory

    root = tmp_path_factory.mktemp("yardstick-run")
    model = "tiny"
    shutil.copytree(traj_inputs["model_dir"], root / "resources/models" / model)
    (root / paths.COUNTERFACT).parent.mkdir(parents=True)
    shutil.copyfile(traj_inputs["counterfact_path"], root / paths.COUNTERFACT)
    stats = root / paths.key_stats(model, "synthetic", 1)
    stats.parent.mkdir(parents=True)
    shutil.copyfile(traj_inputs["stats_path"], stats)
    hp = {"layer": 1, "v_num_grad_steps": 5, "context_template_lengths": [[4, 2]]}
    methods = {
        "rome": {"editor": "rome", "hparams": {**hp, "key_mode": "original"}},
        "rrome": {"editor": "rome", "hparams": {**hp, "key_mode": "homogeneous"}},
    }
    for name, spec in methods.items():
        out = root / paths.trajectory(model, name, 0, "h5")
        out.parent.mkdir(parents=True)
        run_trajectory(
            model_dir=root / "resources/models" / model,
            counterfact_path=root / paths.COUNTERFACT,
            ordering_path=traj_inputs["ordering_path"],
            stats_path=stats,
            out_path=out,
            method=name,
            editor="rome",
            hparams=spec["hparams"],
            n_edits=6,
            snapshot_every=3,
            seed=0,
            progress_every_s=0.0,
        )
        export_metrics_csv(out, root / paths.trajectory(model, name, 0, "csv"))
    cfg = {
        "samples": 1,
        "models": {model: {"source": "local"}},
        "stats": {"corpus": "synthetic"},
        "experiments": [{"model": model, "method": m} for m in methods],
        "methods": methods,
        "disabling": {**RULE, "min_normal": 3},
    }
    return ys.Side("tiny", model, root, cfg)


def test_stored_denominators_equal_the_recorded_ones(rome_run):
    """k.u recomputed from the stored u and the unedited model's key is the editor's own k.u."""
    from editscale.editing.store import read_metrics

    for method in ("rome", "rrome"):
        recorded = read_metrics(rome_run.directory / paths.trajectory("tiny", method, 0, "h5"))
        again = ys.stored_denominators(rome_run, method, 0, recorded["case_id"])
        assert np.all(np.isfinite(recorded["denominator"]))
        np.testing.assert_allclose(again, recorded["denominator"], rtol=1e-5)


def test_run_writes_tables_figure_and_provenance(rome_run, tmp_path):
    rows = ys.run([rome_run], ["rome", "rrome"], tmp_path)
    assert {r["method"] for r in rows} == {"rome", "rrome"}
    assert sum(r["edits"] for r in rows if r["method"] == "rome") == 6
    for name in ("yardstick.md", "yardstick.csv", "onsets.csv", "yardstick.png", "yardstick.json"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "yardstick.md").read_text()
    assert "| tiny | rrome |" in md
    with pytest.raises(SystemExit, match="memit"):
        ys.run([rome_run], ["rome", "memit"], tmp_path)
