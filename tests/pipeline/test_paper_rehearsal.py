"""A rehearsal of config/paper.yaml on this machine: the paper config's own rules and settings
(ROME's 21 context templates and layers 5 / 17, FT-C's per-model clamps with the bias, MEND on
the last three layers, forgetting every 10 edits, downstream every 5 with the authors' GLUE
subsets and demonstrations, disabling onsets, figures, Table 2), with only what cannot run here
swapped: the models for tiny random GPT-J and GPT-2 models with the same module names and depths
(28 and 48 blocks), the hub data for the real subsets in ../shared/data (CounterFact through the
same download code, from a file:// URL with its sha256), the public MEND editors (not reachable)
for editors trained here, GPUs for the CPU, and the sizes (edits, samples, documents, examples).

A config error of the paper's setting then surfaces here, not after a day in a cluster queue.
Slow (~5 min on 2 cores); CI runs it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from editscale.io.provenance import sha256_file
from tests.conftest import COUNTERFACT_500, GLUE_DIR, REPO, WIKITEXT
from tests.pipeline.test_workflow import job_counts, snakemake

N_EDITS = 10


def publish_rome_npz(root, url: str, d_in: int, count: int = 12345) -> str:
    """A statistics file as ROME's layer_stats saves it (CombinedStat of SecondMoment, npz), at
    the URL's last three path parts under ``root``; returns its file:// URL."""
    import numpy as np

    path = root.joinpath(*url.split("/")[-3:])
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(0).standard_normal((3 * d_in, d_in)).astype(np.float32)
    np.savez(
        path,
        **{
            "mom2.constructor": np.array("util.runningstats.SecondMoment()"),
            "mom2.count": np.array(count),
            "mom2.mom2": a.T @ a,
            "sample_size": np.array(100000),
        },
    )
    return path.resolve().as_uri()


def rehearsal_config(tiny_model_factory, published_dir) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    # long contexts: the authors' few-shot GLUE prompts reach ~1,050 tokens with the tiny test
    # tokenizer (600 merges; GPT-2's own BPE makes them about half as long)
    gptj = tiny_model_factory(
        "gptj",
        n_layer=paper["models"]["gpt-j-6b"]["n_layer"],
        d_model=32,
        n_head=4,
        n_positions=2048,
    )
    gpt2 = tiny_model_factory(
        "gpt2",
        n_layer=paper["models"]["gpt2-xl"]["n_layer"],
        d_model=32,
        n_head=4,
        n_positions=2048,
    )
    for name, folder in (("gpt-j-6b", gptj), ("gpt2-xl", gpt2)):
        spec = cfg["models"][name]
        cfg["models"][name] = {
            "source": "local",
            "path": str(folder),
            "n_layer": spec["n_layer"],
            "dtype": spec["dtype"],
            "device": "cpu",
        }
    cfg["counterfact"].update(
        url=COUNTERFACT_500.resolve().as_uri(), sha256=sha256_file(COUNTERFACT_500)
    )
    cfg["corpora"]["wikipedia"] = {
        "type": "text_files",
        "paths": [str(WIKITEXT)],
        "doc_split": "blank_lines",
    }
    cfg["stats"].update(n_docs=20, checkpoint_every_docs=10)
    # GPT-J's published statistics: a file in ROME's npz format and folder layout, from a file://
    # URL; GPT-2 XL's are computed here instead (ROME's random subset of the text)
    gptj_entry = next(e for e in paper["stats"]["published"] if e["model"] == "gpt-j-6b")
    cfg["stats"]["published"] = [
        {**gptj_entry, "url": publish_rome_npz(published_dir, gptj_entry["url"], d_in=4 * 32)}
    ]
    cfg.update(samples=1, n_edits=N_EDITS, snapshot_every=5)
    # the public editors cannot be downloaded here: the alternative the config names, training
    del cfg["methods"]["mend"]["editor_weights"]
    cfg["methods"]["mend"]["training"] = {
        "rank": 16,
        "max_steps": 10,
        "val_every": 5,
        "accumulate": 5,
        "norm_records": 10,
        "loc_docs": 10,
        "loc_max_tokens": 32,
        "checkpoint_every": 5,
    }
    cfg["editor_training"].update(n_train=10, n_val=5)
    cfg["evaluation"]["perplexity"].update(n_docs=4, max_tokens=32)
    cfg["evaluation"]["generation"].update(n_prompts=2, max_new_tokens=4)
    cfg["downstream"].update(source={"type": "glue_files", "path": str(GLUE_DIR)}, n_per_label=2)
    return cfg


@pytest.mark.slow
def test_paper_config_rehearsal_runs_through_the_dag(tmp_path, tiny_model_factory, shared_data):
    cfg = rehearsal_config(tiny_model_factory, tmp_path / "published")
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    # what is kept: the paper's methods, layers, schedule and downstream protocol
    assert cfg["methods"]["rome"]["hparams"] == paper["methods"]["rome"]["hparams"]
    assert cfg["methods"]["ftc"] == paper["methods"]["ftc"]
    assert cfg["methods"]["mend"]["hparams"] == paper["methods"]["mend"]["hparams"]
    assert paper["methods"]["mend"]["hparams"]["normalisation"] == "authors_running"
    assert cfg["disabling"]["methods"] == ["rome"]
    assert cfg["experiments"] == paper["experiments"]
    for key in ("forgetting_every", "downstream_every", "chunk_size", "forgetting_test"):
        assert cfg["evaluation"][key] == paper["evaluation"][key]
    for key in ("tasks", "selection", "demo_source", "rte_label_mapping"):
        assert cfg["downstream"][key] == paper["downstream"][key]

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    proc = snakemake(
        "--cores",
        "2",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        cwd=tmp_path,
        timeout=1800,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    counts = job_counts(out)
    assert counts["trajectory"] == 6 and counts["key_stats"] == 1 and counts["import_stats"] == 1
    assert counts["train_mend"] == 2
    assert counts["counterfact"] == 1 and counts["ordering"] == 1
    # 10 edits, forgetting every 10, downstream every 5: checkpoints 0, 5, 10 in one chunk of 50
    assert counts["eval_chunk"] == 6
    assert counts["disabling"] == 2  # ROME's only, as the paper's Table 2

    from editscale.editing.key_stats import stats_attrs

    imported = stats_attrs(work / "resources/stats_published/gpt-j-6b/layer5.h5")
    assert imported["module"] == "transformer.h.5.mlp.fc_out" and imported["count"] == 12345
    assert imported["published_model"] == "EleutherAI_gpt-j-6B" and imported["layer"] == 5
    computed = stats_attrs(work / "resources/stats/gpt2-xl/wikipedia/layer17.h5")
    assert (
        computed["sample"] == "random" and computed["sample_seed"] == 1 and computed["n_docs"] == 20
    )
    # FT-C keeps snapshots only (store_updates: false): its evaluation replays the edits in between,
    # checked bitwise against the stored snapshot after edit 5
    import h5py

    with h5py.File(work / "results/trajectories/gpt-j-6b/ftc/sample0.h5") as f:
        assert f["updates/0"].attrs["kind"] == "replay" and sorted(f["snapshots/0"], key=int) == [
            "0",
            "5",
            "10",
        ]
    assert (
        "replayed edits 1..5"
        in (work / "logs/eval_chunk/gpt-j-6b/ftc/sample0/chunk0.log").read_text()
    )
    # MEND normalises as the authors ran it: running statistics carried edit by edit
    with h5py.File(work / "results/trajectories/gpt2-xl/mend/sample0.h5") as f:
        assert list(f["carry/mend_count/offsets"][()])[-1] == 2 * N_EDITS  # two shapes per edit
    for model in ("gpt-j-6b", "gpt2-xl"):
        for method in ("rome", "ftc", "mend"):
            ev = work / "results" / "evaluations" / model / method / "sample0_downstream.csv"
            assert ev.exists(), ev
            rows = ev.read_text().splitlines()
            assert len(rows) > 1
        figures = work / "results" / "figures" / model
        for name in ("figure1.png", "figure2.png", "table2.md", "collapse.png"):
            assert (figures / name).exists(), (model, name)
        side = json.loads((figures / "table2.json").read_text())
        assert (
            side["config"]["methods"]["rome"]["per_model"] == paper["methods"]["rome"]["per_model"]
        )
