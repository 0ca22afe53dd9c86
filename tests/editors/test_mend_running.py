"""MEND with the authors' normalisation (``normalisation: authors_running``): the public
GradientTransform in training mode, checked against its own per-row loop, carried from edit to
edit and resumed bit for bit; and the public learning-rate pairing option."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from editscale.data.counterfact import write_ordering
from editscale.editing.runner import run_trajectory
from editscale.editors.base import apply_updates
from editscale.editors.mend import (
    MendEditor,
    MendNetwork,
    Moments,
    capture_factors,
    edit_batch,
    edited_module_paths,
    make_editor,
    module_shape,
    save_editor,
    shape_key,
)
from editscale.lm.models import arch_of, load_model, model_identity
from tests.conftest import synthetic_records
from tests.editors.test_memit import assert_same_run

RUNNING = {"layers": [0, 1, 2], "normalisation": "authors_running"}
RECORDS = synthetic_records(6)


@pytest.fixture(scope="module")
def untrained(tiny_model_factory, tmp_path_factory):
    """An identity-initialised editor file for a tiny GPT-2 (layers 0-2): its networks pass the
    normalised factors through unchanged, so an update shows the normalisation itself."""
    folder = tiny_model_factory("gpt2")
    model, _ = load_model(folder)
    modules = edited_module_paths(model, [0, 1, 2])
    net = MendNetwork(modules, {m: module_shape(model, m) for m in modules}, rank=8)
    path = tmp_path_factory.mktemp("mend-untrained") / "mend.safetensors"
    save_editor(path, net, {**model_identity(folder), "source": "test"})
    return folder, path


def authors_loop(rows: list[torch.Tensor]):
    """The public ``GradientTransform.forward`` statistics (training mode), row by row in float32:
    the first row starts them, ``update_counter`` adds each later one."""
    mean, s, k = rows[0].clone(), torch.zeros_like(rows[0]), torch.ones(1)
    for x in rows[1:]:
        k += 1
        new_mean = mean + (x - mean) / k
        s = s + (x - mean) * (x - new_mean)
        mean = new_mean
    return mean, (s / (k - 1)) ** 0.5


def test_updates_are_normalised_with_the_public_running_statistics(untrained):
    folder, path = untrained
    model, tok = load_model(folder)
    ed = make_editor(model, tok, RUNNING, None, 0, editor_file=path)
    assert isinstance(ed, MendEditor) and ed.running
    lr = {m: float(ed.net.edit_lrs[i].detach()) for i, m in enumerate(ed.modules)}
    seen: dict[str, tuple[list, list]] = {}  # shape -> (x rows, delta rows), in the editor's order
    for rec in RECORDS[:4]:
        rw = rec["requested_rewrite"]
        batch = edit_batch(
            tok, [(rw["prompt"].format(rw["subject"]), rw["target_new"]["str"])], "cpu"
        )
        raw, _ = capture_factors(model, ed.modules, batch)  # the same rows, captured here
        result = ed.compute(rec)
        for upd in result.updates:
            x, d = raw[upd.module]
            xs, ds = seen.setdefault(shape_key(module_shape(model, upd.module)), ([], []))
            xs.extend(x.float())
            ds.extend(d.float())
            u_mean, u_std = authors_loop(xs)
            v_mean, v_std = authors_loop(ds)
            torch.testing.assert_close(upd.u, (x - u_mean) / (u_std + 1e-7), rtol=2e-4, atol=2e-5)
            expect_v = -lr[upd.module] * (d - v_mean) / (v_std + 1e-7)
            torch.testing.assert_close(upd.v, expect_v, rtol=2e-4, atol=1e-9)
        apply_updates(model, result.updates, arch_of(model))
        ed.commit(result.carry)
    # the carried statistics: every row so far, per shape, as numpy computes them (float64)
    for key, (xs, ds) in seen.items():
        rows = torch.stack(xs).double().numpy()
        st = ed.stats[key]
        assert st.u.count == len(xs) == len(ds)
        np.testing.assert_allclose(st.u.mean.numpy(), rows.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(st.u.std().numpy(), rows.std(0, ddof=1), rtol=1e-9)


def test_moments_merge_in_pieces_as_in_one():
    rows = torch.randn(40, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one = Moments.empty(7, "cpu").merged(rows)
    pieces = Moments.empty(7, "cpu")
    for chunk in (rows[:1], rows[1:13], rows[13:13], rows[13:]):
        pieces = pieces.merged(chunk)
    assert pieces.count == one.count == 40
    torch.testing.assert_close(pieces.mean, rows.mean(0))
    torch.testing.assert_close(pieces.std(), rows.std(0))
    torch.testing.assert_close(one.std(), rows.std(0))


def test_frozen_is_the_default_and_carries_nothing(untrained):
    folder, path = untrained
    model, tok = load_model(folder)
    ed = make_editor(model, tok, {"layers": [0, 1, 2]}, None, 0, editor_file=path)
    assert not ed.running and dict(ed.carry_dims) == {} and ed.compute(RECORDS[0]).carry == {}


def test_a_resumed_running_trajectory_is_bitwise_the_uninterrupted_one(
    untrained, tmp_path, monkeypatch
):
    folder, path = untrained
    (tmp_path / "cf.json").write_text(json.dumps(RECORDS))
    write_ordering(tmp_path / "order.json", [r["case_id"] for r in RECORDS[:5]], sample=0)
    kw = dict(
        model_dir=folder,
        counterfact_path=tmp_path / "cf.json",
        ordering_path=tmp_path / "order.json",
        stats_path=None,
        method="mend",
        editor="mend",
        hparams=RUNNING,
        n_edits=5,
        snapshot_every=2,
        seed=0,
        progress_every_s=0.0,
        editor_file=path,
    )
    full = tmp_path / "full.h5"
    run_trajectory(**kw, out_path=full)
    with h5py.File(full) as f:
        assert {"mend_count", "mend_u_32x128", "mend_v_128x32"} <= set(f["carry"])
        assert list(f["carry/mend_count/offsets"][()]) == [0, 2, 4, 6, 8, 10]
    broken, calls, original = tmp_path / "broken.h5", {"n": 0}, MendEditor.compute

    def failing(self, record):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return original(self, record)

    monkeypatch.setattr(MendEditor, "compute", failing)
    with pytest.raises(RuntimeError, match="killed"):
        run_trajectory(**kw, out_path=broken)
    monkeypatch.setattr(MendEditor, "compute", original)
    run_trajectory(**kw, out_path=broken)
    assert_same_run(full, broken, "snapshots/1/4")
    # the statistics did change the edits: frozen normalisation gives other updates
    frozen = tmp_path / "frozen.h5"
    run_trajectory(**{**kw, "hparams": {"layers": [0, 1, 2]}}, out_path=frozen)
    with h5py.File(full) as fa, h5py.File(frozen) as fb:
        assert not np.allclose(fa["updates/1/u"][()], fb["updates/1/u"][()])


def test_public_learning_rates_pair_in_trained_or_parameter_order(untrained, tmp_path):
    """A public GPT-2 file lists its edit learning rates in its training config's order (c_proj,
    c_fc per layer); the paper's authors' executor applied them in named_parameters() order (c_fc,
    c_proj), i.e. each layer's two rates swapped."""
    from transformers import GPT2Config

    folder, _ = untrained
    model, _ = load_model(folder)
    modules = edited_module_paths(model, [0, 1, 2])
    net = MendNetwork(modules, {m: module_shape(model, m) for m in modules}, rank=8)
    state = {}
    for key, value in net.state_dict().items():
        if key != "edit_lrs":
            _, shape, rest = key.split(".", 2)
            rest = rest.replace(".mode_shift", ".mode_shift.weight")
            rest = rest.replace(".mode_scale", ".mode_scale.weight")
            state[f"mend.({shape.replace('x', ', ')}).{rest}"] = value.clone()
    listed = [f"transformer.h.{i}.mlp.{m}" for i in range(3) for m in ("c_proj", "c_fc")]
    state["edit_lrs"] = torch.arange(1.0, 7.0)  # 1..6 in the listed order (public sign: W + lr G)
    state["model_config"] = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=600)
    torch.save({"model": state}, tmp_path / "mend-public.pt")
    rates = {}
    for order in ("trained", "named_parameters"):
        ed = make_editor(
            model,
            None,
            {"layers": [0, 1, 2], "public_lr_order": order},
            None,
            0,
            editor_file=tmp_path / "mend-public.pt",
        )
        rates[order] = dict(zip(ed.modules, (-ed.net.edit_lrs.detach()).tolist()))
    assert [rates["trained"][m] for m in listed] == [1, 2, 3, 4, 5, 6]
    assert [rates["named_parameters"][m] for m in modules] == [1, 2, 3, 4, 5, 6]
    assert modules[0].endswith("c_fc") and rates["named_parameters"][modules[0]] == 1
