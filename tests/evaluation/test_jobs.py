"""Forgetting curves, chunked evaluation jobs and their merge, disabling edits."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

from editscale.data.glue import prepare_task_set
from editscale.editing.runner import run_trajectory
from editscale.editing.store import read_metrics
from editscale.evaluation.checkpoints import checkpoint_plan, chunks, n_chunks
from editscale.evaluation.disabling import run_disabling
from editscale.evaluation.forgetting import evaluate_facts, forgetting_curves
from editscale.evaluation.jobs import merge_eval_chunks, run_eval_chunk
from editscale.lm.models import load_model
from tests.conftest import TRAJ_HPARAMS, synthetic_records

NAN = np.nan


def test_forgetting_curves_by_hand():
    # 4 facts edited at steps 1..4, checkpoints after edits 2 and 4 and 6 (no new facts after 4).
    # fact 0: succeeds after edit, fails at ckpt 2, comes back at 4, fails at 6
    # fact 1: succeeds, always passes
    # fact 2: never succeeded after its edit: ignored
    # fact 3: succeeds, fails at 4 and 6
    ok = np.array([[0, 1, 0], [1, 1, 1], [NAN, 0, 0], [NAN, 0, 0]], dtype=float)
    c = forgetting_curves(ok, np.array([2, 4, 6]), np.array([1, 1, 0, 1], dtype=bool))
    # (a) once forgotten, always forgotten: {0} / {0,1}; {0,3} / {0,1,3}; same
    np.testing.assert_allclose(c["paper"], [50.0, 200 / 3, 200 / 3])
    # (b) failing right now: {0}/2; {3}/3; {0,3}/3
    np.testing.assert_allclose(c["failing"], [50.0, 100 / 3, 200 / 3])
    # (c) facts back after being forgotten: fact 0 at checkpoint 4
    assert list(c["returned"]) == [0, 1, 1]
    assert list(c["forgotten"]) == [1, 2, 2]


def test_checkpoint_plan_and_chunks():
    plan = checkpoint_plan(20, forgetting_every=10, downstream_every=5)
    assert [(c["t"], c["forgetting"], c["downstream"]) for c in plan] == [
        (0, False, True),
        (5, False, True),
        (10, True, True),
        (15, False, True),
        (20, True, True),
    ]
    assert [len(c) for c in chunks(plan, 2)] == [2, 2, 1]
    assert n_chunks(20, 10, 5, 2) == 3
    assert checkpoint_plan(7, 10, 0) == []


def test_forgetting_known_by_construction(tiny_model_factory):
    """Overwrite a fact on purpose: the test sees it fail, restoring it brings it back."""
    model, tok = load_model(tiny_model_factory("gpt2"))
    recs = synthetic_records(3)
    before = evaluate_facts(model, tok, recs, paraphrases=True)
    # swap new and true targets of fact 0: its probability test must flip (ties are impossible)
    swapped = json.loads(json.dumps(recs))
    rw = swapped[0]["requested_rewrite"]
    rw["target_new"], rw["target_true"] = rw["target_true"], rw["target_new"]
    after = evaluate_facts(model, tok, swapped, paraphrases=True)
    assert after["prob_ok"][0] == 1 - before["prob_ok"][0]
    np.testing.assert_array_equal(after["prob_ok"][1:], before["prob_ok"][1:])
    assert before["para_prob_ok"].shape == (3,)


@pytest.fixture(scope="module")
def trajectory(traj_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("evals") / "sample0.h5"
    run_trajectory(
        **traj_inputs,
        out_path=out,
        method="rome",
        editor="rome",
        hparams=TRAJ_HPARAMS,
        n_edits=8,
        snapshot_every=3,
        seed=5,
        config={},
    )
    return out


@pytest.fixture(scope="module")
def task_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    ex = [{"idx": i, "label": i % 2, "sentence": "good" if i % 2 else "bad"} for i in range(12)]
    path = d / "sst2.json"
    path.write_text(json.dumps(prepare_task_set("sst2", ex, n_per_label=2, seed=1)))
    return {"sst2": str(path)}


def _eval_args(traj_inputs, trajectory, task_sets):
    return dict(
        trajectory_path=trajectory,
        model_dir=traj_inputs["model_dir"],
        counterfact_path=traj_inputs["counterfact_path"],
        ordering_path=traj_inputs["ordering_path"],
        task_sets=task_sets,
        forgetting_paraphrases=True,
    )


def test_chunked_evaluation_merged_equals_unchunked(traj_inputs, trajectory, task_sets, tmp_path):
    plan = checkpoint_plan(8, forgetting_every=2, downstream_every=4)
    args = _eval_args(traj_inputs, trajectory, task_sets)
    run_eval_chunk(**args, out_path=tmp_path / "all.h5", checkpoints=plan)
    parts = []
    for i, ch in enumerate(chunks(plan, 2)):
        parts.append(tmp_path / f"c{i}.h5")
        run_eval_chunk(**args, out_path=parts[-1], checkpoints=ch)
    kw = dict(forgetting_every=2, downstream_every=4)
    merge_eval_chunks(
        [tmp_path / "all.h5"],
        trajectory,
        tmp_path / "m1.h5",
        tmp_path / "f1.csv",
        tmp_path / "d1.csv",
        **kw,
    )
    merge_eval_chunks(
        parts, trajectory, tmp_path / "m2.h5", tmp_path / "f2.csv", tmp_path / "d2.csv", **kw
    )
    assert (tmp_path / "f1.csv").read_text() == (tmp_path / "f2.csv").read_text()
    assert (tmp_path / "d1.csv").read_text() == (tmp_path / "d2.csv").read_text()
    with h5py.File(tmp_path / "m2.h5") as f:
        m = f["forgetting/argmax_ok"][()]
        assert m.shape == (8, 4) and list(f["forgetting/checkpoints"][()]) == [2, 4, 6, 8]
        assert np.isnan(m[2:, 0]).all() and not np.isnan(m[:2, 0]).any()
        # the fact edited last is re-tested on the model right after its edit:
        # same as the trajectory
        traj = read_metrics(trajectory)
        assert m[7, 3] == traj["es_argmax"][7]
        assert list(f["downstream/checkpoints"][()]) == [0, 4, 8]
        assert f["downstream/sst2/f1"].shape == (3,)
        np.testing.assert_array_equal(f["trajectory/distance_0"][()], traj["distance_0"])
        assert (
            len(json.loads(f.attrs["chunks"])) == 3
        )  # 5 checkpoints (0, 2, 4, 6, 8) in chunks of 2
    lines = (tmp_path / "f2.csv").read_text().splitlines()
    assert lines[0] == "edit,checkpoint,metric,value" and any(
        line.startswith(",2,forgetting_paper,") for line in lines
    )
    # every edited fact at every checkpoint after its edit: 2 + 4 + 6 + 8 cells per test
    assert sum(1 for line in lines if ",argmax_ok," in line) == 20
    with pytest.raises(ValueError, match="in none of the chunk files"):
        merge_eval_chunks(
            parts[:1],
            trajectory,
            tmp_path / "m3.h5",
            tmp_path / "f3.csv",
            tmp_path / "d3.csv",
            **kw,
        )


def test_chunk_resumes_without_redoing_checkpoints(
    traj_inputs, trajectory, task_sets, tmp_path, monkeypatch
):
    import editscale.evaluation.jobs as ej

    plan = checkpoint_plan(8, forgetting_every=2, downstream_every=0)
    args = _eval_args(traj_inputs, trajectory, task_sets)
    calls = []
    real = ej.evaluate_facts

    def dying(model, tok, records, **kw):
        calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third checkpoint
        return real(model, tok, records, **kw)

    monkeypatch.setattr(ej, "evaluate_facts", dying)
    with pytest.raises(KeyboardInterrupt):
        run_eval_chunk(**args, out_path=tmp_path / "c.h5", checkpoints=plan)
    assert (tmp_path / "c.h5.partial").exists() and not (tmp_path / "c.h5").exists()
    calls.clear()
    monkeypatch.setattr(
        ej, "evaluate_facts", lambda m, t, r, **kw: (calls.append(len(r)), real(m, t, r, **kw))[1]
    )
    run_eval_chunk(**args, out_path=tmp_path / "c.h5", checkpoints=plan)
    assert calls == [6, 8]  # checkpoints 2 and 4 were not redone


def _chunk_contents(path) -> str:
    """Per checkpoint of a chunk file: its forgetting arrays and downstream scores (no timings), as
    JSON (so that NaN equals NaN)."""
    with h5py.File(path) as f:
        out = {
            key: {
                "forgetting": {k: v[()].tolist() for k, v in f[key].get("forgetting", {}).items()},
                "downstream": {
                    k: {m: float(x) for m, x in g.attrs.items()}
                    for k, g in f[key].get("downstream", {}).items()
                },
            }
            for key in f
        }
    return json.dumps(out, sort_keys=True)


@pytest.mark.parametrize(
    "change",
    [{"forgetting_paraphrases": True}, {"max_new_tokens": 5}],
    ids=["paraphrases", "max_new_tokens"],
)
def test_chunk_killed_with_other_settings_is_started_afresh(
    traj_inputs, trajectory, task_sets, tmp_path, monkeypatch, caplog, change
):
    """Killed with one setting, rerun with another (new keys, or the same keys with other numbers):
    the partial file is moved aside and every checkpoint recomputed, never mixed into one chunk."""
    import editscale.evaluation.jobs as ej

    plan = checkpoint_plan(8, forgetting_every=2, downstream_every=4)  # t = 0, 2, 4, 6, 8
    args = {
        **_eval_args(traj_inputs, trajectory, task_sets),
        "forgetting_paraphrases": False,
        "max_new_tokens": 3,
    }
    real = ej.evaluate_facts
    calls = []

    def dying(model, tok, records, **kw):
        calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during checkpoint 6
        return real(model, tok, records, **kw)

    monkeypatch.setattr(ej, "evaluate_facts", dying)
    with pytest.raises(KeyboardInterrupt):
        ej.run_eval_chunk(**args, out_path=tmp_path / "c.h5", checkpoints=plan)
    calls.clear()
    monkeypatch.setattr(
        ej, "evaluate_facts", lambda m, t, r, **kw: (calls.append(len(r)), real(m, t, r, **kw))[1]
    )
    with caplog.at_level(logging.WARNING, logger="editscale.evaluation.jobs"):
        ej.run_eval_chunk(**{**args, **change}, out_path=tmp_path / "c.h5", checkpoints=plan)
    assert calls == [2, 4, 6, 8]  # nothing kept from the run with the other setting
    stale = list(tmp_path.glob("c.h5.partial.stale-*"))
    assert len(stale) == 1 and not (tmp_path / "c.h5.partial").exists()
    [setting] = change
    assert any(
        setting in r.getMessage() and str(stale[0]) in r.getMessage() for r in caplog.records
    ), caplog.text
    ej.run_eval_chunk(**{**args, **change}, out_path=tmp_path / "fresh.h5", checkpoints=plan)
    assert _chunk_contents(tmp_path / "c.h5") == _chunk_contents(tmp_path / "fresh.h5")


def test_unreadable_chunk_partial_is_moved_aside(
    traj_inputs, trajectory, task_sets, tmp_path, caplog
):
    part = tmp_path / "c.h5.partial"
    part.write_bytes(b"not an HDF5 file: a copy that was cut short")
    with caplog.at_level(logging.WARNING, logger="editscale.editing.store"):
        run_eval_chunk(
            **_eval_args(traj_inputs, trajectory, task_sets),
            out_path=tmp_path / "c.h5",
            checkpoints=checkpoint_plan(8, forgetting_every=4, downstream_every=0),
        )
    assert (tmp_path / "c.h5").exists()
    aside = list(tmp_path.glob("c.h5.partial.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"not an HDF5 file")
    assert any(
        str(part) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    ), caplog.text


def test_merge_refuses_chunks_computed_with_different_settings(
    traj_inputs, trajectory, task_sets, tmp_path
):
    plan = checkpoint_plan(8, forgetting_every=4, downstream_every=0)  # t = 4, 8
    args = _eval_args(traj_inputs, trajectory, task_sets)
    run_eval_chunk(**args, out_path=tmp_path / "a.h5", checkpoints=plan[:1])
    run_eval_chunk(
        **{**args, "forgetting_paraphrases": False},
        out_path=tmp_path / "b.h5",
        checkpoints=plan[1:],
    )
    with pytest.raises(ValueError, match="forgetting_paraphrases"):
        merge_eval_chunks(
            [tmp_path / "a.h5", tmp_path / "b.h5"],
            trajectory,
            tmp_path / "m.h5",
            tmp_path / "f.csv",
            tmp_path / "d.csv",
            forgetting_every=4,
            downstream_every=0,
        )


def test_standalone_distance_of_first_edit_equals_its_trajectory_update(
    traj_inputs, trajectory, tmp_path
):
    rule = {"norm_multiple": 0.0, "window": 20, "min_history": 1, "refractory": 0, "min_normal": 2}
    # norm_multiple 0 with no refractory window makes every edit after the first an onset: edit 1
    # lands in the normal sample or not; ask for all normal edits that exist
    # (just edit 1) by construction
    run_disabling(
        trajectory_path=trajectory,
        model_dir=traj_inputs["model_dir"],
        counterfact_path=traj_inputs["counterfact_path"],
        ordering_path=traj_inputs["ordering_path"],
        stats_path=traj_inputs["stats_path"],
        out_json=tmp_path / "d.json",
        out_csv=tmp_path / "d.csv",
        rule=rule,
        prompts=["Ada Lovelace was born in", "The capital of France is"],
        seed=0,
        n_tokens=5,
    )
    out = json.loads((tmp_path / "d.json").read_text())
    with h5py.File(trajectory) as f:
        numel = f["snapshots/0/0"].size
    by_t = {r["edit"]: r for r in out["edits"]}
    assert by_t[1]["kind"] == "normal"
    assert by_t[1]["standalone_distance"] == pytest.approx(
        by_t[1]["trajectory_update_norm"] / numel, rel=1e-6
    )
    assert out["summary"]["disabling"]["count"] == 7
    gen = out["generations"]
    assert gen["edit"] == 2 and len(gen["before"]) == len(gen["after"]) == 2
    assert (tmp_path / "d.csv").read_text().startswith("edit,case_id,kind,standalone_distance")
