"""The v* search with its prefix cache gives the reference path's updates (issue 26).

Every architecture of the model table, 20 sequential ROME edits and MEMIT steps of several
records, a tokenizer with and without BOS, right padding, and a subject at position 0. SmolLM2
(slow): a few sequential edits of ROME and MEMIT in float32; ``benchmarks/bench_speed.py``
compares twenty.

The tiny models run in float64. Their searches are ill-conditioned (random weights: the MLP
output at the subject has norm ~0.03, so the weight-decay term dominates the loss and Adam
divides near-zero gradients by their own size), which turns float32 rounding, any change of
summation order, into update differences of 4e-6 to 1e-2 between the two paths (measured on
these models, 20 ROME edits per architecture). In float64 the two paths give the same float32
delta at every step (measured: identical updates), which is what these tests check, to 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch

from editscale.data.counterfact import load_counterfact, unique_subject_records
from editscale.editors.base import apply_updates
from editscale.editors.memit import make_editor as make_memit_editor
from editscale.editors.prompts import build_prompts
from editscale.editors.rome import make_editor as make_rome_editor
from editscale.editors.search_check import SCORES, compare_search_paths
from editscale.lm import head as lm_head
from editscale.lm.models import (
    arch_of,
    build_scratch_model,
    edit_parameter,
    load_model,
    train_bpe_tokenizer,
)
from tests.conftest import ARCHS, _tokenizer_texts, synthetic_records
from tests.editors.test_memit import d_in
from tests.editors.test_rome import random_spd

TOLERANCE = 1e-5
TEMPLATES = ["{}", "The cat sat on the mat. {}", "Because of it. {}", "A. {}"]
# a subject that is one token of the tiny tokenizers (a word at the start of a text is tokenised
# without a leading space), at the very start of the bare prompt
FIRST = {
    "case_id": 900,
    "requested_rewrite": {
        "prompt": "{} is located in",
        "subject": "on",
        "target_new": {"str": "London"},
        "target_true": {"str": "Berlin"},
    },
    "paraphrase_prompts": ["Someone said. on is located in"],
    "neighborhood_prompts": ["capital is located in"],
}


def records(n: int) -> list[dict]:
    return [FIRST] + synthetic_records(n - 1)


@pytest.fixture(scope="module")
def bos_llama(tmp_path_factory):
    """A tiny Llama whose tokenizer puts BOS before every text, as Llama-family tokenizers do."""
    tok = train_bpe_tokenizer(_tokenizer_texts(), vocab_size=600, add_bos=True)
    dest = tmp_path_factory.mktemp("bos-llama")
    build_scratch_model("llama", tok, dest, n_layer=4, d_model=32, n_head=4, seed=1)
    return dest


def check(rows: list[dict], n_steps: int) -> None:
    assert len(rows) == n_steps
    for row in rows:
        assert row["update_rel"] <= TOLERANCE, row
        assert row["target_rel"] <= TOLERANCE, row
        assert row["steps_new"] == row["steps_old"], row
        for key in SCORES:
            assert row[f"{key}_new"] == row[f"{key}_old"], (key, row)


def float64_model(folder):
    model, tok = load_model(folder)
    return model.double(), tok


def rome_editor(model, tok, layer=1):
    hp = {"layer": layer, "v_num_grad_steps": 20, "context_template_lengths": [[4, 3]]}
    return make_rome_editor(
        model,
        tok,
        hp,
        random_spd(d_in(model, layer)),
        seed=3,
        state={"context_templates": TEMPLATES},
    )


def memit_editor(model, tok, layers=(1, 2)):
    hp = {"layers": list(layers), "v_num_grad_steps": 12, "mom2_update_weight": 100.0}
    c = {layer: random_spd(d_in(model, layer), seed=layer) for layer in layers}
    return make_memit_editor(model, tok, hp, c, seed=3, state={"context_templates": TEMPLATES})


def test_the_tests_cover_padding_and_a_subject_at_position_0(tiny_model_factory):
    _, tok = load_model(tiny_model_factory("llama", n_layer=4))
    rw = FIRST["requested_rewrite"]
    texts = [(t.format(rw["prompt"]).replace("{}", rw["subject"]), 0) for t in TEMPLATES]
    texts = [(x, x.index(rw["subject"]) + len(rw["subject"])) for x, _ in texts]
    enc, lookup = build_prompts(tok, texts)
    assert lookup[0] == 0  # the bare prompt: the subject is its first token
    assert len(set(enc["attention_mask"].sum(1).tolist())) > 1  # rows of several lengths: padding


@pytest.mark.parametrize("arch", ARCHS)
def test_rome_20_sequential_edits_match_the_reference_path(tiny_model_factory, arch):
    model, tok = float64_model(tiny_model_factory(arch, n_layer=4))
    check(compare_search_paths(rome_editor(model, tok), [[r] for r in records(20)]), 20)


def test_rome_with_bos_matches_the_reference_path(bos_llama):
    model, tok = float64_model(bos_llama)
    assert tok("on")["input_ids"][0] == tok.bos_token_id
    check(compare_search_paths(rome_editor(model, tok, layer=2), [[r] for r in records(20)]), 20)


@pytest.mark.parametrize("arch", ARCHS)
def test_memit_batches_match_the_reference_path(tiny_model_factory, arch):
    """Steps of 1 and of 3 records (each record's search is its own batch of prompts)."""
    model, tok = float64_model(tiny_model_factory(arch, n_layer=4))
    recs = records(10)
    steps = [[recs[0]], recs[1:4], recs[4:7], [recs[7]], recs[8:10]]
    rows = compare_search_paths(memit_editor(model, tok), steps, target_key="z")
    check(rows, len(steps))


def test_the_head_in_slices_gives_the_whole_heads_updates(tiny_model_factory, monkeypatch):
    """float32: the packed search reads the head at 4 m + 1 rows, here in slices of 64 of the
    tiny vocabulary (:mod:`editscale.lm.head`); the whole head's product gives the same updates,
    edit after edit."""
    model, tok = load_model(tiny_model_factory("llama", n_layer=4))
    editor = rome_editor(model, tok)
    monkeypatch.setattr(lm_head, "SLICE", 64)
    sliced_rows = []
    takes_slices = lm_head.SlicedHead.takes_slices

    def spy(self, x):
        out = takes_slices(self, x)
        sliced_rows.append(x.shape[0] if out else None)
        return out

    monkeypatch.setattr(lm_head.SlicedHead, "takes_slices", spy)
    assert len(tok) > 2 * 64
    for rec in records(5):
        sliced = editor.compute(rec)
        with monkeypatch.context() as m:
            m.setattr(lm_head, "SLICED_ROWS", range(0))
            whole = editor.compute(rec)
        assert sliced.info["v_steps"] == whole.info["v_steps"]
        for a, b in zip(sliced.updates, whole.updates, strict=True):
            torch.testing.assert_close(a.delta_out_in(), b.delta_out_in(), rtol=1e-6, atol=1e-9)
        apply_updates(model, sliced.updates, arch_of(model))
    assert sliced_rows and all(rows is not None for rows in sliced_rows[:5])


def test_the_exact_reference_is_computed_and_kept_in_step(tiny_model_factory):
    """compare_search_paths(exact=...): each step is computed on the copy by the reference path
    and each path is compared with it; the copy gets the cached path's update. A copy in the same
    dtype makes the reference path's distance exactly 0 and the cached path's its difference."""
    model, tok = float64_model(tiny_model_factory("llama", n_layer=4))
    twin = copy.deepcopy(model)
    name = arch_of(model).mlp_out_path(1)
    before = edit_parameter(model, name).detach().clone()
    rows = compare_search_paths(
        rome_editor(model, tok), [[r] for r in records(3)], exact=rome_editor(twin, tok)
    )
    assert len(rows) == 3
    for row in rows:
        assert row["exact_rel_old"] == 0.0
        assert row["exact_rel_new"] == row["update_rel"]
    after = edit_parameter(model, name)
    assert not torch.equal(after, before)  # the steps edited the model
    assert torch.equal(edit_parameter(twin, name), after)  # and the copy the same way


SMOLLM2_TEMPLATES = [
    "{}",
    "The first time I saw it. {}",
    "In the middle of the night. {}",
    "She said that. {}",
    "This is a picture of. {}",
]


@pytest.mark.slow
def test_smollm2_float32_edits_match_the_reference_path(smollm2_folder, counterfact_path):
    """SmolLM2-135M in float32 (as the workflow runs it): 3 sequential ROME edits at layer 6 and
    two MEMIT steps on layers 4-6 (1 record, then 2), within 1e-5 of the reference path, the same
    steps and ES/PS/NS. About 2.5 minutes on 2 cores."""
    recs = unique_subject_records(load_counterfact(counterfact_path))[:6]
    model, tok = load_model(smollm2_folder)
    hp = {"layer": 6, "mom2_adjustment": False, "context_template_lengths": [[5, 4]]}
    rome = make_rome_editor(
        model, tok, hp, None, seed=0, state={"context_templates": SMOLLM2_TEMPLATES}
    )
    check(compare_search_paths(rome, [[r] for r in recs[:3]]), 3)
    layers = (4, 5, 6)
    c = {layer: random_spd(d_in(model, layer), seed=layer) for layer in layers}
    memit = make_memit_editor(
        model,
        tok,
        {"layers": list(layers), "mom2_update_weight": 15000.0},
        c,
        seed=0,
        state={"context_templates": SMOLLM2_TEMPLATES},
    )
    check(compare_search_paths(memit, [recs[3:4], recs[4:6]], target_key="z"), 2)
