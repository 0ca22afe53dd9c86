"""FT-C: the L-infinity clamp after every step, reaching the new target, per-position scoring."""

from __future__ import annotations

import pytest
import torch

from editscale.editors.base import apply_updates
from editscale.editors.ftc import FtcHParams, make_editor, target_nll
from editscale.lm.models import arch_of, edit_parameter, load_model
from editscale.lm.scoring import evaluate_record, score_targets, target_token_ids
from tests.conftest import ARCHS

torch.set_num_threads(1)

RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
        "target_true": {"str": "French"},
    },
    "paraphrase_prompts": ["Danielle Darrieux speaks"],
    "neighborhood_prompts": ["The mother tongue of Nokia is"],
}


def multi_token_target(tok) -> str:
    for word in ("Sacramento", "Tokyo Bay", "Saint Petersburg", "Kalamazoo River"):
        if len(target_token_ids(tok, word)) >= 2:
            return word
    raise AssertionError("no multi-token target in the tiny vocabulary")


@pytest.mark.parametrize("arch", ["gpt2", "gptj"])
def test_clamp_holds_after_every_step(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    eps = 1e-3
    ed = make_editor(
        model,
        tok,
        {"layer": 0, "lr": 1e-2, "norm_constraint": eps, "num_steps": 8, "early_stop_loss": 0.0},
        None,
        seed=0,
    )
    path = ed.edited_modules[0]
    before = edit_parameter(model, path).detach().clone()
    res = ed.compute(RECORD)
    assert torch.equal(edit_parameter(model, path), before)  # computing never modifies the model
    per_step = res.vectors["max_abs_per_step"]
    assert len(per_step) == 8 and (per_step <= eps).all()
    assert per_step.max() == pytest.approx(eps)  # the constraint was binding (lr >> eps)
    upd = res.updates[0]
    assert upd.kind == "dense" and upd.dense.shape == ed.shape
    apply_updates(model, res.updates, arch_of(model))
    diff = (edit_parameter(model, path).double() - before.double()).abs().max()
    # W + delta rounds to float32: within eps plus one rounding of the largest weight
    assert diff <= eps + torch.finfo(torch.float32).eps * float(before.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_reaches_the_new_target(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    before = evaluate_record(model, tok, RECORD)
    ed = make_editor(
        model, tok, {"layer": 0, "lr": 1e-2, "norm_constraint": 0.1, "num_steps": 25}, None, seed=0
    )
    res = ed.compute(RECORD)
    apply_updates(model, res.updates, arch_of(model))
    after = evaluate_record(model, tok, RECORD)
    assert res.info["ft_loss"] < res.info["ft_loss_init"]
    assert before["es"] == 0.0 or before["es_mag"] < after["es_mag"]
    assert after["es"] == 1.0 and after["es_argmax"] == 1.0
    assert 1 <= res.info["ft_steps"] <= 25


def test_each_target_token_is_scored_at_its_own_position(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    prompt = RECORD["requested_rewrite"]["prompt"].format("Danielle Darrieux")
    target = multi_token_target(tok)
    own = target_nll(model, tok, prompt, target, "own")
    last = target_nll(model, tok, prompt, target, "last_prompt")
    # "own" is the teacher-forced NLL that the evaluation uses; "last_prompt" (the public
    # baseline's loss) scores every token as if it were the first and differs
    ref = score_targets(model, tok, [prompt], [[target]]).nll[0, 0]
    assert own.item() == pytest.approx(float(ref), rel=1e-4)
    assert abs(own.item() - last.item()) > 1e-3
    # a single-token target is scored identically by both
    one = tok.decode(target_token_ids(tok, "the")[:1]).strip()
    assert len(target_token_ids(tok, one)) == 1
    assert target_nll(model, tok, prompt, one, "own").item() == pytest.approx(
        target_nll(model, tok, prompt, one, "last_prompt").item(), rel=1e-6
    )

    # fine-tuning on the own-position loss makes the whole multi-token target the argmax
    rec = {
        **RECORD,
        "requested_rewrite": {**RECORD["requested_rewrite"], "target_new": {"str": target}},
    }
    hp = {"layer": 0, "lr": 5e-3, "norm_constraint": 0.05, "num_steps": 25}
    res = make_editor(model, tok, hp, None, seed=0).compute(rec)
    apply_updates(model, res.updates, arch_of(model))
    assert bool(score_targets(model, tok, [prompt], [[target]]).argmax_ok[0, 0])


def test_hparams_are_checked(tiny_model_factory):
    with pytest.raises(ValueError, match="unknown FT-C hyperparameters"):
        FtcHParams.from_dict({"layer": 0, "steps": 3})
    with pytest.raises(ValueError, match="target_positions"):
        FtcHParams(target_positions="first")
    model, tok = load_model(tiny_model_factory("gpt2"))
    with pytest.raises(ValueError, match="outside the model"):
        make_editor(model, tok, {"layer": 9}, None, seed=0)


def test_ftc_trajectory_stores_dense_updates_and_rebuilds(traj_inputs, tmp_path):
    import h5py

    from editscale.editing.runner import run_trajectory
    from editscale.editing.store import read_metrics, rebuild_weights

    out = tmp_path / "ftc.h5"
    inputs = {k: v for k, v in traj_inputs.items() if k != "stats_path"}
    run_trajectory(
        **inputs,
        stats_path=None,
        out_path=out,
        method="ftc",
        editor="ftc",
        hparams={"layer": 0, "lr": 1e-2, "norm_constraint": 1e-3, "num_steps": 5},
        n_edits=3,
        snapshot_every=2,
        seed=0,
        progress_every_s=0.0,
    )
    m = read_metrics(out)
    assert (m["ft_max_abs_delta"] <= 1e-3 * (1 + 1e-6)).all() and (
        m["ft_steps"] >= 1
    ).all()  # float32 eps
    with h5py.File(out) as f:
        assert f["updates/0"].attrs["kind"] == "dense" and f["updates/0/dense"].shape[0] == 3
        snap3 = torch.from_numpy(f["snapshots/0/3"][()])
    assert torch.equal(next(iter(rebuild_weights(out, 3).values())), snap3)


# -------------------------------------------------------------------------- the bias (include_bias)


@pytest.mark.parametrize("arch", ["gpt2", "gptj"])
def test_bias_is_fine_tuned_and_clamped_with_the_matrix(tiny_model_factory, arch):
    """include_bias (the public baseline: parameters selected by module name, bias included): the
    bias moves, stays in the L-infinity ball after every step, and the model is untouched."""
    model, tok = load_model(tiny_model_factory(arch))
    eps = 1e-3
    ed = make_editor(
        model,
        tok,
        {
            "layer": 0,
            "lr": 1e-2,
            "norm_constraint": eps,
            "num_steps": 8,
            "early_stop_loss": 0.0,
            "include_bias": True,
        },
        None,
        seed=0,
    )
    path = ed.edited_modules[0]
    assert ed.edited_biases == [path] and "ft_max_abs_bias_delta" in ed.info_names
    w0 = edit_parameter(model, path).detach().clone()
    b0 = edit_parameter(model, path + ".bias").detach().clone()
    res = ed.compute(RECORD)
    assert torch.equal(edit_parameter(model, path), w0) and torch.equal(
        edit_parameter(model, path + ".bias"), b0
    )
    upd = res.updates[0]
    assert (
        upd.bias is not None
        and upd.bias.shape == (ed.shape[0],)
        and upd.bias.dtype == torch.float32
    )
    per_step = res.vectors["max_abs_bias_per_step"]
    assert len(per_step) == 8 and (per_step <= eps).all()
    assert per_step.max() == pytest.approx(eps)  # binding: lr >> eps
    assert res.info["ft_max_abs_bias_delta"] == pytest.approx(eps)
    apply_updates(model, res.updates, arch_of(model))
    b1 = edit_parameter(model, path + ".bias").detach()
    assert not torch.equal(b1, b0)  # the bias changed
    # eps itself rounds up in float32 (1e-3 -> 1.00000005e-3), then b + delta rounds once
    assert (b1.double() - b0.double()).abs().max() <= eps * (1 + 1e-6) + torch.finfo(
        torch.float32
    ).eps * float(b0.abs().max())
    assert torch.equal(b1, b0 + upd.bias)  # exactly the stored delta


def test_default_edits_the_matrix_only(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    ed = make_editor(
        model, tok, {"layer": 0, "lr": 1e-2, "norm_constraint": 1e-3, "num_steps": 3}, None, seed=0
    )
    assert ed.edited_biases == [] and FtcHParams().include_bias is False
    assert ed.compute(RECORD).updates[0].bias is None


def test_include_bias_needs_a_bias(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("llama"))  # LLaMA's MLP has no biases
    with pytest.raises(ValueError, match="has no bias"):
        make_editor(model, tok, {"layer": 0, "include_bias": True}, None, seed=0)
    with pytest.raises(ValueError, match="include_bias"):
        FtcHParams(include_bias="yes")


def test_bias_trajectory_stores_rebuilds_and_evaluates_bitwise(traj_inputs, tmp_path):
    """The store records the bias deltas and snapshots; rebuilding from a snapshot + updates equals
    the runner's own snapshot bit for bit (matrix and bias); the evaluation loads both."""
    import h5py

    from editscale.editing.replay import load_weights_into
    from editscale.editing.runner import run_trajectory
    from editscale.editing.store import (
        initial_weight_norms,
        read_metrics,
        rebuild_weights,
        replay_weights,
    )

    eps = 1e-3
    out = tmp_path / "ftc_bias.h5"
    inputs = {k: v for k, v in traj_inputs.items() if k != "stats_path"}
    run_trajectory(
        **inputs,
        stats_path=None,
        out_path=out,
        method="ftc",
        editor="ftc",
        hparams={
            "layer": 0,
            "lr": 1e-2,
            "norm_constraint": eps,
            "num_steps": 5,
            "include_bias": True,
        },
        n_edits=4,
        snapshot_every=3,
        seed=0,
        progress_every_s=0.0,
    )
    m = read_metrics(out)
    assert (m["ft_max_abs_bias_delta"] <= eps * (1 + 1e-6)).all()
    assert (m["bias_update_norm_0"] > 0).all() and (m["bias_distance_0"] > 0).all()
    with h5py.File(out) as f:
        module = json_list(f.attrs["params"])[0]
        assert json_list(f.attrs["bias_params"]) == [module]
        assert f["updates/0"].attrs["bias"] and f["updates/0/bias"].shape == (
            4,
            f["updates/0/dense"].shape[1],
        )
        snaps = {
            t: (
                torch.from_numpy(f[f"snapshots/0/{t}"][()]),
                torch.from_numpy(f[f"bias_snapshots/0/{t}"][()]),
            )
            for t in (0, 3, 4)
        }
    key = module + ".bias"
    # edits 1..3 replayed from the unedited snapshot equal the runner's snapshot after edit 3
    for t, w in replay_weights(out, 3):
        if t == 3:
            assert torch.equal(w[module], snaps[3][0]) and torch.equal(w[key], snaps[3][1])
    # edit 4 from snapshot 3 equals the runner's final snapshot
    rebuilt = rebuild_weights(out, 4)
    assert set(rebuilt) == {module, key}
    assert torch.equal(rebuilt[module], snaps[4][0]) and torch.equal(rebuilt[key], snaps[4][1])
    assert not torch.equal(snaps[4][1], snaps[0][1])  # the bias moved
    # each edit's bias step stays in the clamp around the bias before it
    prev = rebuild_weights(out, 0)[key]
    for t in range(1, 5):
        cur = rebuild_weights(out, t)[key]
        assert (cur.double() - prev.double()).abs().max() <= eps * (1 + 1e-6) + torch.finfo(
            torch.float32
        ).eps * float(prev.abs().max())
        prev = cur
    assert len(initial_weight_norms(out)) == 1  # the matrices only
    model, _ = load_model(inputs["model_dir"])
    load_weights_into(model, rebuilt)
    assert torch.equal(edit_parameter(model, key), snaps[4][1]) and torch.equal(
        edit_parameter(model, module), snaps[4][0]
    )


def json_list(s) -> list:
    import json

    return json.loads(s)
