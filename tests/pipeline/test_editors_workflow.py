"""FT-C and MEND trajectories through the Snakemake DAG on a tiny local model: the editor split,
train_mend, orderings that exclude the reserved records, trajectories with dense and low-rank
updates."""

from __future__ import annotations

import csv
import json

import h5py
import pytest
import yaml

from tests.conftest import WIKITEXT
from tests.pipeline.test_workflow import REPO, job_counts, snakemake


@pytest.mark.slow
def test_ftc_and_mend_trajectories_through_the_dag(tmp_path, tiny_model_factory, counterfact_path):
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"] = {"tiny-local": {"source": "local", "path": str(model_dir), "device": "cpu"}}
    cfg["counterfact"] = {
        "path": str(counterfact_path),
        "url": None,
        "sha256": None,
        "unique_subjects": True,
    }
    cfg["corpora"] = {
        "wikitext": {"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"}
    }
    cfg["stats"] = {"corpus": "wikitext", "n_docs": 8, "max_doc_tokens": 64}
    cfg.update(
        samples=1,
        n_edits=3,
        snapshot_every=2,
        experiments=[
            {"model": "tiny-local", "method": "ftc"},
            {"model": "tiny-local", "method": "mend"},
        ],
        editor_training={"n_train": 30, "n_val": 5, "seed": 3},
    )
    cfg["methods"] = {
        "ftc": {
            "editor": "ftc",
            "hparams": {"num_steps": 5, "lr": 5e-4, "norm_constraint": 5e-4},
            "per_model": {"tiny-local": {"layer": 0}},
        },
        "mend": {
            "editor": "mend",
            "hparams": {"n_last_layers": 3},
            "per_model": {"tiny-local": {}},
            "training": {
                "rank": 16,
                "lr": 1e-3,
                "lr_lr": 1e-3,
                "accumulate": 5,
                "max_steps": 10,
                "val_every": 5,
                "norm_records": 10,
                "loc_docs": 5,
                "loc_max_tokens": 32,
                "checkpoint_every": 5,
            },
        },
    }
    cfg["evaluation"] = {"forgetting_every": 0, "downstream_every": 0}
    cfg["resources"] = {}
    cfg.pop("downstream", None)
    cfg.pop("disabling", None)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    targets = [f"results/trajectories/tiny-local/{m}/sample0.csv" for m in ("ftc", "mend")]

    dry = snakemake("-n", "--configfile", str(config_file), "--directory", str(work), cwd=tmp_path)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["train_mend"] == 1 and counts["editor_split"] == 1 and counts["trajectory"] == 2
    assert counts["disabling"] == 2 and "download_editor" not in counts

    proc = snakemake(
        "--cores",
        "2",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        *targets,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    split = json.loads((work / "resources/data/editor_split.json").read_text())
    ordering = json.loads((work / "resources/data/orderings/sample0.json").read_text())
    assert not (set(split["train"]) | set(split["val"])) & set(ordering["case_ids"])
    assert ordering["n_reserved_for_editor_training"] == 35
    manifest = json.loads((work / "resources/editors/tiny-local/mend.safetensors.json").read_text())
    assert manifest["n_train"] == 30 and "es" in manifest["validation"]
    assert (work / "logs/train_mend/tiny-local/mend.log").is_file()
    for method, kind in (("ftc", "dense"), ("mend", "low_rank")):
        h5 = work / f"results/trajectories/tiny-local/{method}/sample0.h5"
        with h5py.File(h5, "r") as f:
            assert bool(f.attrs["complete"]) and f["updates/0"].attrs["kind"] == kind
        rows = list(csv.DictReader(open(h5.with_suffix(".csv"), newline="")))
        assert [int(r["case_id"]) for r in rows] == ordering["case_ids"][:3]
