"""ROME's defining properties, on tiny models of each architecture."""

from __future__ import annotations

import pytest
import torch

from editscale.editors.base import apply_updates
from editscale.editors.prompts import build_prompts, generate_context_templates
from editscale.editors.rome import RomeEditor, RomeHParams, lower_pass, make_editor
from editscale.lm.models import arch_of, get_module, load_model, upper_layers_only
from tests.conftest import ARCHS

RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
        "target_true": {"str": "French"},
    },
    "paraphrase_prompts": [],
    "neighborhood_prompts": [],
}
RECORD2 = {
    "case_id": 8,
    "requested_rewrite": {
        "prompt": "{} is a citizen of",
        "subject": "Toko Yasuda",
        "target_new": {"str": "Japan"},
        "target_true": {"str": "Canada"},
    },
    "paraphrase_prompts": [],
    "neighborhood_prompts": [],
}


def random_spd(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (3 * d) + 0.1 * torch.eye(d, dtype=torch.float64)


def editor_for(model, tok, layer=1, key_mode="original", templates=None, steps=20, **extra):
    spec = arch_of(model)
    d_in = get_module(model, spec.mlp_out_path(layer)).weight.shape[0 if spec.conv1d else 1]
    hp = {
        "layer": layer,
        "key_mode": key_mode,
        "v_num_grad_steps": steps,
        "context_template_lengths": [[4, 3], [6, 3]],
        **extra,
    }
    state = {"context_templates": templates} if templates else None
    return make_editor(model, tok, hp, random_spd(d_in), seed=3, state=state)


def mlp_out(model, layer, k):
    mod = get_module(model, arch_of(model).mlp_out_path(layer))
    with torch.no_grad():
        return mod(k[None].to(mod.weight.dtype)).float()[0]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key_mode", ["original", "homogeneous"])
def test_edited_matrix_maps_key_to_target(tiny_model_factory, arch, key_mode):
    model, tok = load_model(tiny_model_factory(arch))
    ed = editor_for(model, tok, key_mode=key_mode)
    res = ed.compute(RECORD)
    apply_updates(model, res.updates, arch_of(model))
    k = res.vectors["k_bare"] if key_mode == "original" else res.vectors["k_star"]
    out = mlp_out(model, 1, k)
    torch.testing.assert_close(out, res.vectors["target"], rtol=1e-4, atol=1e-4)
    # u is C^-1 k*, normalised
    c_inv = ed.c_inv.double()
    u_expected = c_inv @ res.vectors["k_star"].double()
    cos = torch.nn.functional.cosine_similarity(u_expected, res.updates[0].u.double(), dim=0)
    assert cos > 1 - 1e-6
    assert res.info["delta_norm"] <= 4.0 * res.info["target_init_norm"] * (1 + 1e-5)


def test_second_edit_leaves_c_inverse_orthogonal_directions_unchanged(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    ed = editor_for(model, tok)
    r1 = ed.compute(RECORD)
    apply_updates(model, r1.updates, arch_of(model))
    k1 = r1.vectors["k_bare"]
    out1 = mlp_out(model, 1, k1)
    r2 = ed.compute(RECORD2)  # computing does not modify the model
    u2, v2 = r2.updates[0].u, r2.updates[0].v
    k_perp = k1 - torch.dot(u2, k1) * u2  # u2 = C^-1 k2* / ||C^-1 k2*||: unit vector
    perp_before = mlp_out(model, 1, k_perp)
    apply_updates(model, r2.updates, arch_of(model))
    # the first key's output moves only along v2, by (u2 . k1) = k1^T C^-1 k2* / ||C^-1 k2*||
    torch.testing.assert_close(
        mlp_out(model, 1, k1) - out1, v2 * torch.dot(u2, k1), rtol=1e-3, atol=1e-4
    )
    # its component that C^-1 makes orthogonal to the second key is not changed at all
    torch.testing.assert_close(mlp_out(model, 1, k_perp), perp_before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_upper_layers_equal_full_forward_with_injected_delta(tiny_model_factory, arch):
    """Running blocks above the edited one from the cached residual == the full model with a
    hook."""
    model, tok = load_model(tiny_model_factory(arch, n_layer=4))
    spec = arch_of(model)
    layer = 1
    enc, lookup = build_prompts(
        tok, [("Danielle Darrieux speaks", 17), ("Paris is a big city here", 5)]
    )
    delta = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(2)

    def add_delta(mod, inp, out):
        out = out.clone()
        out[rows, lookup] += delta
        return out

    h = get_module(model, spec.mlp_path(layer)).register_forward_hook(add_delta)
    with torch.no_grad():
        full = get_module(model, spec.base)(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
    h.remove()
    editor_for(model, tok, layer=layer, templates=["{}"])
    resid, _, _ = lower_pass(model, layer, enc, lookup)
    onehot = torch.zeros(*enc["input_ids"].shape, 1)
    onehot[rows, lookup] = 1
    with torch.no_grad(), upper_layers_only(model, layer + 1) as upper:
        sliced = upper(
            inputs_embeds=resid + onehot * delta, attention_mask=enc["attention_mask"]
        ).last_hidden_state
    m = enc["attention_mask"].bool()
    torch.testing.assert_close(sliced[m], full[m], rtol=1e-4, atol=1e-5)
    # the model is whole again afterwards
    assert len(get_module(model, spec.layers)) == 4


def test_context_templates_are_seeded(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    a = generate_context_templates(model, tok, [[5, 3], [10, 2]], top_k=5, seed=11)
    b = generate_context_templates(model, tok, [[5, 3], [10, 2]], top_k=5, seed=11)
    c = generate_context_templates(model, tok, [[5, 3], [10, 2]], top_k=5, seed=12)
    assert a == b and a != c
    assert a[0] == "{}" and len(a) == 6 and all(t.endswith(". {}") for t in a[1:])


def test_optimisation_lowers_the_new_target_nll(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    # without the weight decay: a random tiny model's next-token distribution is nearly uniform
    # (NLL ~ ln 600 = 6.40) and barely responds to delta, while its MLP output (norm ~0.03) makes
    # the decay term (~ ||delta|| / 0.03^2) large, so with it whether the NLL falls depends on the
    # tokenizer's training text (it rose by 2.5e-4 with the fallback text of a clone without
    # ../shared/data)
    res = editor_for(model, tok, v_weight_decay=0.0).compute(RECORD)
    assert res.info["v_nll"] < res.info["v_nll_init"]
    assert 1 <= res.info["v_steps"] <= 20


def test_hparams_reject_unknown_keys_and_bad_key_mode():
    with pytest.raises(ValueError, match="unknown ROME hyperparameters"):
        RomeHParams.from_dict({"layer": 1, "lr": 0.1})
    with pytest.raises(ValueError, match="key_mode"):
        RomeHParams(layer=1, key_mode="sideways")


def test_layer_out_of_range_is_refused(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    with pytest.raises(ValueError, match="outside the model"):
        RomeEditor(model, tok, RomeHParams(layer=9), torch.eye(128, dtype=torch.float64), ["{}"])
