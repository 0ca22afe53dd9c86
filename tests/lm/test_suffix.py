"""Running only each row's changing positions against a cached prefix equals the full forward."""

from __future__ import annotations

import pytest
import torch

from editscale.editors.prompts import build_prompts
from editscale.editors.rome import lower_pass
from editscale.lm.models import (
    arch_of,
    get_module,
    load_model,
    model_attention_mask,
    upper_layers_only,
)
from editscale.lm.suffix import split_rows
from tests.conftest import ARCHS, FAMILIES

MODELS = ARCHS + tuple(sorted(FAMILIES))  # the built-in architectures, then issue 29's families

TEXTS = [
    ("Danielle Darrieux speaks French and more", 17),
    ("Paris is a big city here", 5),
    ("Paris it", 5),  # two words: two tokens or more under any tokenizer
    ("the capital city of it", 3),
]


def full_and_suffix(model, tok, layer: int, cut: torch.Tensor, end: torch.Tensor | None = None):
    """The upper blocks' output with a vector added at each row's cut: every position run (full),
    and only each row's positions from its cut to its end, packed (suffix); and the gradients of
    one loss through both."""
    enc, _ = build_prompts(tok, TEXTS)
    mask = enc["attention_mask"]
    resid, _, _ = lower_pass(model, layer, enc, torch.zeros(len(TEXTS), dtype=torch.long))
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(resid.shape[-1], generator=gen)
    rows = torch.arange(len(TEXTS))
    out = {}
    with upper_layers_only(model, layer + 1) as upper:
        for name in ("full", "suffix"):
            d = delta.clone().requires_grad_(True)
            if name == "full":
                onehot = torch.zeros(*mask.shape, 1)
                onehot[rows, cut] = 1
                hidden = upper(
                    inputs_embeds=resid + onehot * d,
                    attention_mask=model_attention_mask(model, mask, mask.shape[1], resid.dtype),
                ).last_hidden_state
                packed = split_rows(model, upper, layer + 1, resid, mask, cut, end)
                hidden = packed.take(hidden)
            else:
                h = packed.take(resid)
                onehot = torch.zeros(*h.shape[:2], 1)
                onehot[0, packed.offset] = 1
                hidden = packed.run(upper, h + onehot * d)
            hidden.square().sum().backward()
            out[name] = (hidden.detach(), d.grad)
    return out, packed


def tiny(name: str, tiny_model_factory, family_model):
    """A built-in architecture's 4-block tiny model, or a family's (3 blocks, sliding window 6)."""
    return load_model(
        family_model(name) if name in FAMILIES else tiny_model_factory(name, n_layer=4)
    )


@pytest.mark.parametrize("arch", MODELS)
def test_suffix_positions_equal_the_full_forward(tiny_model_factory, family_model, arch):
    model, tok = tiny(arch, tiny_model_factory, family_model)
    lengths = build_prompts(tok, TEXTS)[0]["attention_mask"].sum(1)
    cut = torch.stack([torch.tensor(2), lengths[1] - 1, torch.tensor(0), lengths[3] // 2])
    end = lengths.clone()
    end[0] = cut[0] + 1  # a row read at its cut only (as the KL prompt)
    end[2] = lengths[2] - 1  # a row whose last position nothing reads
    for ends in (None, end):
        out, packed = full_and_suffix(model, tok, 1, cut, ends)
        assert packed.cache is not None
        assert len(packed.rows) == int(((lengths if ends is None else ends) - cut).sum())
        torch.testing.assert_close(out["suffix"][0], out["full"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["suffix"][1], out["full"][1], rtol=1e-4, atol=1e-5)


def test_packed_indices_address_each_rows_segment(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("llama", n_layer=4))
    enc, _ = build_prompts(tok, TEXTS)
    mask = enc["attention_mask"]
    lengths = mask.sum(1)
    resid = torch.randn(*mask.shape, model.config.hidden_size)
    cut = torch.tensor([1, 0, 0, 2])
    with upper_layers_only(model, 2) as upper:
        packed = split_rows(model, upper, 2, resid, mask, cut)
    assert packed.offset.tolist() == [0, *torch.cumsum(lengths - cut, 0)[:-1].tolist()]
    for r in range(len(TEXTS)):
        at = packed.index(torch.tensor(r), cut[r] + torch.arange(int(lengths[r] - cut[r])))
        assert packed.rows[at].eq(r).all()
        assert packed.positions[at].tolist() == list(range(int(cut[r]), int(lengths[r])))
    torch.testing.assert_close(packed.take(resid)[0], resid[packed.rows, packed.positions])


def test_no_prefix_when_every_row_is_cut_at_0(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("llama", n_layer=4))
    out, packed = full_and_suffix(model, tok, 1, torch.zeros(len(TEXTS), dtype=torch.long))
    assert packed.cache is None
    torch.testing.assert_close(out["suffix"][0], out["full"][0], rtol=1e-5, atol=1e-5)


def test_a_cut_outside_a_row_is_refused(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2", n_layer=4))
    enc, _ = build_prompts(tok, TEXTS[:2])
    resid = torch.zeros(*enc["input_ids"].shape, model.config.hidden_size)
    lengths = enc["attention_mask"].sum(1)
    mask = enc["attention_mask"]
    with upper_layers_only(model, 2) as upper:
        with pytest.raises(ValueError, match="cut positions"):
            split_rows(model, upper, 2, resid, mask, torch.stack([lengths[0], lengths[1] * 0]))
        with pytest.raises(ValueError, match="cut positions"):  # an end past its row
            split_rows(model, upper, 2, resid, mask, torch.zeros(2, dtype=torch.long), lengths + 1)
        with pytest.raises(ValueError, match="cut positions"):  # nothing between cut and end
            split_rows(
                model, upper, 2, resid, mask, torch.ones(2, dtype=torch.long), lengths * 0 + 1
            )


@pytest.mark.parametrize("arch", MODELS)
def test_upper_blocks_from_the_residual_stream_equal_the_full_forward(
    tiny_model_factory, family_model, arch
):
    """The blocks above block 0 run on its output (``inputs_embeds``) give the full forward's last
    hidden state: nothing the base model does to token embeddings (Gemma's sqrt(d) scale) is done
    again, and each block keeps its own kind of attention (Gemma 2/3, Qwen2/3: ``layer_types``)."""
    model, tok = tiny(arch, tiny_model_factory, family_model)
    enc, _ = build_prompts(tok, TEXTS)
    mask = enc["attention_mask"]
    resid, _, _ = lower_pass(model, 0, enc, torch.zeros(len(TEXTS), dtype=torch.long))
    base = get_module(model, arch_of(model).base)
    attn = model_attention_mask(model, mask, mask.shape[1], resid.dtype)
    with torch.no_grad():
        full = base(input_ids=enc["input_ids"], attention_mask=attn).last_hidden_state
        with upper_layers_only(model, 1) as upper:
            ours = upper(inputs_embeds=resid, attention_mask=attn).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], full[real], rtol=1e-5, atol=1e-5)
