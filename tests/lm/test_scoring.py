"""Batched teacher-forced scoring equals a naive one-sequence-at-a-time computation; the editors'
differentiable logits run the LM head on every position."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from editscale.lm.models import (
    arch_of,
    causal_attention_mask,
    get_module,
    load_model,
    n_layers,
)
from editscale.lm.scoring import evaluate_record, logits_at, score_targets, target_token_ids
from tests.conftest import ARCHS


def naive_scores(model, tok, prompt: str, target: str) -> tuple[float, bool]:
    p = tok(prompt)["input_ids"]
    t = target_token_ids(tok, target)
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    rows = logp[len(p) - 1 : len(p) - 1 + len(t)]
    lp = rows[torch.arange(len(t)), torch.tensor(t)]
    return float(-lp.mean()), bool((rows.argmax(-1) == torch.tensor(t)).all())


PROMPTS = [
    "The capital of France is",
    "Paris",
    "Danielle Darrieux's mother tongue is the language of",
]
TARGETS = [
    [" Paris", "London Bridge tower"],
    [" is", " the city of light"],
    [" French", " English"],
]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_scores_equal_naive(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    sc = score_targets(model, tok, PROMPTS, TARGETS, batch_size=2)
    for i, p in enumerate(PROMPTS):
        for j, t in enumerate(TARGETS[i]):
            nll, ok = naive_scores(model, tok, p, t)
            assert sc.nll[i, j] == pytest.approx(nll, rel=1e-4, abs=1e-5), (arch, p, t)
            assert sc.argmax_ok[i, j] == ok


def test_record_metrics_follow_their_definitions(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    rec = {
        "case_id": 1,
        "requested_rewrite": {
            "prompt": "{} was born in",
            "subject": "Ada Lovelace",
            "target_new": {"str": "Paris"},
            "target_true": {"str": "London"},
        },
        "paraphrase_prompts": ["Ada Lovelace is a native of", "Where was Ada Lovelace born? In"],
        "neighborhood_prompts": [
            "Charles Babbage was born in",
            "Byron was born in",
            "Mary was born in",
        ],
    }
    m = evaluate_record(model, tok, rec)

    def nll(p, t):
        return naive_scores(model, tok, p, t)[0]

    rw = "Ada Lovelace was born in"
    assert m["es"] == float(nll(rw, "Paris") < nll(rw, "London"))
    ps = np.mean([nll(p, "Paris") < nll(p, "London") for p in rec["paraphrase_prompts"]])
    assert m["ps"] == pytest.approx(ps)
    ns = np.mean([nll(p, "London") < nll(p, "Paris") for p in rec["neighborhood_prompts"]])
    assert m["ns"] == pytest.approx(ns)
    mag = np.mean(
        [np.exp(-nll(p, "London")) - np.exp(-nll(p, "Paris")) for p in rec["neighborhood_prompts"]]
    )
    assert m["ns_mag"] == pytest.approx(mag, rel=1e-4, abs=1e-7)
    assert 0.0 <= m["ps_argmax"] <= 1.0


def test_out_of_memory_halves_the_batch(tiny_model_factory, monkeypatch):
    import editscale.lm.scoring as ev

    model, tok = load_model(tiny_model_factory("gpt2"))
    real = ev._score_batch
    sizes = []

    def limited(model, tok, prompts, targets):
        sizes.append(len(prompts))
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tok, prompts, targets)

    monkeypatch.setattr(ev, "_score_batch", limited)
    sc = score_targets(model, tok, PROMPTS, TARGETS, batch_size=4)
    assert sizes == [3, 2, 1, 1, 1]
    monkeypatch.setattr(ev, "_score_batch", real)
    np.testing.assert_allclose(sc.nll, score_targets(model, tok, PROMPTS, TARGETS).nll, rtol=1e-5)


def _grad_at_last_mlp(model, loss_fn) -> torch.Tensor:
    """d loss / d (the last layer's MLP output), (1, T, d)."""
    z = {}

    def hook(mod, inputs, output):
        z["z"] = torch.zeros_like(output, requires_grad=True)
        return output + z["z"]

    module = get_module(model, arch_of(model).mlp_out_path(n_layers(model) - 1))
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(model), z["z"])
    finally:
        handle.remove()
    return grad


PROMPT_IDS = [
    281,
    386,
    389,
    424,
    266,
    267,
    598,
    269,
    340,
    260,
    528,
    324,
    340,
    272,
    303,
    69,
    85,
    88,
    261,
]


def test_logits_at_runs_the_head_on_every_position_for_an_accurate_gradient(tiny_model_factory):
    """With a head as wide as SmolLM2's vocabulary (49,152), one scored row: logits_at gives the
    head-on-that-row logits, feeds the head all T positions, and its float32 gradient at the last
    MLP output is several times closer to a float64 run than that of the head on the row alone."""
    model, tok = load_model(tiny_model_factory("llama"))
    spec = arch_of(model)
    assert "." not in spec.lm_head
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(32, 49152, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.5)
    head.requires_grad_(False)
    setattr(model, spec.lm_head, head)
    model64 = copy.deepcopy(model).double()
    # fixed ids, not a text: the ratios below depend on the input (on five random 19-token inputs
    # the median ranged 1.2x-3.9x), and the tiny tokenizer's text depends on ../shared/data;
    # these are "The mother tongue of Danielle Darrieux is" under the tokenizer trained on it
    ids = torch.tensor([PROMPT_IDS])
    mask, rows, pos, tgt = torch.ones_like(ids), torch.tensor([0]), torch.tensor([4]), 40_000
    seen = []
    handle = head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    with torch.no_grad():
        full = logits_at(model, ids, mask, rows, pos)
    handle.remove()
    assert seen == [(1, ids.shape[1], 32)]  # every position went through the head

    def rows_only(m):
        base = get_module(m, spec.base)
        attn = causal_attention_mask(mask, ids.shape[1], base.dtype)
        hidden = base(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        return get_module(m, spec.lm_head)(hidden[rows, pos])

    with torch.no_grad():
        torch.testing.assert_close(full, rows_only(model), rtol=1e-5, atol=1e-5)

    def nll(logits_fn, target):
        return lambda m: -logits_fn(m).log_softmax(-1)[0, target]

    # One target's ratio is noisy (2.9x-7.9x over 15 seeds and targets on an Intel Xeon VM; one
    # target alone, the former 5x bound, failed there): five targets, each better, median > 3.5x
    # (4.4x on that VM). The head on the row alone gives 1x.
    def full_head(m):
        return logits_at(m, ids, mask, rows, pos)

    ratios = []
    for target in (tgt, 100, 7_000, 25_000, 49_000):
        ref = _grad_at_last_mlp(model64, nll(full_head, target))
        err = {}
        for name, fn in (("full", full_head), ("rows", rows_only)):
            grad = _grad_at_last_mlp(model, nll(fn, target)).double()
            err[name] = float((grad - ref.double()).norm() / ref.double().norm())
        assert err["full"] < 5e-6 and err["full"] * 1.5 < err["rows"], (target, err)
        ratios.append(err["rows"] / err["full"])
    assert sorted(ratios)[2] > 3.5, ratios
