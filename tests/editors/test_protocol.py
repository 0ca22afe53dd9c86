"""Every registered editor is an :class:`editscale.editors.base.Editor` with the capabilities its
:class:`EditorInfo` declares; an editor module outside the package is found by its name."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from editscale.editors import (
    BUILTIN_EDITORS,
    EDITORS,
    EditorInfo,
    declared_editor,
    editor_info,
    load_editor_module,
)
from editscale.editors.base import (
    UPDATE_KINDS,
    BatchEditor,
    Editor,
    EditorBase,
    check_editor,
    edited_tensor_names,
)
from editscale.editors.hparams import RomeHParams
from editscale.editors.mend import MendNetwork, edited_module_paths, module_shape, save_editor
from editscale.lm.models import arch_of, edit_parameter, load_model, model_identity
from tests.conftest import synthetic_records
from tests.editors.test_rome import random_spd

# per editor: hparams on a 2-layer model, and extra hparams of a variant with optional capabilities
HPARAMS = {
    "rome": {"layer": 1, "v_num_grad_steps": 3},
    "memit": {"layers": [0, 1], "v_num_grad_steps": 3},
    "emmet": {"layers": [1], "v_num_grad_steps": 3},
    "alphaedit": {"layers": [0, 1], "v_num_grad_steps": 3},
    "encore": {"layers": [1], "v_num_grad_steps": 3},
    "ftc": {"layer": 1, "num_steps": 2, "include_bias": True},
    "mend": {"n_last_layers": 2},
}
RECORDS = synthetic_records(2)


def build(name: str, model_dir, tmp_path):
    """The editor ``name`` on the tiny model of ``model_dir``, as the runner builds it."""
    model, tok = load_model(model_dir)
    spec = arch_of(model)
    hp = HPARAMS[name]
    layers = hp.get("layers", [hp.get("layer", 0)])
    dim = {x: edit_parameter(model, spec.mlp_out_path(x)).shape[0] for x in layers}  # GPT-2: in
    c = {x: random_spd(dim[x], seed=x) for x in layers} if EDITORS[name].needs_covariance else None
    extra = {}
    if EDITORS[name].needs_editor_file:  # an untrained MEND network is a valid editor file
        modules = edited_module_paths(model, [0, 1])
        shapes = {m: module_shape(model, m) for m in modules}
        path = tmp_path / "mend.safetensors"
        save_editor(path, MendNetwork(modules, shapes, rank=4), model_identity(model_dir))
        extra = {"editor_file": path, "identity": model_identity(model_dir)}
    module = load_editor_module(name)
    return model, module.make_editor(model, tok, dict(hp), c, 3, **extra)


def test_every_builtin_editor_has_hparams_to_test():
    assert sorted(HPARAMS) == sorted(BUILTIN_EDITORS) == sorted(EDITORS)


@pytest.mark.parametrize("name", sorted(BUILTIN_EDITORS))
def test_each_registered_editor_conforms_to_the_protocol(name, tiny_model_factory, tmp_path):
    info = editor_info(name)
    model, ed = build(name, tiny_model_factory("gpt2", n_layer=2), tmp_path)
    assert isinstance(ed, Editor) and check_editor(ed, batched=info.batched) is ed
    assert isinstance(ed, BatchEditor) == info.batched
    assert ed.update_kind in UPDATE_KINDS and ed.name == name
    assert set(ed.edited_biases) <= set(ed.edited_modules)
    assert all(isinstance(k, str) and int(v) > 0 for k, v in ed.carry_dims.items())
    assert isinstance(ed.state_strings(), dict)
    before = {k: edit_parameter(model, k).detach().clone() for k in edited_tensor_names(ed)}
    res = ed.compute(RECORDS[0]) if not info.batched else ed.compute_batch(RECORDS)
    # compute leaves the model as it was; the updates touch the declared tensors only
    assert all(torch.equal(edit_parameter(model, k), w) for k, w in before.items())
    assert [u.module for u in res.updates] == list(ed.edited_modules)
    assert {u.kind for u in res.updates} == {ed.update_kind}
    assert set(ed.info_names) <= set(res.info)
    assert {u.module for u in res.updates if u.bias is not None} == set(ed.edited_biases)
    assert {k: v.shape[1] for k, v in res.carry.items()} == dict(ed.carry_dims)
    if ed.carry_dims:
        ed.commit(res.carry)
    else:
        ed.commit({})  # nothing carried: accepted and ignored


def test_declared_capabilities_match_the_editors_that_have_them(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("gpt2", n_layer=2)
    carries = {n for n in BUILTIN_EDITORS if build(n, model_dir, tmp_path)[1].carry_dims}
    assert carries == {"alphaedit", "encore"}
    _, ftc = build("ftc", model_dir, tmp_path)
    assert ftc.edited_biases == [ftc.edited_modules[0]]
    with pytest.raises(ValueError, match="carries nothing"):
        ftc.commit({"keys_0": torch.zeros(1, 3)})


class _NotAnEditor:
    name = "broken"
    update_kind = "rank_one"

    def compute(self, record):
        raise AssertionError


class _Sparse(EditorBase):
    name, update_kind, info_names, edited_modules = "sparse", "sparse", (), ["m"]

    def state_strings(self):
        return {}

    def compute(self, record):
        raise AssertionError


def test_check_editor_names_what_an_editor_lacks():
    with pytest.raises(TypeError, match=r"lacks \['info_names', 'edited_biases', 'carry_dims'"):
        check_editor(_NotAnEditor())
    with pytest.raises(TypeError, match="update_kind 'sparse'"):
        check_editor(_Sparse())
    with pytest.raises(TypeError, match=r"lacks \['compute_batch'\]"):
        check_editor(type("Rankless", (_Sparse,), {"update_kind": "rank_one"})(), batched=True)


def test_an_editor_module_outside_the_package_is_found_by_its_name(tmp_path, monkeypatch):
    """``methods.<m>.editor`` may name an importable module declaring ``EDITOR_INFO``; the names
    the table iterates stay the built-in ones, and an absent module is an unknown editor."""
    (tmp_path / "outside_pkg").mkdir()
    (tmp_path / "outside_pkg" / "__init__.py").write_text("")
    (tmp_path / "outside_pkg" / "declared.py").write_text(
        textwrap.dedent(
            """
            from editscale.editors import EditorInfo
            from editscale.editors.hparams import RomeHParams

            EDITOR_INFO = EditorInfo(
                module="editscale.editors.rome", needs_covariance=True, hparams=RomeHParams
            )
            """
        )
    )
    (tmp_path / "outside_pkg" / "undeclared.py").write_text("EDITOR_INFO = 3\n")
    (tmp_path / "outside_pkg" / "untyped.py").write_text(
        "from editscale.editors import EditorInfo\n"
        "EDITOR_INFO = EditorInfo(module='x', needs_covariance=False)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        info = EDITORS["outside_pkg.declared"]
        assert isinstance(info, EditorInfo) and info.hparams is RomeHParams
        assert editor_info("outside_pkg.declared") is info
        assert "outside_pkg.declared" in EDITORS and "outside_pkg.declared" not in list(EDITORS)
        assert load_editor_module("outside_pkg.declared").__name__ == "editscale.editors.rome"
        assert "outside_pkg.absent" not in EDITORS and "rom" not in EDITORS and "a b" not in EDITORS
        with pytest.raises(KeyError, match="unknown editor 'outside_pkg.absent'"):
            editor_info("outside_pkg.absent")
        with pytest.raises(TypeError, match="declares no EDITOR_INFO"):
            declared_editor("outside_pkg.undeclared")
        with pytest.raises(TypeError, match="names no hparams dataclass"):
            declared_editor("outside_pkg.untyped")
    finally:
        for mod in [m for m in sys.modules if m.startswith("outside_pkg")]:
            del sys.modules[mod]
