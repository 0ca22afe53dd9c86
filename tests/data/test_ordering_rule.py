"""Rule ordering through Snakemake: with records reserved for training an editor, the ordering is
the authors' shuffle of all usable records with the reserved ones struck out; n_edits is a param,
so a larger n_edits re-runs the rule, whose check then stops the run."""

from __future__ import annotations

import json

import yaml

from editscale.data import counterfact
from tests.conftest import WIKITEXT
from tests.pipeline.test_workflow import REPO, snakemake


def test_ordering_rule_drops_reserved_records_after_shuffling_and_checks_n_edits(
    tmp_path, tiny_model_factory, counterfact_path
):
    model_dir = tiny_model_factory("gpt2")
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
    cfg["stats"] = {"corpus": "wikitext"}
    cfg.update(
        samples=2,
        n_edits=20,
        experiments=[{"model": "tiny-local", "method": "mend"}],
        editor_training={"n_train": 30, "n_val": 5, "seed": 3, "corpus": "wikitext"},
    )
    cfg["methods"] = {
        "mend": {"editor": "mend", "hparams": {"n_last_layers": 3}, "per_model": {"tiny-local": {}}}
    }
    cfg["resources"] = {}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    target = "resources/data/orderings/sample1.json"

    proc = snakemake(
        "--cores",
        "1",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        target,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    split = json.loads((work / "resources/data/editor_split.json").read_text())
    reserved = set(split["train"]) | set(split["val"])
    ordering = json.loads((work / target).read_text())
    ids = [
        r["case_id"]
        for r in counterfact.unique_subject_records(counterfact.load_counterfact(counterfact_path))
    ]
    full = counterfact.make_orderings(sorted(ids), 2, seed=37)[1]
    assert ordering["case_ids"] == [c for c in full if c not in reserved]
    assert ordering["n_reserved_for_editor_training"] == 35 and ordering["n_shuffled"] == len(ids)
    assert ordering["n_records"] == len(ids) - 35

    # more edits than records left: the local file is checked at start-up, before any job (rule
    # ordering checks again for a file that a rule makes or downloads)
    too_many = len(ids) - 35 + 1
    proc = snakemake(
        target,
        "--cores",
        "1",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        "--config",
        f"n_edits={too_many}",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"config key 'n_edits': {too_many} edits asked but" in out
    assert (
        f"has {len(ids) - 35} records to edit ({len(ids)} usable, 35 reserved for editor training)"
        in out
    )
    assert "Job stats" not in out
