"""Batched teacher-forced scoring equals a naive one-sequence-at-a-time computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editscale.lm.models import load_model
from editscale.lm.scoring import evaluate_record, score_targets, target_token_ids
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
