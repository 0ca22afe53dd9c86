"""Records too long for the model are refused by each job that tokenises them, before its heavy
work (editscale.data.counterfact.check_record_tokens; issue 25, item 4).

A record whose paraphrase prompt is within counterfact.max_chars but longer than the tiny test
model's context (128 positions) is put first in the ordering; the model gates, the trajectory,
the evaluation chunk and the disabling job must each stop naming its case id and the file.
"""

from __future__ import annotations

import json

import pytest

from editscale.data.counterfact import (
    DEFAULT_MAX_CHARS,
    RecordError,
    check_record_tokens,
    context_length,
    load_counterfact,
)
from editscale.editing.runner import run_trajectory
from editscale.evaluation.disabling import run_disabling
from editscale.evaluation.gates import run_gates
from editscale.evaluation.jobs import run_eval_chunk
from editscale.lm.models import load_model
from tests.conftest import TRAJ_HPARAMS

LONG = "Someone said that. " * 45  # 855 characters: within max_chars, past 128 tokens
FIRST = 103  # the first case id of traj_inputs' ordering


@pytest.fixture(scope="module")
def hostile(traj_inputs, tmp_path_factory):
    """traj_inputs' CounterFact file with one paraphrase of case FIRST too long for the model."""
    records = json.loads(traj_inputs["counterfact_path"].read_text())
    for rec in records:
        if rec["case_id"] == FIRST:
            rec["paraphrase_prompts"][1] = LONG + rec["paraphrase_prompts"][1]
    path = tmp_path_factory.mktemp("hostile") / "cf.json"
    path.write_text(json.dumps(records))
    assert load_counterfact(path, max_chars=DEFAULT_MAX_CHARS)  # passes the start-up bound
    return path


@pytest.fixture(scope="module")
def short_trajectory(traj_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok-traj") / "sample0.h5"
    run_trajectory(
        **traj_inputs,
        out_path=out,
        method="rome",
        editor="rome",
        hparams=TRAJ_HPARAMS,
        n_edits=2,
        snapshot_every=1,
        seed=5,
        config={},
    )
    return out


def _refused(info, path) -> None:
    msg = str(info.value)
    assert str(path) in msg and f"case_id {FIRST}" in msg, msg
    assert "field 'paraphrase_prompts[1]'" in msg and "context length of 128" in msg, msg
    assert "n_positions" in msg and "1 of " in msg, msg


def test_check_on_a_tiny_model(traj_inputs, hostile, tiny_model_factory):
    model, tok = load_model(traj_inputs["model_dir"])
    assert context_length(model.config) == ("n_positions", 128)
    check_record_tokens(load_counterfact(traj_inputs["counterfact_path"]), tok, model.config)
    with pytest.raises(RecordError) as info:
        check_record_tokens(load_counterfact(hostile), tok, model.config, hostile)
    _refused(info, hostile)
    llama, _ = load_model(tiny_model_factory("llama", n_positions=4096))
    assert context_length(llama.config) == ("max_position_embeddings", 4096)
    check_record_tokens(load_counterfact(hostile), tok, llama.config, hostile)
    check_record_tokens(load_counterfact(hostile), tok, object())  # no context declared


def test_trajectory_refuses_before_editing(traj_inputs, hostile, tmp_path):
    out = tmp_path / "sample0.h5"
    with pytest.raises(RecordError) as info:
        run_trajectory(
            **{**traj_inputs, "counterfact_path": hostile},
            out_path=out,
            method="rome",
            editor="rome",
            hparams=TRAJ_HPARAMS,
            n_edits=2,
            snapshot_every=1,
            seed=5,
            config={},
        )
    _refused(info, hostile)
    assert list(tmp_path.iterdir()) == []  # no output, no partial file


@pytest.mark.parametrize("n_edits", [3, 1], ids=["fact-gates", "edit-gate-records"])
def test_model_gates_refuse(traj_inputs, hostile, tmp_path, n_edits):
    """The gates' records, and the edit gates' (beyond n_edits), are checked before scoring."""
    order = json.loads(traj_inputs["ordering_path"].read_text())["case_ids"]
    ordering = tmp_path / "order.json"
    at = 0 if n_edits == 3 else 2  # the long record among the first n_edits, or only after them
    ids = [c for c in order if c != FIRST]
    ordering.write_text(json.dumps({"case_ids": ids[:at] + [FIRST] + ids[at:]}))
    with pytest.raises(RecordError) as info:
        run_gates(
            model_dir=traj_inputs["model_dir"],
            counterfact_path=hostile,
            ordering_paths=[str(ordering)],
            n_edits=n_edits,
            task_set_paths={},
            thresholds={},
            out_json=tmp_path / "gates.json",
            edit=None if n_edits == 3 else {"n_records": 4},
        )
    _refused(info, hostile)
    assert not (tmp_path / "gates.json").exists()


def test_eval_chunk_refuses(traj_inputs, hostile, short_trajectory, tmp_path):
    with pytest.raises(RecordError) as info:
        run_eval_chunk(
            trajectory_path=short_trajectory,
            model_dir=traj_inputs["model_dir"],
            counterfact_path=hostile,
            ordering_path=traj_inputs["ordering_path"],
            task_sets={},
            out_path=tmp_path / "chunk.h5",
            checkpoints=[],
        )
    _refused(info, hostile)
    assert list(tmp_path.iterdir()) == []


def test_disabling_refuses(traj_inputs, hostile, short_trajectory, tmp_path):
    with pytest.raises(RecordError) as info:
        run_disabling(
            trajectory_path=short_trajectory,
            model_dir=traj_inputs["model_dir"],
            counterfact_path=hostile,
            ordering_path=traj_inputs["ordering_path"],
            stats_path=traj_inputs["stats_path"],
            out_json=tmp_path / "d.json",
            out_csv=tmp_path / "d.csv",
            rule={
                "norm_multiple": 10.0,
                "window": 20,
                "min_history": 10,
                "refractory": 10,
                "min_normal": 1,
            },
            prompts=["Ada Lovelace was born in"],
            seed=0,
        )
    _refused(info, hostile)
    assert list(tmp_path.iterdir()) == []
