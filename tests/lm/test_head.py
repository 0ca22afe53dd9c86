"""The LM head's product on a few rows in vocabulary slices (:mod:`editscale.lm.head`): the logits
and the input's gradient of the whole product, and the whole product wherever slicing was not
measured to help."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editscale.lm.head import SLICED_ROWS, SlicedHead, sliced
from editscale.lm.models import SoftCappedHead, arch_of, get_module, load_model, output_head


def _linear(bias: bool, vocab: int = 1000, d: int = 24) -> nn.Linear:
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(d, vocab, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(vocab, d, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(vocab, generator=gen))
    lin.requires_grad_(False)
    return lin


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [SLICED_ROWS.start, 7, 13, SLICED_ROWS.stop - 1])
def test_sliced_product_gives_the_whole_products_logits_and_input_gradient(bias, rows):
    """1,000 vocabulary rows in slices of 64 (the last one 40 rows)."""
    lin = _linear(bias)
    head = SlicedHead(lin, size=64)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 24, generator=gen)
    up = torch.randn(rows, 1000, generator=gen)
    assert head.takes_slices(x)
    xs, xw = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, whole = head(xs), lin(xw)
    torch.testing.assert_close(ours, whole, rtol=1e-6, atol=1e-6)
    (ours * up).sum().backward()
    (whole * up).sum().backward()
    torch.testing.assert_close(xs.grad, xw.grad, rtol=1e-6, atol=1e-6)


def test_the_whole_product_where_slicing_was_not_measured_to_help():
    lin = _linear(False)
    head = SlicedHead(lin, size=64)
    few = torch.randn(5, 24)
    assert head.takes_slices(few)
    assert not head.takes_slices(torch.randn(16, 24))  # MKL's kernel for 16 rows and more
    assert not head.takes_slices(torch.randn(3, 24))  # fast whole below 4 rows
    assert not head.takes_slices(torch.randn(1, 3, 24))  # a batch of sequences
    assert not head.takes_slices(few.double())
    lin.weight.requires_grad_(True)  # a head being trained keeps autograd's own product
    assert not head.takes_slices(few)
    with torch.no_grad():
        assert head.takes_slices(few)
    with pytest.raises(ValueError, match="slice size"):
        SlicedHead(lin, size=0)


def test_output_head_slices_the_linear_inside_a_soft_cap(family_model):
    """Gemma 2's soft-capped head: the cap applies to the sliced product, and a few rows give the
    logits of the model's own forward."""
    model, tok = load_model(family_model("gemma2"))
    model.config.final_logit_softcapping = 0.5
    head = output_head(model, few_rows=True)
    assert isinstance(head, SoftCappedHead) and isinstance(head.head, SlicedHead)
    assert not isinstance(output_head(model), SlicedHead)
    assert sliced(head) is head  # only an nn.Linear is wrapped
    ids = tok(["Paris is the capital of"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = get_module(model, arch_of(model).base)(input_ids=ids).last_hidden_state[0]
        own = model(input_ids=ids).logits[0]
    assert head.head.takes_slices(hidden)
    torch.testing.assert_close(head(hidden), own, rtol=1e-5, atol=1e-5)
