"""MEMIT's defining properties on tiny models, and its trajectories (several layers' statistics)."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch

from editscale.editing.runner import run_trajectory
from editscale.editing.store import read_metrics
from editscale.editors.alphaedit import AlphaEditEditor, null_space_projection
from editscale.editors.alphaedit import make_editor as make_alphaedit_editor
from editscale.editors.base import apply_updates
from editscale.editors.emmet import EmmetEditor
from editscale.editors.emmet import make_editor as make_emmet_editor
from editscale.editors.encore import EncoreEditor, MostProbableStop
from editscale.editors.encore import make_editor as make_encore_editor
from editscale.editors.hparams import MemitHParams
from editscale.editors.memit import MemitEditor, make_editor
from editscale.editors.prompts import generate_context_templates
from editscale.lm.models import arch_of, edit_parameter, get_module, load_model
from tests.conftest import ARCHS, synthetic_records
from tests.editors.test_rome import random_spd

RECORDS = synthetic_records(4)
TEMPLATES = ["{}", "The cat sat. {}", "Because of it. {}"]


def d_in(model, layer):
    spec = arch_of(model)
    return get_module(model, spec.mlp_out_path(layer)).weight.shape[0 if spec.conv1d else 1]


def editor_for(
    model, tok, layers, weight=15000.0, steps=8, templates=TEMPLATES, editor="memit", **extra
):
    hp = {"layers": layers, "v_num_grad_steps": steps, "mom2_update_weight": weight, **extra}
    c = {layer: random_spd(d_in(model, layer), seed=layer) for layer in layers}
    build = {
        "memit": make_editor,
        "emmet": make_emmet_editor,
        "alphaedit": make_alphaedit_editor,
        "encore": make_encore_editor,
    }[editor]
    return build(model, tok, hp, c, seed=3, state={"context_templates": templates})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", [[1], [0, 1]])
def test_a_step_with_a_small_lambda_inserts_every_target(tiny_model_factory, arch, layers):
    """lambda -> 0: the keys' outputs move by exactly the residuals, so after all layers' updates
    the residual stream at the last edited block equals each record's target z (batch of 3; the bare
    template only, so that each record's key is its bare prompt's)."""
    model, tok = load_model(tiny_model_factory(arch))
    ed = editor_for(model, tok, layers, weight=1e-6, templates=["{}"])
    res = ed.compute_batch(RECORDS[:3])
    z = res.vectors["z"]
    _, h_before = ed._keys_and_values(RECORDS[:3], layers[0])
    assert float((z - h_before).norm(dim=0).min()) > 1e-2  # the targets are not already there
    assert [u.module for u in res.updates] == [arch_of(model).mlp_out_path(x) for x in layers]
    assert all(u.u.shape[0] == 3 and u.v.shape[0] == 3 for u in res.updates)  # rank-3 factors
    apply_updates(model, res.updates, arch_of(model))
    _, h_after = ed._keys_and_values(RECORDS[:3], layers[-1])
    torch.testing.assert_close(h_after, z, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("weight", [1.0, 1e4])
def test_emmet_inserts_every_target_exactly_whatever_lambda(tiny_model_factory, weight):
    """EMMET's equality constraints: with emmet_lambda 0 the keys map exactly onto the residuals,
    for any lambda; for one edit its adjusted key is ROME's C^-1 k / (k^T C^-1 k)."""
    model, tok = load_model(tiny_model_factory("llama"))
    ed = editor_for(
        model, tok, [1], weight=weight, templates=["{}"], editor="emmet", emmet_lambda=0.0
    )
    res = ed.compute_batch(RECORDS[:3])
    apply_updates(model, res.updates, arch_of(model))
    _, h_after = ed._keys_and_values(RECORDS[:3], 1)
    torch.testing.assert_close(h_after, res.vectors["z"], rtol=1e-3, atol=1e-3)
    k = torch.randn(d_in(model, 1), 1, dtype=torch.float64)
    c_inv_k = torch.linalg.solve(weight * ed.c[1], k)
    torch.testing.assert_close(ed._adjusted_keys(1, k), c_inv_k / (k.T @ c_inv_k))


@pytest.mark.parametrize("arch", ARCHS)
def test_alphaedit_updates_leave_the_preserved_keys_alone_and_carry_the_inserted_ones(
    tiny_model_factory, arch
):
    model, tok = load_model(tiny_model_factory(arch))
    ed = editor_for(model, tok, [0, 1], editor="alphaedit", nullspace_threshold=1.0)
    for layer in (0, 1):
        rank = int(torch.linalg.matrix_rank(ed.p[layer]))
        assert 0 < rank < d_in(model, layer)  # a real null space, not all or nothing
    res = ed.compute_batch(RECORDS[:2])
    for layer, upd in zip((0, 1), res.updates):
        dw = upd.delta_out_in().double()
        keep = (
            torch.eye(dw.shape[1], dtype=torch.float64) - ed.p[layer]
        )  # C's span (eigenvalues >= 1)
        assert float((dw @ keep).norm()) <= 1e-5 * float(dw.norm()) and float(dw.norm()) > 0
    assert set(res.carry) == {"keys_0", "keys_1"} and res.carry["keys_0"].shape == (
        2,
        d_in(model, 0),
    )
    assert all(
        float(k.norm()) == 0 for k in ed.kept.values()
    )  # computing carries nothing by itself
    ed.commit(res.carry)
    for i, layer in enumerate((0, 1)):
        torch.testing.assert_close(
            ed.kept[layer], res.carry[f"keys_{i}"].T @ res.carry[f"keys_{i}"]
        )
    # the carried keys are those of the edited model
    apply_updates(model, res.updates, arch_of(model))
    torch.testing.assert_close(ed._keys_and_values(RECORDS[:2], 1)[0].T, res.carry["keys_1"])


def test_null_space_projection_is_the_low_eigenvalue_projector():
    q, _ = torch.linalg.qr(
        torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    c = q @ torch.diag(torch.tensor([1e-4, 1e-3, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)) @ q.T
    p = null_space_projection(c, 2e-2)
    torch.testing.assert_close(p, q[:, :2] @ q[:, :2].T)
    assert float((p @ c).norm()) < 2e-3


def test_encore_solves_its_normal_equations_with_the_earlier_steps_keys(tiny_model_factory):
    """(lambda C + mu I + K_prev K_prev^T + K K^T) adj = K at the first layer; the carried keys
    are the ones the step used (read before its own updates)."""
    model, tok = load_model(tiny_model_factory("llama"))
    ed = editor_for(model, tok, [0, 1], weight=2.0, editor="encore", update_norm_lambda=3.0)
    first = ed.compute_batch(RECORDS[:2])
    k0, _ = ed._keys_and_values(RECORDS[:2], 0)
    torch.testing.assert_close(first.carry["keys_0"], k0.T)
    apply_updates(model, first.updates, arch_of(model))
    ed.commit(first.carry)
    res = ed.compute_batch(RECORDS[2:4])
    k, h = ed._keys_and_values(RECORDS[2:4], 0)
    r = (res.vectors["z"] - h) / 2
    dw = res.updates[0].delta_out_in().double()
    eye = torch.eye(k.shape[0], dtype=torch.float64)
    lhs = dw @ (2.0 * ed.c[0] + 3.0 * eye + k0 @ k0.T + k @ k.T)
    torch.testing.assert_close(lhs, r @ k.T, rtol=1e-4, atol=1e-5 * float((r @ k.T).abs().max()))


def test_most_probable_early_stopping_counts_passes_with_every_target_top_1():
    tgt = torch.tensor([2, 0])  # two target tokens, three rewriting prompts, vocabulary of 4
    right = torch.full((3, 2, 4), -5.0)
    right[:, 0, 2] = right[:, 1, 0] = -0.1
    wrong = right.clone()
    wrong[2, 1, 0], wrong[2, 1, 3] = -5.0, -0.1  # the last prompt's second token is not top-1
    nll = torch.ones(3, 2)
    stop = MostProbableStop(-2)
    assert not stop(wrong.view(6, 4), tgt, nll) and stop.passes == 0
    assert not stop(right.view(6, 4), tgt, nll) and stop.passes == 1
    assert not stop(wrong.view(6, 4), tgt, nll) and stop.passes == 1
    assert stop(right.view(6, 4), tgt, nll)  # second pass, not consecutive
    right_but_first = right.clone()
    right_but_first[0] = -1.0  # the first prompt is never checked (the public code skips it)
    assert MostProbableStop(-1)(right_but_first.view(6, 4), tgt, nll)
    assert MostProbableStop(0.3)(right.view(6, 4), tgt, torch.full((3, 2), 0.5))  # exp(-0.5) > 0.3
    assert not MostProbableStop(0.7)(right.view(6, 4), tgt, torch.full((3, 2), 0.5))


def test_only_encore_passes_a_stop_rule_to_the_shared_target_search(tiny_model_factory):
    """ROME's v* optimisation knows no ENCORE hyperparameter: ENCORE hands it its stop rule."""
    model, tok = load_model(tiny_model_factory("gpt2"))
    assert editor_for(model, tok, [1], editor="memit")._stop_rule() is None
    assert editor_for(model, tok, [1], editor="encore", prob_cutoff=0.0)._stop_rule() is None
    rule = editor_for(model, tok, [1], editor="encore", prob_cutoff=-2.0)._stop_rule()
    assert (
        rule == MostProbableStop(-2.0)
        and rule is not editor_for(model, tok, [1], editor="encore")._stop_rule()
    )


def test_first_layer_update_solves_memit_normal_equations(tiny_model_factory):
    """dW (lambda C + K K^T) = R K^T at the first layer, R = (Z - H) / (number of layers)."""
    model, tok = load_model(tiny_model_factory("llama"))
    layers = [0, 1]
    ed = editor_for(model, tok, layers, weight=2.0)
    res = ed.compute_batch(RECORDS[:2])
    k, h = ed._keys_and_values(
        RECORDS[:2], layers[0]
    )  # the model is unchanged: the step's first keys
    r = (res.vectors["z"] - h) / len(layers)
    dw = res.updates[0].delta_out_in().double()
    lhs = dw @ (2.0 * ed.c[0] + k @ k.T)
    torch.testing.assert_close(lhs, r @ k.T, rtol=1e-4, atol=1e-5 * float((r @ k.T).abs().max()))


def test_keys_average_the_bare_prompt_with_the_templates(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    ed = editor_for(model, tok, [1])
    k, _ = ed._keys_and_values(RECORDS[:1], 1)
    single = []
    for t in TEMPLATES:
        ed.context_templates = [t]
        single.append(ed._keys_and_values(RECORDS[:1], 1)[0][:, 0])
    expected = (single[0] + (single[1] + single[2]) / 2) / 2
    torch.testing.assert_close(k[:, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_computing_leaves_the_model_bitwise_unchanged(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    ed = editor_for(model, tok, [0, 2])
    before = {p: edit_parameter(model, p).detach().clone() for p in ed.edited_modules}
    res = ed.compute_batch(RECORDS[:2])
    for p, w in before.items():
        assert torch.equal(edit_parameter(model, p), w), p
    assert all(u.frobenius_norm() > 0 for u in res.updates)


def test_hparams_and_statistics_are_checked(tiny_model_factory):
    with pytest.raises(ValueError, match="increasing"):
        MemitHParams(layers=[2, 1])
    with pytest.raises(ValueError, match="non-empty"):
        MemitHParams(layers=[])
    with pytest.raises(ValueError, match="unknown MEMIT hyperparameters"):
        MemitHParams.from_dict({"layers": [1], "layer": 1})
    model, tok = load_model(tiny_model_factory("gpt2"))
    with pytest.raises(ValueError, match=r"key statistics of layers \[2\]"):
        MemitEditor(
            model, tok, MemitHParams(layers=[1, 2]), {1: random_spd(d_in(model, 1))}, TEMPLATES
        )
    with pytest.raises(ValueError, match="outside"):
        MemitEditor(model, tok, MemitHParams(layers=[1, 7]), {}, TEMPLATES)


def test_context_templates_from_start_words_are_seeded(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("llama"))
    starts = ["The", "Because"]
    a = generate_context_templates(model, tok, [[6, 4]], 5, seed=11, starts=starts)
    b = generate_context_templates(model, tok, [[6, 4]], 5, seed=11, starts=starts)
    c = generate_context_templates(model, tok, [[6, 4]], 5, seed=12, starts=starts)
    assert a == b and a != c
    assert a[0] == "{}" and len(a) == 5 and all(t.endswith(". {}") for t in a[1:])
    assert all(  # each prefix keeps its start word, then the sample
        t.startswith(w) for t, w in zip(a[1:], ["The", "The", "Because", "Because"])
    )


# ------------------------------------------------------------------------------ trajectories

HPARAMS = {
    "layers": [1, 2],
    "v_num_grad_steps": 4,
    "context_template_lengths": [[4, 2]],
    "context_template_starts": ["The", "I"],
}


@pytest.fixture(scope="module")
def memit_inputs(traj_inputs, tmp_path_factory):
    """traj_inputs plus key statistics of layer 2 (the same documents as layer 1's)."""
    from editscale.editing.key_stats import compute_key_second_moment
    from editscale.lm.models import model_identity
    from tests.conftest import OBJECTS, SUBJECTS
    from tests.conftest import TEMPLATES as CF_TEMPLATES

    model, tok = load_model(traj_inputs["model_dir"])
    docs = [
        f"{s} {t.replace('{}', s)} {o} and then some more text number {i}"
        for i, (s, t, o) in enumerate(zip(SUBJECTS * 30, CF_TEMPLATES * 75, OBJECTS * 50))
    ]
    path = tmp_path_factory.mktemp("memit-stats") / "layer2.h5"
    compute_key_second_moment(
        model,
        tok,
        2,
        docs,
        path,
        n_docs=len(docs),
        max_doc_tokens=64,
        batch_tokens=2048,
        attrs={
            **model_identity(traj_inputs["model_dir"]),
            "corpus": "synthetic",
            "corpus_fingerprint": "x",
        },
    )
    return {**traj_inputs, "stats_path": [traj_inputs["stats_path"], path]}


def run(inputs, out, **kw):
    args = dict(
        inputs,
        out_path=out,
        method="memit",
        editor="memit",
        hparams=HPARAMS,
        n_edits=5,
        snapshot_every=2,
        seed=5,
        config={"test": True},
        progress_every_s=0.0,
    )
    args.update(kw)
    run_trajectory(**args)


def assert_same_run(full, broken, snapshot: str) -> None:
    """The resumed run ``broken`` equals the uninterrupted ``full`` bit for bit: every per-edit
    metric but the timings, the second matrix's stored factors and ``snapshot``."""
    a, b = read_metrics(full), read_metrics(broken)
    for k in a:
        if k not in ("edit_seconds", "eval_seconds"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with h5py.File(full) as fa, h5py.File(broken) as fb:
        for name in ("updates/1/u", "updates/1/v", snapshot):
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)


EDITORS = {
    "memit": (MemitEditor, HPARAMS),
    "alphaedit": (AlphaEditEditor, {**HPARAMS, "nullspace_threshold": 1e9}),  # P = I on these keys
    "encore": (EncoreEditor, {**HPARAMS, "mom2_update_weight": 1.0}),
    "emmet": (EmmetEditor, {**HPARAMS, "mom2_update_weight": 1.0}),
}


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_trajectory_stores_rebuilds_and_resumes_bitwise(
    memit_inputs, tmp_path, monkeypatch, editor
):
    cls, hparams = EDITORS[editor]
    full = tmp_path / "full.h5"
    run(memit_inputs, full, method=editor, editor=editor, hparams=hparams)
    m = read_metrics(full)
    assert len(m["es"]) == 5 and np.all(m["update_norm_0"] > 0) and np.all(m["update_norm_1"] > 0)
    with h5py.File(full) as f:
        assert (
            f.attrs["stats_sha256"].count(",") == 1
        )  # both layers' statistics are in the provenance
        assert list(f["updates"]) == ["0", "1"]
    import editscale.editing.store as store

    with h5py.File(
        full
    ) as f:  # snapshot 0 + updates 1..4 = the runner's weights at edit 4, both matrices
        w = [torch.from_numpy(f[f"snapshots/{i}/0"][()]) for i in range(2)]
        for row in store.read_updates(f, 0, 4):
            for i, upd in enumerate(row):
                store.apply_update(w[i], upd, store.ARCHITECTURES["gpt2"])
        for i in range(2):
            assert torch.equal(w[i], torch.from_numpy(f[f"snapshots/{i}/4"][()]))
            assert not torch.equal(w[i], torch.from_numpy(f[f"snapshots/{i}/0"][()]))

    # a run that fails during its 4th edit, then resumes: the same bits as the uninterrupted run
    broken = tmp_path / "broken.h5"
    calls = {"n": 0}
    original = cls.compute_batch

    def failing(self, records):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return original(self, records)

    monkeypatch.setattr(cls, "compute_batch", failing)
    with pytest.raises(RuntimeError, match="killed"):
        run(memit_inputs, broken, method=editor, editor=editor, hparams=hparams)
    monkeypatch.setattr(cls, "compute_batch", original)
    with h5py.File(str(broken) + ".partial") as f:
        assert int(f.attrs["n_done"]) == 3
        assert ("carry" in f) == (editor in ("alphaedit", "encore"))
    run(memit_inputs, broken, method=editor, editor=editor, hparams=hparams)
    assert_same_run(full, broken, "snapshots/1/5")


@pytest.mark.parametrize("editor", ["memit", "alphaedit"])
def test_steps_of_several_edits_store_one_update_each_and_resume_bitwise(
    memit_inputs, tmp_path, monkeypatch, editor
):
    cls, hparams = EDITORS[editor]
    import editscale.editing.store as store
    from editscale.data.counterfact import select_records

    full = tmp_path / "full.h5"
    run(
        memit_inputs,
        full,
        method=editor,
        editor=editor,
        hparams=hparams,
        n_edits=4,
        edits_per_step=2,
    )
    m = read_metrics(full)
    assert list(m["edit"]) == [1, 2, 3, 4]
    for i in range(2):  # the step's update with its first edit; the weights after it on every row
        assert m[f"update_norm_{i}"][0] > 0 and m[f"update_norm_{i}"][2] > 0
        assert m[f"update_norm_{i}"][1] == 0 and m[f"update_norm_{i}"][3] == 0
        assert (
            m[f"distance_{i}"][0]
            == m[f"distance_{i}"][1]
            != m[f"distance_{i}"][2]
            == m[f"distance_{i}"][3]
        )
    with h5py.File(full) as f:
        assert int(f.attrs["edits_per_step"]) == 2
        assert sorted(int(x) for x in f["snapshots/0"]) == [0, 2, 4]
        off = f["updates/0/offsets"][()]
        assert list(np.diff(off)) == [2, 0, 2, 0]  # rank 2 = the step's two keys
        if editor == "alphaedit":
            assert list(np.diff(f["carry/keys_0/offsets"][()])) == [2, 0, 2, 0]
    for t_mid, t_end in ((1, 2), (3, 4)):  # "after edit 1" is after the step it belongs to
        mid, end = store.rebuild_weights(full, t_mid), store.rebuild_weights(full, t_end)
        assert all(torch.equal(mid[p], end[p]) for p in end)

    # the same two steps by hand: each step's records edited together, on the model after the
    # earlier step
    model, tok = load_model(memit_inputs["model_dir"])
    records = select_records(memit_inputs["counterfact_path"], memit_inputs["ordering_path"], 4)
    from editscale.editing.editor_state import trajectory_editor

    ed = trajectory_editor(full, model, tok, memit_inputs["model_dir"], memit_inputs["stats_path"])
    for step in (records[:2], records[2:]):
        res = ed.compute_batch(step)
        apply_updates(model, res.updates, arch_of(model))
        if res.carry:
            ed.commit(res.carry)
    end = store.rebuild_weights(full, 4)
    for p in ed.edited_modules:
        assert torch.equal(edit_parameter(model, p), end[p]), p

    # killed during the second step, then resumed: the first step is kept, the result bitwise the
    # same
    broken = tmp_path / "broken.h5"
    calls = {"n": 0}
    original = cls.compute_batch

    def failing(self, records):
        calls["n"] += 1
        assert len(records) == 2
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return original(self, records)

    monkeypatch.setattr(cls, "compute_batch", failing)
    with pytest.raises(RuntimeError, match="killed"):
        run(
            memit_inputs,
            broken,
            method=editor,
            editor=editor,
            hparams=hparams,
            n_edits=4,
            edits_per_step=2,
        )
    monkeypatch.setattr(cls, "compute_batch", original)
    with h5py.File(str(broken) + ".partial") as f:
        assert int(f.attrs["n_done"]) == 2
    run(
        memit_inputs,
        broken,
        method=editor,
        editor=editor,
        hparams=hparams,
        n_edits=4,
        edits_per_step=2,
    )
    assert_same_run(full, broken, "snapshots/1/4")

    # a partial file of steps of 2 is not resumed as steps of 1
    (tmp_path / "x.h5.partial").write_bytes((tmp_path / "full.h5").read_bytes())
    with h5py.File(tmp_path / "x.h5.partial", "r+") as f:
        f.attrs["n_done"] = 2
    with pytest.raises(Exception, match="different inputs"):
        run(
            memit_inputs,
            tmp_path / "x.h5",
            method=editor,
            editor=editor,
            hparams=hparams,
            n_edits=4,
        )


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"editor": "rome", "method": "rome", "hparams": {"layer": 1}, "stats_path": None},
            "one record per step",
        ),
        ({"n_edits": 5}, "does not divide n_edits = 5"),
        ({"snapshot_every": 3}, "does not divide snapshot_every = 3"),
        ({"store_updates": False}, "store_updates"),
    ],
)
def test_step_settings_a_trajectory_cannot_run_are_refused_before_any_work(
    memit_inputs, tmp_path, kw, match
):
    with pytest.raises(ValueError, match=match):
        run(memit_inputs, tmp_path / "x.h5", **{"n_edits": 4, "edits_per_step": 2, **kw})
    assert not list(tmp_path.iterdir())


def test_disabling_rule_runs_on_steps_and_names_a_step_by_its_first_edit():
    from editscale.evaluation.disabling import flag_steps

    rule = {"norm_multiple": 10.0, "window": 5, "min_history": 3, "refractory": 2}
    per_step = np.array([1.0, 1.1, 0.9, 1.0, 1.2, 50.0, 1.0, 1.1])
    per_edit = np.zeros(len(per_step) * 3)
    per_edit[::3] = per_step  # the update with the first edit of each step of 3
    flagged = flag_steps(per_edit[:, None], 3, rule)
    assert [t for t, _ in flagged] == [16]  # step 6 = edits 16..18
    assert flagged[0][1].startswith("step 6 (edits 16..18)")
    assert [t for t, _ in flag_steps(per_step[:, None], 1, rule)] == [6]


def test_statistics_files_must_match_the_layers(memit_inputs, tmp_path):
    swapped = {**memit_inputs, "stats_path": list(reversed(memit_inputs["stats_path"]))}
    with pytest.raises(Exception, match="layer"):
        run(swapped, tmp_path / "x.h5")
    one = {**memit_inputs, "stats_path": memit_inputs["stats_path"][0]}
    with pytest.raises(ValueError, match="1 statistics files"):
        run(one, tmp_path / "y.h5")


# ------------------------------------------------------------------------------ configuration


def test_config_asks_for_one_statistics_file_per_layer():
    from editscale import config as escfg
    from tests.test_config import error_key, minimal

    cfg = minimal()
    cfg["models"]["m"]["n_layer"] = 4
    cfg["methods"]["memit"] = {
        "editor": "memit",
        "hparams": {"mom2_update_weight": 100.0},
        "per_model": {"m": {"layers": [1, 2, 3]}},
    }
    cfg["experiments"].append({"model": "m", "method": "memit"})
    loaded = escfg.load_config(cfg)
    assert escfg.stats_layers(loaded, "memit", "m") == [1, 2, 3]
    assert escfg.stats_files(loaded, "memit", "m") == [
        f"resources/stats/m/c/layer{x}.h5" for x in (1, 2, 3)
    ]
    assert escfg.stats_files(loaded, "rome", "m") == ["resources/stats/m/c/layer1.h5"]
    with pytest.raises(ValueError, match="stats_layers"):
        escfg.stats_layer(loaded, "memit", "m")
    cfg["methods"]["memit"]["per_model"]["m"]["layers"] = [1, 4]
    assert error_key(copy.deepcopy(cfg)) == "methods.memit.per_model.m.layers[1]"
    cfg["methods"]["memit"]["per_model"]["m"]["layers"] = [2, 1]
    assert error_key(copy.deepcopy(cfg)).startswith("methods.memit.")
    del cfg["methods"]["memit"]["per_model"]["m"]["layers"]
    assert error_key(copy.deepcopy(cfg)) == "methods.memit.per_model.m.layers"


def test_config_checks_edits_per_step():
    from tests.test_config import error_key, minimal

    cfg = minimal()
    cfg["models"]["m"]["n_layer"] = 4
    cfg["n_edits"] = 20
    cfg["snapshot_every"] = 10
    cfg["evaluation"] = {"forgetting_every": 10, "downstream_every": 10}
    cfg["methods"]["memit"] = {
        "editor": "memit",
        "edits_per_step": 5,
        "per_model": {"m": {"layers": [1, 2]}},
    }
    cfg["experiments"].append({"model": "m", "method": "memit"})
    from editscale import config as escfg

    assert (
        escfg.load_config(copy.deepcopy(cfg))["methods"]["rome"]["edits_per_step"] == 1
    )  # the default
    for change, key_or_text in (
        (lambda c: c["methods"]["rome"].update(edits_per_step=2), "methods.rome.edits_per_step"),
        (lambda c: c["evaluation"].update(forgetting_every=12), "methods.memit.edits_per_step"),
        (lambda c: c.update(snapshot_every=4), "methods.memit.edits_per_step"),
        (lambda c: c["experiments"][-1].update(n_edits=12), "methods.memit.edits_per_step"),
        (
            lambda c: c["methods"]["memit"].update(store_updates=False),
            "methods.memit.edits_per_step",
        ),
        (lambda c: c["methods"]["memit"].update(edits_per_step=0), "methods.memit.edits_per_step"),
    ):
        bad = copy.deepcopy(cfg)
        change(bad)
        assert error_key(bad) == key_or_text
    with pytest.raises(escfg.ConfigError, match="forgetting_every = 12"):
        bad = copy.deepcopy(cfg)
        bad["evaluation"]["forgetting_every"] = 12
        escfg.load_config(bad)


def test_default_config_with_the_lifelong_editors_plans_statistics_for_every_layer(tmp_path):
    import yaml

    from tests.pipeline.test_workflow import REPO, job_counts, snakemake

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    extra = {
        "experiments": cfg["experiments"]
        + [{"model": "toy-llama", "method": m} for m in ("memit", "emmet", "alpha")],
        "methods": {
            "memit": {"editor": "memit", "per_model": {"toy-llama": {"layers": [2, 3]}}},
            "emmet": {"editor": "emmet", "per_model": {"toy-llama": {"layers": [3]}}},
            "alpha": {"editor": "alphaedit", "per_model": {"toy-llama": {"layers": [1, 3]}}},
        },
    }
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    proc = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(tmp_path / "extra.yaml"),
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out)
    assert (
        counts["key_stats"] == 3
    )  # layer 3 (ROME, r-ROME, EMMET, MEMIT, AlphaEdit), 2 (MEMIT), 1 (AlphaEdit)
    assert counts["trajectory"] == 7 * cfg["samples"]
    for layer in (1, 2, 3):
        assert f"resources/stats/toy-llama/toy_heldout/layer{layer}.h5" in out
