"""Tests of editscale.editing.key_stats: key second moment, early stop,
resume, provenance checks."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from editscale.editing.key_stats import (
    Convergence,
    StatsMismatchError,
    compute_key_second_moment,
    load_key_second_moment,
    pack_batches,
    stats_attrs,
    subject_keys,
)
from editscale.lm.models import arch_of, get_module, load_model, weight_out_in
from tests.conftest import ARCHS

WORDS = (
    "the of and to in is was a on for by with as at from capital city language born "
    "river north lobster paris french poet ocean played guitar"
).split()
IDENTITY = {
    "model_id": "tiny/gpt2",
    "revision": "abc123",
    "corpus": "synthetic",
    "corpus_fingerprint": "f00d",
}


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of varied length (some longer than the truncation limit, one empty)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        n_words = int(rng.integers(1, 90))
        docs.append(" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), n_words)))
    docs[3] = ""
    return docs


class KilledIterator:
    """Yields documents, then raises (simulating a kill) after ``kill_after`` of them."""

    def __init__(self, docs: list[str], kill_after: int):
        self.docs, self.kill_after = docs, kill_after

    def __iter__(self):
        for i, d in enumerate(self.docs):
            if i == self.kill_after:
                raise KeyboardInterrupt("simulated kill")
            yield d


def brute_force(model, tok, layer: int, docs: list[str], max_len: int) -> torch.Tensor:
    """sum k k^T / count with the full model, one document at a time, no padding."""
    spec = arch_of(model)
    target = get_module(model, spec.mlp_out_path(layer))
    keys = []
    handle = target.register_forward_hook(lambda m, i, o: keys.append(i[0][0]))
    try:
        with torch.no_grad():
            for d in docs:
                ids = tok(d, truncation=True, max_length=max_len, return_tensors="pt")["input_ids"]
                if ids.shape[1]:
                    model(input_ids=ids)
    finally:
        handle.remove()
    k = torch.cat(keys).to(torch.float64)
    return k.T @ k / k.shape[0]


@pytest.fixture(scope="module")
def gpt2(tiny_model_factory):
    return load_model(tiny_model_factory("gpt2"))


def test_matches_brute_force_float64(gpt2, tmp_path):
    model, tok = gpt2
    model = model.to(torch.float64)
    try:
        docs = make_docs(40)
        out = tmp_path / "c.h5"
        compute_key_second_moment(
            model, tok, 1, docs, out, n_docs=40, max_doc_tokens=48, batch_tokens=256, attrs=IDENTITY
        )
        got = load_key_second_moment(out, expect={"layer": 1})
        want = brute_force(model, tok, 1, docs, 48)
    finally:
        model.to(torch.float32)
    assert got.dtype == torch.float64 and got.shape == (128, 128)
    rel = (got - want).norm() / want.norm()
    assert rel < 1e-10, rel
    attrs = stats_attrs(out)
    n_tokens = sum(min(len(tok(d)["input_ids"]), 48) for d in docs)
    assert attrs["count"] == n_tokens
    assert attrs["n_docs"] == 40 and attrs["n_empty_docs"] == 1
    assert attrs["layer"] == 1 and attrs["module"] == "transformer.h.1.mlp.c_proj"
    assert attrs["max_doc_tokens"] == 48 and attrs["dtype"] == "float64"
    for key, value in IDENTITY.items():
        assert attrs[key] == value
    with h5py.File(out) as h5:
        assert h5["mom2_sum"].dtype == np.float64 and h5["mom2_sum"].compression == "gzip"
        assert h5["mean_sum"].shape == (128,)


def test_matches_brute_force_float32(gpt2, tmp_path):
    model, tok = gpt2
    docs = make_docs(30, seed=1)
    out = tmp_path / "c.h5"
    compute_key_second_moment(
        model, tok, 2, docs, out, n_docs=30, max_doc_tokens=64, batch_tokens=300, attrs=IDENTITY
    )
    got = load_key_second_moment(out, expect={"layer": 2})
    want = brute_force(model, tok, 2, docs, 64)
    assert (got - want).norm() / want.norm() < 1e-5


def test_truncates_to_model_positions(gpt2, tmp_path):
    model, tok = gpt2
    docs = [" ".join(["paris"] * 400)]
    out = tmp_path / "c.h5"
    compute_key_second_moment(
        model, tok, 0, docs, out, n_docs=1, max_doc_tokens=1024, attrs=IDENTITY
    )
    attrs = stats_attrs(out)
    assert attrs["max_doc_tokens"] == 128 and attrs["count"] == 128


@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_symmetric_psd(arch, tiny_model_factory, tmp_path):
    model, tok = load_model(tiny_model_factory(arch))
    spec = arch_of(model)
    d_in = weight_out_in(get_module(model, spec.mlp_out_path(1)).weight, spec).shape[1]
    out = tmp_path / "c.h5"
    compute_key_second_moment(
        model,
        tok,
        1,
        make_docs(12),
        out,
        n_docs=12,
        max_doc_tokens=40,
        batch_tokens=128,
        attrs=IDENTITY,
    )
    c = load_key_second_moment(out, expect={"layer": 1, "module": spec.mlp_out_path(1)})
    assert c.shape == (d_in, d_in)
    assert torch.equal(c, c.T)
    assert torch.linalg.eigvalsh(c).min() > -1e-10 * c.diagonal().max()
    assert c.diagonal().min() >= 0 and c.trace() > 0


def test_blocks_above_layer_not_run(gpt2, tmp_path):
    model, tok = gpt2
    spec = arch_of(model)
    calls = {"below": 0, "above": 0, "head": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1

        return hook

    handles = [
        get_module(model, spec.layer_path(1)).register_forward_pre_hook(counter("below")),
        get_module(model, spec.layer_path(2)).register_forward_hook(counter("above")),
        get_module(model, spec.layer_path(2)).register_forward_pre_hook(counter("above")),
        get_module(model, spec.lm_head).register_forward_hook(counter("head")),
    ]
    try:
        compute_key_second_moment(
            model,
            tok,
            1,
            make_docs(10),
            tmp_path / "c.h5",
            n_docs=10,
            max_doc_tokens=32,
            batch_tokens=64,
            attrs=IDENTITY,
        )
    finally:
        for h in handles:
            h.remove()
    assert calls["below"] > 0
    assert calls["above"] == 0 and calls["head"] == 0


def test_kill_and_resume_equals_uninterrupted(gpt2, tmp_path, caplog):
    model, tok = gpt2
    docs = make_docs(23, seed=2)
    kw = dict(
        n_docs=23, max_doc_tokens=40, batch_tokens=128, checkpoint_every_docs=5, attrs=IDENTITY
    )
    ref = tmp_path / "ref.h5"
    compute_key_second_moment(model, tok, 1, docs, ref, **kw)

    out = tmp_path / "resumed.h5"
    partial = Path(str(out) + ".partial.h5")
    with pytest.raises(KeyboardInterrupt):
        compute_key_second_moment(model, tok, 1, KilledIterator(docs, 13), out, **kw)
    assert not out.exists() and partial.exists()
    with h5py.File(partial) as h5:
        assert h5.attrs["docs_done"] == 10
    with caplog.at_level(logging.INFO, logger="editscale.editing.key_stats"):
        compute_key_second_moment(model, tok, 1, docs, out, **kw)
    assert "resuming after 10 docs" in caplog.text
    assert out.exists() and not partial.exists()
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert np.array_equal(a["mom2_sum"][()], b["mom2_sum"][()])
        assert np.array_equal(a["mean_sum"][()], b["mean_sum"][()])
        assert a.attrs["count"] == b.attrs["count"]
    assert stats_attrs(out)["n_docs"] == 23


def test_checkpoint_with_other_settings_is_ignored(gpt2, tmp_path, caplog):
    """A checkpoint of another corpus (other documents, other fingerprint) must not be resumed:
    its sums differ, so resuming it would change the result of the second run."""
    model, tok = gpt2
    docs = make_docs(12, seed=3)
    other_docs = make_docs(12, seed=11)
    assert other_docs[:5] != docs[:5]
    out = tmp_path / "c.h5"
    partial = Path(str(out) + ".partial.h5")
    with pytest.raises(KeyboardInterrupt):
        compute_key_second_moment(
            model,
            tok,
            1,
            KilledIterator(other_docs, 7),
            out,
            n_docs=12,
            max_doc_tokens=40,
            checkpoint_every_docs=5,
            attrs=dict(IDENTITY, corpus_fingerprint="other"),
        )
    with h5py.File(partial) as h5:
        assert h5.attrs["docs_done"] == 5
    with caplog.at_level(logging.INFO, logger="editscale.editing.key_stats"):
        compute_key_second_moment(
            model,
            tok,
            1,
            docs,
            out,
            n_docs=12,
            max_doc_tokens=40,
            checkpoint_every_docs=5,
            attrs=IDENTITY,
        )
    assert "written with other settings" in caplog.text and "resuming" not in caplog.text
    ref = tmp_path / "ref.h5"
    compute_key_second_moment(
        model,
        tok,
        1,
        docs,
        ref,
        n_docs=12,
        max_doc_tokens=40,
        checkpoint_every_docs=5,
        attrs=IDENTITY,
    )
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert np.array_equal(a["mom2_sum"][()], b["mom2_sum"][()])
        assert np.array_equal(a["mean_sum"][()], b["mean_sum"][()])
        assert a.attrs["count"] == b.attrs["count"]
    assert not partial.exists()


@pytest.mark.parametrize(
    "key,bad", [("model_id", "other/model"), ("revision", "deadbeef"), ("layer", 5)]
)
def test_mismatch_refused(gpt2, tmp_path, key, bad):
    model, tok = gpt2
    out = tmp_path / "c.h5"
    compute_key_second_moment(
        model, tok, 1, make_docs(4), out, n_docs=4, max_doc_tokens=16, attrs=IDENTITY
    )
    expect = {"model_id": IDENTITY["model_id"], "revision": IDENTITY["revision"], "layer": 1}
    load_key_second_moment(out, expect=expect)
    expect[key] = bad
    with pytest.raises(StatsMismatchError) as err:
        load_key_second_moment(out, expect=expect)
    msg = str(err.value)
    assert key in msg and str(out) in msg and repr(bad) in msg
    found = 1 if key == "layer" else repr(IDENTITY[key])
    assert str(found) in msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_key_second_moment(missing, expect={})


def test_short_corpus_records_real_n_docs(gpt2, tmp_path, caplog):
    model, tok = gpt2
    out = tmp_path / "c.h5"
    with caplog.at_level(logging.WARNING, logger="editscale.editing.key_stats"):
        compute_key_second_moment(
            model,
            tok,
            0,
            iter(make_docs(7)),
            out,
            n_docs=100,
            max_doc_tokens=32,
            checkpoint_every_docs=3,
            attrs=IDENTITY,
        )
    attrs = stats_attrs(out)
    assert attrs["n_docs"] == 7 and attrs["n_docs_requested"] == 100
    assert "corpus ended after 7 documents" in caplog.text
    assert not Path(str(out) + ".partial.h5").exists()


def test_extra_attrs_round_trip(gpt2, tmp_path):
    model, tok = gpt2
    out = tmp_path / "c.h5"
    extra = dict(IDENTITY, seeds=[1, 2], config={"a": 1.5}, note=None)
    compute_key_second_moment(
        model, tok, 0, make_docs(4), out, n_docs=4, max_doc_tokens=16, attrs=extra
    )
    attrs = stats_attrs(out)
    assert attrs["seeds"] == [1, 2] and attrs["config"] == {"a": 1.5} and attrs["note"] is None
    with pytest.raises(ValueError, match="layer"):
        compute_key_second_moment(
            model, tok, 0, make_docs(4), out, n_docs=4, attrs=dict(IDENTITY, layer=3)
        )


def test_pack_batches_respects_budget():
    lengths = [5, 0, 17, 3, 17, 40, 1, 9, 9, 2]
    batches = pack_batches(lengths, batch_tokens=36)
    flat = sorted(i for b in batches for i in b)
    assert flat == [i for i, n in enumerate(lengths) if n > 0]
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 36
    assert batches[0] == [5]  # longer than the budget: alone


def test_progress_is_logged(gpt2, tmp_path, caplog):
    model, tok = gpt2
    with caplog.at_level(logging.INFO, logger="editscale.editing.key_stats"):
        compute_key_second_moment(
            model,
            tok,
            0,
            make_docs(6),
            tmp_path / "c.h5",
            n_docs=6,
            max_doc_tokens=16,
            batch_tokens=32,
            progress_every_s=0.0,
            attrs=IDENTITY,
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("key statistics of transformer.h.0.mlp.c_proj")
    assert any("/ 6 docs" in line and "tokens/s" in line for line in lines)
    assert "written to" in lines[-1]


def test_import_published_rome_statistics(tmp_path, tiny_model_factory):
    """ROME's published .npz (CombinedStat of SecondMoment) becomes a statistics file whose C is
    mom2 / count; files named for another module, model or width are refused, naming the file."""
    import numpy as np

    from editscale.editing.key_stats import (
        StatsMismatchError,
        import_published_second_moment,
        load_key_second_moment,
    )
    from editscale.lm.models import load_model, model_skeleton
    from tests.pipeline.test_paper_rehearsal import publish_rome_npz

    model, _ = load_model(tiny_model_factory("gpt2"))
    url = "https://rome.baulab.info/data/stats/gpt2-xl/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    local = publish_rome_npz(tmp_path / "pub", url, d_in=128)
    npz = local.removeprefix("file://")
    out = tmp_path / "layer1.h5"
    attrs = import_published_second_moment(
        npz,
        out,
        model=model,
        layer=1,
        source=url,
        hub_name="openai-community/gpt2-xl",
        attrs={"model_id": "m", "revision": "r"},
    )
    assert (
        attrs["count"] == 12345
        and attrs["n_docs"] == 100000
        and attrs["published_dataset"] == "wikipedia"
    )
    with np.load(npz) as z:
        expected = z["mom2.mom2"].astype(np.float64) / 12345
    c = load_key_second_moment(
        out, expect={"model_id": "m", "layer": 1, "module": "transformer.h.1.mlp.c_proj"}
    )
    np.testing.assert_array_equal(c.numpy(), expected)
    # rule import_stats converts with the model's skeleton (meta device, no weights read)
    skeleton = model_skeleton(tiny_model_factory("gpt2"))
    assert next(skeleton.parameters()).device.type == "meta"
    import_published_second_moment(npz, tmp_path / "meta.h5", model=skeleton, layer=1, source=url)
    np.testing.assert_array_equal(load_key_second_moment(tmp_path / "meta.h5", expect={}), c)

    with pytest.raises(
        StatsMismatchError, match=r"module transformer\.h\.1\.mlp\.c_proj, but layer 2"
    ):
        import_published_second_moment(npz, out, model=model, layer=2, source=url)
    with pytest.raises(StatsMismatchError, match=r"model 'gpt2-xl', but 'EleutherAI/gpt-j-6b'"):
        import_published_second_moment(
            npz, out, model=model, layer=1, source=url, hub_name="EleutherAI/gpt-j-6b"
        )
    wide = publish_rome_npz(tmp_path / "wide", url, d_in=64).removeprefix("file://")
    with pytest.raises(StatsMismatchError, match=r"64x64 second moment, but .* takes 128 inputs"):
        import_published_second_moment(wide, out, model=model, layer=1, source=url)
    with pytest.raises(StatsMismatchError, match="not a ROME statistics file name"):
        import_published_second_moment(npz, out, model=model, layer=1, source="https://x/stats.npz")
    pickled = tmp_path / "p" / "transformer.h.1.mlp.c_proj_float32_mom2.npz"
    pickled.parent.mkdir()
    np.savez(
        pickled, **{"mom2.mom2": np.array([object()], dtype=object), "mom2.count": np.array(3)}
    )
    with pytest.raises(ValueError, match="pickle"):
        import_published_second_moment(pickled, out, model=model, layer=1, source=str(pickled))


# --------------------------------------------------------------------------------------------
# Early stop on convergence (stats.convergence)

CONV_DOCS = 60


def _probes(model, tok, layer: int = 1) -> torch.Tensor:
    prompts = [
        (f"{s} was born in", len(s))
        for s in ("the poet", "Paris ocean", "river north", "guitar city")
    ]
    return subject_keys(model, tok, layer, prompts)


def _conv_run(model, tok, out, docs, conv, **kw):
    args = dict(
        n_docs=CONV_DOCS,
        max_doc_tokens=40,
        batch_tokens=256,
        checkpoint_every_docs=10,
        attrs=IDENTITY,
        convergence=conv,
    )
    args.update(kw)
    compute_key_second_moment(model, tok, 1, docs, out, **args)
    return stats_attrs(out)


def test_subject_keys_are_the_keys_at_the_last_subject_token(gpt2):
    """The probes are what a full forward pass feeds the MLP output projection at the subject's
    last token (the prompts batched with padding must not change them)."""
    model, tok = gpt2
    prompts = [("the poet was born in", 8), ("Paris ocean river played guitar", 11)]
    got = subject_keys(model, tok, 1, prompts)
    target = get_module(model, arch_of(model).mlp_out_path(1))
    for row, (text, end) in enumerate(prompts):
        enc = tok(text, return_offsets_mapping=True, return_tensors="pt")
        last = max(
            i for i, (s, e) in enumerate(enc["offset_mapping"][0].tolist()) if e > s and s < end
        )
        seen = []
        handle = target.register_forward_hook(lambda m, i, o: seen.append(i[0][0, last]))
        try:
            with torch.no_grad():
                model(input_ids=enc["input_ids"])
        finally:
            handle.remove()
        torch.testing.assert_close(got[row], seen[0].to(torch.float64), rtol=1e-5, atol=1e-6)


def test_convergence_stops_where_the_rule_says_with_the_prefix_sums(gpt2, tmp_path):
    """Every check's change is max_i ||u_i - u_i'|| / ||u_i|| of u = C^-1 k against the previous
    check, recomputed here from separate runs over the prefixes; the run stops at the first
    check after `patience` changes below the tolerance, and its sums are that prefix's sums."""
    model, tok = gpt2
    docs = make_docs(CONV_DOCS, seed=5)
    probes = _probes(model, tok)
    never = Convergence(probes=probes, tolerance=1e-300, check_every_docs=10, patience=2)
    full = _conv_run(model, tok, tmp_path / "never.h5", docs, never)
    assert full["n_docs"] == CONV_DOCS and full["converged"] is False
    history = full["convergence_history"]
    assert [h[0] for h in history] == [10, 20, 30, 40, 50, 60]

    # the changes, from the prefix statistics computed without any convergence check
    sols = []
    for n in (10, 20, 30, 40, 50, 60):
        compute_key_second_moment(
            model,
            tok,
            1,
            docs,
            tmp_path / f"p{n}.h5",
            n_docs=n,
            max_doc_tokens=40,
            batch_tokens=256,
            checkpoint_every_docs=10,
            attrs=IDENTITY,
        )
        c = load_key_second_moment(tmp_path / f"p{n}.h5", expect={})
        sols.append(torch.linalg.solve(c, probes.T).T)
        assert history[len(sols) - 1][1] == stats_attrs(tmp_path / f"p{n}.h5")["count"]
    assert history[0][2] is None  # no previous check
    for i in range(1, 6):
        want = float(((sols[i] - sols[i - 1]).norm(dim=1) / sols[i].norm(dim=1)).max())
        assert history[i][2] == pytest.approx(want, rel=1e-6)

    # a tolerance between the changes: the stop is where two consecutive ones fall below it
    changes = [h[2] for h in history[1:]]
    tol = sorted(changes)[2] * 1.0001  # three changes fall below it
    below = [c < tol for c in changes]
    stop = next(
        i + 2 for i in range(1, len(below)) if below[i] and below[i - 1]
    )  # index in history
    conv = Convergence(probes=probes, tolerance=tol, check_every_docs=10, patience=2)
    attrs = _conv_run(model, tok, tmp_path / "conv.h5", docs, conv)
    assert attrs["converged"] is True and attrs["n_docs"] == history[stop - 1][0] < CONV_DOCS
    assert attrs["n_docs_requested"] == CONV_DOCS and attrs["convergence"]["tolerance"] == tol
    assert attrs["convergence"]["n_probes"] == 4 and len(attrs["convergence"]["probe_sha256"]) == 64
    with h5py.File(tmp_path / "conv.h5") as a, h5py.File(tmp_path / f"p{attrs['n_docs']}.h5") as b:
        assert np.array_equal(a["mom2_sum"][()], b["mom2_sum"][()])
        assert a.attrs["count"] == b.attrs["count"]
    # min_docs holds the stop back to a later check
    late = Convergence(
        probes=probes, tolerance=tol, check_every_docs=10, patience=2, min_docs=CONV_DOCS
    )
    assert _conv_run(model, tok, tmp_path / "late.h5", docs, late)["n_docs"] == CONV_DOCS


def test_convergence_kill_and_resume_is_bitwise(gpt2, tmp_path):
    """A run killed between checks resumes with the last check's u and history from the
    checkpoint and stops at the same document, with the same sums, as an uninterrupted run."""
    model, tok = gpt2
    docs = make_docs(CONV_DOCS, seed=5)
    probes = _probes(model, tok)
    never = _conv_run(
        model,
        tok,
        tmp_path / "never.h5",
        docs,
        Convergence(probes=probes, tolerance=1e-300, check_every_docs=5),
    )
    changes = [h[2] for h in never["convergence_history"][1:]]
    conv = Convergence(
        probes=probes,
        tolerance=sorted(changes)[len(changes) // 2] * 1.0001,
        check_every_docs=5,
        patience=2,
    )
    ref = tmp_path / "ref.h5"
    ref_attrs = _conv_run(model, tok, ref, docs, conv)
    assert ref_attrs["n_docs"] > 20
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        _conv_run(model, tok, out, KilledIterator(docs, 23), conv)
    with h5py.File(str(out) + ".partial.h5") as h5:
        assert h5.attrs["docs_done"] == 20 and "probe_u" in h5
    attrs = _conv_run(model, tok, out, docs, conv)
    assert attrs["n_docs"] == ref_attrs["n_docs"]
    assert attrs["convergence_history"] == ref_attrs["convergence_history"]
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert np.array_equal(a["mom2_sum"][()], b["mom2_sum"][()])
    # a checkpoint made without the convergence check is not resumed by a run with it
    plain = tmp_path / "plain.h5"
    with pytest.raises(KeyboardInterrupt):
        compute_key_second_moment(
            model,
            tok,
            1,
            KilledIterator(docs, 23),
            plain,
            n_docs=CONV_DOCS,
            max_doc_tokens=40,
            batch_tokens=256,
            checkpoint_every_docs=10,
            attrs=IDENTITY,
        )
    assert (
        _conv_run(model, tok, plain, docs, conv)["convergence_history"]
        == ref_attrs["convergence_history"]
    )


def test_convergence_with_singular_statistics_keeps_reading(gpt2, tmp_path):
    """Fewer tokens than key dimensions: C is singular, the change is unknown (None), no stop."""
    model, tok = gpt2
    docs = ["the", "of", "and", "to"] + make_docs(20, seed=1)
    conv = Convergence(probes=_probes(model, tok), tolerance=1e9, check_every_docs=1, patience=1)
    attrs = _conv_run(model, tok, tmp_path / "s.h5", docs, conv, n_docs=24)
    hist = attrs["convergence_history"]
    assert hist[0][2] is None and hist[1][2] is None  # 1-2 tokens of 32+ dimensions
    assert attrs["converged"] is True and attrs["n_docs"] > 2


def test_convergence_settings_are_checked(gpt2):
    model, tok = gpt2
    probes = _probes(model, tok)
    with pytest.raises(ValueError, match="tolerance"):
        Convergence(probes=probes, tolerance=0.0, check_every_docs=5)
    with pytest.raises(ValueError, match="probes"):
        Convergence(probes=probes[0], tolerance=1e-3, check_every_docs=5)
    with pytest.raises(ValueError, match="width"):
        compute_key_second_moment(
            model,
            tok,
            1,
            make_docs(4),
            "/nonexistent/x.h5",
            n_docs=4,
            convergence=Convergence(probes=probes[:, :3], tolerance=1e-3, check_every_docs=2),
        )
