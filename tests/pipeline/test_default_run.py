"""The embedded default, end to end: config/config.yaml with fewer edits (same world, same
training, same rules) runs offline through Snakemake: world, training, gates, statistics, ROME /
FT-C / MEND trajectories, evaluations, figures and the report. Slow (the model is trained for
real, as in the default run: about 15 minutes on 2 cores); CI runs it with the other slow tests."""

from __future__ import annotations

import json

import pytest
import yaml

from editscale.editing.store import read_metrics
from tests.pipeline.test_workflow import REPO, job_counts, snakemake

N_EDITS = 20
# MEND held-out efficacy: the default run measures 0.97 on 30 records; a broken editor gives ~0
MEND_VAL_ES = 0.7


@pytest.mark.slow
def test_reduced_default_config_runs_offline(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(n_edits=N_EDITS, snapshot_every=10, samples=2)  # the default: 10 orderings
    cfg["evaluation"].update(forgetting_every=10, downstream_every=N_EDITS, chunk_size=2)
    # The trained organism is the same bytes run after run on one machine, but not across CPU
    # types, and the default's gates sit close to what it reaches: on an AMD EPYC VM it trained to
    # MRPC F1 0.783 and single-edit ES 0.870 (the default asks 0.8 and 0.9; the committed run, on
    # an Intel Xeon VM, had ES 0.935), and `make run` stops at model_gates there, naming both.
    # This test checks the pipeline, not one machine's organism: it keeps every gate but asks
    # downstream F1 above chance (0.6) and reports the edit gates without enforcing them. That a
    # missed gate stops the run is tested in tests/editing/test_diagnostic.py.
    gates = next(iter(m["gates"] for m in cfg["models"].values() if m["source"] == "world"))
    gates["downstream_f1"] = 0.6
    gates["edit"]["enforce"] = False
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
        timeout=2400,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    counts = job_counts(out)
    for rule in ("world", "train_world_model", "model_gates", "key_stats", "train_mend"):
        assert counts[rule] == 1, rule
    methods = [e["method"] for e in cfg["experiments"]]
    assert {"rome", "rrome", "ftc", "mend"} <= set(methods)
    assert counts["trajectory"] == len(methods) * cfg["samples"]

    (model,) = [name for name, spec in cfg["models"].items() if spec["source"] == "world"]
    gates = json.loads((work / "resources" / "models" / model / "gates.json").read_text())
    assert gates["passed"], gates
    # the edit gates of the default config: 200 single ROME edits measured
    # against a real model's limits
    limits = cfg["models"][model]["gates"]["edit"]
    edit = gates["edit_values"]
    assert gates["edit_diagnostic"]["n_records"] == limits["n_records"] >= 200
    misses = {f.split(":")[0] for f in gates["edit_failures"]}
    expected = {
        name
        for name, ok in (
            ("edit_ratio_median", edit["edit_ratio_median"] <= limits["max_ratio_median"]),
            ("edit_es", edit["edit_es"] >= limits["min_es"]),
            ("edit_ps", edit["edit_ps"] >= limits["min_ps"]),
            ("edit_ns_drop", edit["edit_ns_drop"] <= limits["max_ns_drop"]),
        )
        if not ok
    }
    assert misses == expected and gates["passed_edit"] == (not misses), gates
    if limits.get("enforce", True):
        assert not misses, gates
    # single ROME edits on a model that knows its facts succeed: the default run measures ES 0.935
    # over 200 single edits (docs/organism.md, "Single-edit diagnostic"); a broken ROME or model
    # gives ~0
    assert edit["edit_es"] >= 0.8, edit
    assert (work / "resources" / "models" / model / "edit_diagnostic" / "records.csv").exists()
    log = (work / "logs" / "train_world_model" / f"{model}.log").read_text()
    assert "tokens/s" in log and "model written" in log  # progress lines

    # MEND's editor, trained on records of a model that knows its facts, edits held-out records
    # (before editing, P(new) > P(true) on under 1% of them): a broken editor gives ~0; see the
    # docs/results.md for the value the default run measures on its validation records
    editor = json.loads(
        next((work / "resources" / "editors" / model).glob("mend*.json")).read_text()
    )
    assert editor["n_val"] >= 30, editor["n_val"]
    assert editor["validation"]["es"] >= MEND_VAL_ES, editor["validation"]

    for method in methods:
        for sample in range(cfg["samples"]):
            metrics = read_metrics(
                work / "results" / "trajectories" / model / method / f"sample{sample}.h5"
            )
            assert list(metrics["edit"]) == list(range(1, N_EDITS + 1)), (method, sample)
    # ROME edits of a model that knows its facts succeed (before any collapse)
    csv_text = (
        (work / "results" / "trajectories" / model / "rome" / "sample0.csv")
        .read_text()
        .splitlines()
    )
    header = csv_text[0].split(",")
    es = [float(row.split(",")[header.index("es")]) for row in csv_text[1:]]
    assert len(es) == N_EDITS and sum(es[:10]) >= 8, es

    figures = work / "results" / "figures" / model  # figures.dir; figures/ is the committed copy
    assert not (work / "figures").exists()
    for name in (
        "figure1.pdf",
        "figure1.png",
        "figure2.pdf",
        "figure2.png",
        "table2.md",
        "figure1.json",
    ):
        assert (figures / name).exists(), name

    report = tmp_path / "report.html"
    proc = snakemake(
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        "--report",
        str(report),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert report.stat().st_size > 100_000
