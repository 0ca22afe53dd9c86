"""Every editor on every model family of issue 29 (tiny models built from their configs): one edit
changes the matrices the editor names and nothing else, ROME's update maps its key onto its
target, and ROME's target search adds its vector to the MLP output, through the norm that follows
the MLP where there is one (Gemma 2/3, OLMo 2)."""

from __future__ import annotations

import pytest
import torch

from editscale.editors import EDITORS, load_editor_module
from editscale.editors.base import apply_updates
from editscale.editors.mend import MendNetwork, edited_module_paths, module_shape, save_editor
from editscale.editors.prompts import build_prompts, template_texts
from editscale.editors.rome import lower_pass, mlp_output_injection
from editscale.lm.models import (
    arch_of,
    edit_parameter,
    get_module,
    load_model,
    model_identity,
    weight_out_in,
)
from editscale.lm.scoring import target_token_ids
from tests.conftest import FAMILIES, synthetic_records
from tests.editors.test_rome import random_spd

TEMPLATES = ["{}", "The cat sat on the mat. {}", "Because of it. {}"]
# per method: (editor, hparams on a 3-block model, the (matrix, layer) pairs its edit changes)
METHODS = {
    "rome": ("rome", {"layer": 1, "v_num_grad_steps": 2}, [("mlp_out", 1)]),
    "rrome": (
        "rome",
        {"layer": 1, "v_num_grad_steps": 2, "key_mode": "homogeneous"},
        [("mlp_out", 1)],
    ),
    "memit": ("memit", {"layers": [0, 1], "v_num_grad_steps": 2}, [("mlp_out", 0), ("mlp_out", 1)]),
    "emmet": ("emmet", {"layers": [1], "v_num_grad_steps": 2}, [("mlp_out", 1)]),
    "alphaedit": (
        "alphaedit",
        {"layers": [0, 1], "v_num_grad_steps": 2, "nullspace_threshold": 1.0},
        [("mlp_out", 0), ("mlp_out", 1)],
    ),
    "encore": ("encore", {"layers": [1], "v_num_grad_steps": 2}, [("mlp_out", 1)]),
    "ftc": ("ftc", {"layer": 2, "num_steps": 3}, [("mlp_out", 2)]),
    "mend": (
        "mend",
        {"n_last_layers": 2},
        [("mlp_in", 1), ("mlp_out", 1), ("mlp_in", 2), ("mlp_out", 2)],
    ),
}
RECORD = synthetic_records(2)[1]


def make(method: str, folder, tmp_path):
    """(model, editor) of ``method`` on the tiny model in ``folder``, as the runner builds it."""
    model, tok = load_model(folder)
    spec = arch_of(model)
    editor, hp, _ = METHODS[method]
    layers = hp.get("layers", [hp.get("layer", 0)])
    width = {
        x: weight_out_in(edit_parameter(model, spec.mlp_out_path(x)), spec).shape[1] for x in layers
    }
    second = {x: random_spd(width[x], seed=x) for x in layers}
    extra = {}
    if EDITORS[editor].needs_editor_file:  # an untrained MEND network is a valid editor file
        modules = edited_module_paths(model, [1, 2])
        path = tmp_path / "mend.safetensors"
        shapes = {m: module_shape(model, m) for m in modules}
        save_editor(path, MendNetwork(modules, shapes, rank=4), model_identity(folder))
        extra = {"editor_file": path, "identity": model_identity(folder)}
    state = {"context_templates": TEMPLATES}
    made = load_editor_module(editor).make_editor(
        model,
        tok,
        dict(hp),
        second if EDITORS[editor].needs_covariance else None,
        3,
        state,
        **extra,
    )
    return model, made


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_edit_changes_the_named_matrices_only(family, method, family_model, tmp_path):
    model, editor = make(method, family_model(family), tmp_path)
    spec = arch_of(model)
    paths = {"mlp_in": spec.mlp_in_path, "mlp_out": spec.mlp_out_path}
    expected = [paths[kind](layer) for kind, layer in METHODS[method][2]]
    assert list(editor.edited_modules) == expected
    before = weights(model)
    result = editor.compute_batch([RECORD]) if EDITORS[METHODS[method][0]].batched else None
    result = result or editor.compute(RECORD)
    after_compute = weights(model)
    assert all(torch.equal(after_compute[k], w) for k, w in before.items())
    apply_updates(model, result.updates, spec)
    after = weights(model)
    changed = sorted(k for k, w in before.items() if not torch.equal(after[k], w))
    assert changed == sorted(f"{m}.weight" for m in expected)
    for update in result.updates:  # (out, in) updates of each matrix's own shape
        w = weight_out_in(edit_parameter(model, update.module), spec)
        assert update.delta_out_in().shape == w.shape
    if method.endswith("rome"):  # W' k = v*: the edited matrix maps the key onto the target
        module = get_module(model, expected[0])
        with torch.no_grad():
            out = module(result.vectors["k_used"][None].to(module.weight.dtype))[0]
        torch.testing.assert_close(out, result.vectors["target"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_target_search_changes_the_mlp_output(family, family_model):
    """The residual stream after block 1 when a vector is added to the block's MLP output at
    each row's subject token (a hook, the model's own forward) is the stream without it plus
    :func:`mlp_output_injection` of the vector, there and nowhere else."""
    model, tok = load_model(family_model(family))
    spec = arch_of(model)
    texts = [(t.format("Danielle Darrieux"), t.index("{}") + 17) for t in TEMPLATES]
    enc, lookup = build_prompts(tok, texts)
    resid, _, mlp_outs = lower_pass(model, 1, enc, lookup)
    delta = 3 * torch.randn(mlp_outs.shape[1], generator=torch.Generator().manual_seed(0))
    rows = torch.arange(len(texts))

    def add_delta(module, inputs, output):
        output = output.clone()
        output[rows, lookup] += delta.to(output.dtype)
        return output

    handle = get_module(model, spec.mlp_out_path(1)).register_forward_hook(add_delta)
    try:
        moved, _, _ = lower_pass(model, 1, enc, lookup)
    finally:
        handle.remove()
    with torch.no_grad():
        shift = mlp_output_injection(model, 1, mlp_outs)(delta)
    expected = resid.clone()
    expected[rows, lookup] += shift
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-5)
    if spec.mlp_post_norm is not None:  # the norm makes it differ from adding the vector itself
        assert float((shift - delta).norm()) > 0.1 * float(delta.norm())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rome_search_loss_is_the_models_own_with_the_mlp_output_moved(
    family, family_model, tmp_path
):
    """The target NLL ROME's search ends with (``v_nll``: upper blocks only, the prefix cache, the
    package's masks and head) is the model's own forward's, with the MLP output of the edited
    block moved by the search's vector at each prompt's subject token."""
    model, editor = make("rome", family_model(family), tmp_path)
    tok, rw = editor.tok, RECORD["requested_rewrite"]
    result = editor.compute(RECORD)
    target = target_token_ids(tok, rw["target_new"]["str"])
    texts = template_texts(TEMPLATES, rw["prompt"], rw["subject"], tok.decode(target[:-1]))
    enc, lookup = build_prompts(tok, texts)
    _, _, mlp_outs = lower_pass(model, 1, enc, lookup)
    delta = result.vectors["target"] - mlp_outs[0]
    rows = torch.arange(len(texts))

    def add_delta(module, inputs, output):
        output = output.clone()
        output[rows, lookup] += delta.to(output.dtype)
        return output

    handle = get_module(model, arch_of(model).mlp_out_path(1)).register_forward_hook(add_delta)
    try:
        with torch.no_grad():
            logp = model(**enc).logits.float().log_softmax(-1)
    finally:
        handle.remove()
    m = len(target)
    start = enc["attention_mask"].sum(1) - m
    pos = start[:, None] + torch.arange(m)[None]
    nll = -logp[rows[:, None], pos].gather(
        -1, torch.tensor(target)[None, :, None].expand(len(texts), m, 1)
    )
    assert float(nll.mean()) == pytest.approx(result.info["v_nll"], rel=1e-4, abs=1e-5)
