"""Collapse measures (editscale.evaluation.collapse): ROME's weighted n-gram entropy on
hand-computed texts, held-out perplexity on a tiny model against a direct per-document computation,
the fixed probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editscale.evaluation import collapse
from editscale.lm.models import load_model

LOG2_3 = math.log2(3)


def test_word_tokens_split_words_and_punctuation():
    assert collapse.word_tokens("Paris is, in fact, big.") == [
        "Paris",
        "is",
        ",",
        "in",
        "fact",
        ",",
        "big",
        ".",
    ]
    assert collapse.word_tokens("  ") == []


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> p = 2/3, 1/3; trigrams aba, bab -> 1/2, 1/2
    toks = ["a", "b", "a", "b"]
    assert collapse.ngram_entropy(toks, 2) == pytest.approx(
        LOG2_3 - 2 / 3
    )  # -(2/3 log2 2/3 + 1/3 log2 1/3)
    assert collapse.ngram_entropy(toks, 3) == pytest.approx(1.0)
    assert collapse.ngram_entropy(toks, 5) == 0.0  # no 5-gram
    assert collapse.ngram_entropy(["x"] * 9, 2) == 0.0


def test_text_entropy_hand_computed():
    # one word repeated: every n-gram is the same -> 0
    assert collapse.text_entropy("the the the the the the") == 0.0
    # four distinct words: H2 = log2 3 (three bigrams), H3 = 1 (two trigrams): (2/3 H2 + 4/3 H3) / 2
    assert collapse.text_entropy("a b c d") == pytest.approx((2 / 3 * LOG2_3 + 4 / 3 * 1.0) / 2)
    assert collapse.text_entropy("a b a b") == pytest.approx((2 / 3 * (LOG2_3 - 2 / 3) + 4 / 3) / 2)
    # punctuation is a word: "a, a, a" = a , a , a -> bigrams (a ,) x2 (, a) x2 -> H2 = 1; trigrams
    # (a , a) x2, (, a ,) x1 -> H3 = log2 3 - 2/3
    assert collapse.text_entropy("a, a, a") == pytest.approx((2 / 3 + 4 / 3 * (LOG2_3 - 2 / 3)) / 2)
    assert (
        collapse.text_entropy("") == 0.0 and collapse.text_entropy("one two") == 0.0
    )  # H2 = 0, no trigram
    # the mean over generations
    assert collapse.generation_entropy(["a b c d", "x x x x"]) == pytest.approx(
        (2 / 3 * LOG2_3 + 4 / 3) / 4
    )
    assert math.isnan(collapse.generation_entropy([]))


def test_select_documents_is_seeded_and_keeps_corpus_order():
    docs = [f"doc {i}" for i in range(50)]
    a = collapse.select_documents(iter(docs), 5, pool_docs=20, seed=3)
    assert a == collapse.select_documents(iter(docs), 5, pool_docs=20, seed=3)
    assert a != collapse.select_documents(iter(docs), 5, pool_docs=20, seed=4)
    idx = [int(d.split()[1]) for d in a]
    assert idx == sorted(idx) and max(idx) < 20 and len(set(idx)) == 5
    assert collapse.select_documents(iter(docs[:3]), 5, pool_docs=20, seed=3) == docs[:3]
    assert collapse.select_documents(iter(docs), 0, pool_docs=20, seed=3) == []


def test_probe_prompts_sources():
    recs = [
        {"generation_prompts": []},
        {"generation_prompts": ["P1 is", "P1 said"]},
        {"generation_prompts": ["P2 is"]},
    ]
    assert collapse.probe_prompts(None, 8, recs) == (["P1 is", "P2 is"], "counterfact")
    assert collapse.probe_prompts(["x", "y", "z"], 2, recs) == (["x", "y"], "config")
    prompts, source = collapse.probe_prompts(None, 3, [{"generation_prompts": []}])
    assert source == "fallback" and prompts == list(collapse.FALLBACK_PROMPTS[:3])
    probe = collapse.build_probe(
        docs=iter(["d1", "d2"]),
        corpus="c",
        corpus_fingerprint="f",
        n_docs=1,
        pool_docs=2,
        seed=1,
        prompts=None,
        n_prompts=1,
        records=recs,
    )
    assert len(probe["perplexity"]["docs"]) == 1 and probe["generation"]["prompts"] == ["P1 is"]


def _direct_perplexity(model, token_lists) -> tuple[float, list[float]]:
    """Each document alone through the full model (no padding, no batching)."""
    total, n, per_doc = 0.0, 0, []
    with torch.no_grad():
        for ids in token_lists:
            x = torch.tensor([ids])
            logp = model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
            nll = -logp.gather(1, x[0, 1:, None]).squeeze(1)
            total += float(nll.sum())
            n += len(ids) - 1
            per_doc.append(float(nll.mean()))
    return math.exp(total / n), per_doc


def test_perplexity_equals_direct_computation(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    docs = [
        "the capital city of France is Paris and the language is French",
        "Ada Lovelace was born in London",
        "of and to in is",
        "x",  # one token at most: skipped
        "the of and to in is was a on for by with as at from capital city language born " * 4,
    ]
    lists = collapse.heldout_token_lists(tok, docs, max_tokens=20)
    assert len(lists) == 4 and max(len(x) for x in lists) == 20 and min(len(x) for x in lists) >= 2
    want, per_doc = _direct_perplexity(model, lists)
    for batch_size in (1, 3, 16):  # padding and batching do not change the value
        got = collapse.heldout_perplexity(
            model, lists, batch_size=batch_size, pad_id=tok.pad_token_id or 0
        )
        assert got["perplexity"] == pytest.approx(want, rel=1e-5)
        assert got["n_tokens"] == sum(len(x) - 1 for x in lists)
        np.testing.assert_allclose(got["doc_nll"], per_doc, rtol=1e-5)
        assert got["mean_nll"] == pytest.approx(math.log(want), rel=1e-5)
    assert math.isnan(collapse.heldout_perplexity(model, [])["perplexity"])


def test_evaluate_collapse_on_a_tiny_model(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    probe = {
        "perplexity": {
            "docs": ["the capital city of France is Paris", "Ada Lovelace was born in London"]
        },
        "generation": {"prompts": ["The capital of", "Ada Lovelace was"]},
    }
    res = collapse.evaluate_collapse(model, tok, probe, max_tokens=16, max_new_tokens=5)
    assert set(collapse.MEASURES) <= set(res)
    assert len(res["generations"]) == 2 and res["entropies"].shape == (2,)
    assert res["generation_entropy"] == pytest.approx(
        np.mean(
            [
                collapse.text_entropy(p + g)
                for p, g in zip(probe["generation"]["prompts"], res["generations"])
            ]
        )
    )
    again = collapse.evaluate_collapse(model, tok, probe, max_tokens=16, max_new_tokens=5)
    assert again["perplexity"] == res["perplexity"] and again["generations"] == res["generations"]


# --------------------------------------------------------------------------- evaluation jobs


@pytest.fixture(scope="module")
def short_trajectory(traj_inputs, tmp_path_factory):
    from editscale.editing.runner import run_trajectory
    from tests.conftest import TRAJ_HPARAMS

    out = tmp_path_factory.mktemp("collapse") / "sample0.h5"
    run_trajectory(
        **traj_inputs,
        out_path=out,
        method="rome",
        editor="rome",
        hparams=TRAJ_HPARAMS,
        n_edits=4,
        snapshot_every=2,
        seed=5,
        config={},
    )
    return out


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    import json

    docs = [f"the capital city of place {i} is Paris and the language is French" for i in range(12)]
    probe = collapse.build_probe(
        docs=iter(docs),
        corpus="toy",
        corpus_fingerprint="f",
        n_docs=5,
        pool_docs=10,
        seed=37,
        prompts=None,
        n_prompts=3,
        records=[],
    )
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    path.write_text(json.dumps(probe))
    return path


def _chunk_args(traj_inputs, trajectory, probe, **kw):
    return dict(
        trajectory_path=trajectory,
        model_dir=traj_inputs["model_dir"],
        counterfact_path=traj_inputs["counterfact_path"],
        ordering_path=traj_inputs["ordering_path"],
        task_sets={},
        collapse_probe=probe,
        perplexity_max_tokens=12,
        generation_max_new_tokens=6,
        **kw,
    )


def test_eval_chunk_stores_collapse_measures_and_merge_writes_them(
    traj_inputs, short_trajectory, probe_file, tmp_path
):
    import csv
    import json

    import h5py

    from editscale.editing.store import read_metrics
    from editscale.evaluation.checkpoints import checkpoint_plan
    from editscale.evaluation.jobs import merge_eval_chunks, run_eval_chunk

    plan = checkpoint_plan(
        4, forgetting_every=2, downstream_every=4
    )  # t = 0 (downstream only), 2, 4
    run_eval_chunk(
        **_chunk_args(traj_inputs, short_trajectory, probe_file),
        out_path=tmp_path / "c.h5",
        checkpoints=plan,
    )
    model, tok = load_model(traj_inputs["model_dir"])  # unedited = checkpoint 0
    probe = json.loads(probe_file.read_text())
    want = collapse.evaluate_collapse(model, tok, probe, max_tokens=12, max_new_tokens=6)
    with h5py.File(tmp_path / "c.h5") as f:
        settings = json.loads(f.attrs["collapse_settings"])
        assert (
            settings["perplexity_max_tokens"] == 12 and settings["generation_max_new_tokens"] == 6
        )
        assert len(settings["probe_sha256"]) == 64
        g = f["t0/collapse"]
        assert g.attrs["perplexity"] == pytest.approx(want["perplexity"], rel=1e-9)
        assert g.attrs["generation_entropy"] == pytest.approx(want["generation_entropy"], rel=1e-12)
        assert [s.decode() for s in g["generations"][()]] == want["generations"]
        assert g["doc_nll"].shape == (5,) and g["entropies"].shape == (3,)
        assert all(np.isfinite(f[f"t{t}/collapse"].attrs["perplexity"]) for t in (0, 2, 4))
        assert (
            f["t4/collapse"].attrs["perplexity"] != g.attrs["perplexity"]
        )  # four edits change the model
    paths = {k: tmp_path / f"m_{k}" for k in ("h5", "f.csv", "d.csv", "c.csv")}
    merge_eval_chunks(
        [tmp_path / "c.h5"],
        short_trajectory,
        paths["h5"],
        paths["f.csv"],
        paths["d.csv"],
        paths["c.csv"],
        forgetting_every=2,
        downstream_every=4,
    )
    traj = read_metrics(short_trajectory)
    with h5py.File(paths["h5"]) as f:
        assert list(f["collapse/checkpoints"][()]) == [0, 2, 4]
        assert f["collapse/perplexity"][0] == pytest.approx(want["perplexity"], rel=1e-9)
        assert f["collapse/generations"].shape == (3, 3) and f["collapse/doc_nll"].shape == (3, 5)
        assert json.loads(f["collapse"].attrs["settings"]) == settings
        np.testing.assert_array_equal(f["trajectory/weight_norm_0"][()], traj["weight_norm_0"])
        assert f["trajectory/weight_norm_initial"].shape == (1,)
    with open(paths["c.csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["checkpoint", "metric", "value"]
    assert [(r["checkpoint"], r["metric"]) for r in rows[:4]] == [
        ("0", m) for m in collapse.MEASURES
    ]
    assert len(rows) == 3 * len(collapse.MEASURES)


def test_eval_chunk_resume_keeps_done_checkpoints_only_with_the_same_settings(
    traj_inputs, short_trajectory, probe_file, tmp_path, monkeypatch
):
    import editscale.evaluation.jobs as ej
    from editscale.evaluation.checkpoints import checkpoint_plan

    plan = checkpoint_plan(4, forgetting_every=2, downstream_every=0)  # t = 2, 4
    real = ej.evaluate_collapse
    calls = []

    def dying(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            # killed in checkpoint 4, after its forgetting scores were written
            raise KeyboardInterrupt
        return real(*a, **kw)

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    out = tmp_path / "c.h5"
    for settings, expect in (({}, 1), ({"generation_max_new_tokens": 7}, 2)):
        calls.clear()
        monkeypatch.setattr(ej, "evaluate_collapse", dying)
        with pytest.raises(KeyboardInterrupt):
            run_eval_chunk_args = _chunk_args(traj_inputs, short_trajectory, probe_file)
            ej.run_eval_chunk(**run_eval_chunk_args, out_path=out, checkpoints=plan)
        assert (tmp_path / "c.h5.partial").exists()
        calls.clear()
        monkeypatch.setattr(ej, "evaluate_collapse", counting)
        ej.run_eval_chunk(
            **{**_chunk_args(traj_inputs, short_trajectory, probe_file), **settings},
            out_path=out,
            checkpoints=plan,
        )
        assert len(calls) == expect  # same settings: only t = 4 redone; other settings: both
        out.unlink()


def test_merge_refuses_chunks_with_different_collapse_settings(
    traj_inputs, short_trajectory, probe_file, tmp_path
):
    from editscale.evaluation.checkpoints import checkpoint_plan
    from editscale.evaluation.jobs import merge_eval_chunks, run_eval_chunk

    plan = checkpoint_plan(4, forgetting_every=2, downstream_every=0)
    run_eval_chunk(
        **_chunk_args(traj_inputs, short_trajectory, probe_file),
        out_path=tmp_path / "a.h5",
        checkpoints=plan[:1],
    )
    run_eval_chunk(
        **{**_chunk_args(traj_inputs, short_trajectory, probe_file), "perplexity_max_tokens": 10},
        out_path=tmp_path / "b.h5",
        checkpoints=plan[1:],
    )
    with pytest.raises(ValueError, match="different collapse settings"):
        merge_eval_chunks(
            [tmp_path / "a.h5", tmp_path / "b.h5"],
            short_trajectory,
            tmp_path / "m.h5",
            tmp_path / "f.csv",
            tmp_path / "d.csv",
            tmp_path / "c.csv",
            forgetting_every=2,
            downstream_every=0,
        )
