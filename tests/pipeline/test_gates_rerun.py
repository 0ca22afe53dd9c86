"""A rerun of a world model's gates, failed or passed, leaves the finished edit jobs alone (issue
25): the gates are a barrier, not data (rules/common.smk, "model gates"; docs/recovery.md, "A
failed gate rerun").

The slow test runs the default config's rules on a tiny world (a few seconds of training, FT-C,
1 ordering x 4 edits) to the end, then makes model_gates fail with a config overlay and restores
the config: only the gates are planned again, not the trajectory, evaluation, disabling or figure
jobs. It also checks that the barrier holds (no edit job starts while the gates fail) and that a
rerun of the gates does not hide what the edit jobs need for their own reasons (changed params).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.organism.test_training import SPEC
from tests.pipeline.test_workflow import REPO, job_counts, snakemake

MODEL = "toy-llama"
GATES = f"resources/models/{MODEL}/gates.json"
MEASURED = f"resources/models/{MODEL}/gates.measured.json"
TRAJECTORY = f"results/trajectories/{MODEL}/ftc/sample0.h5"
# what a plan may hold after a rerun of the gates alone (run_config records the config)
GATES_ONLY = {"model_gates", "gates_passed", "run_config", "all"}
EDIT_JOBS = {"trajectory", "metrics_csv", "eval_chunk", "eval_merge", "disabling"}


def tiny_world_config() -> dict:
    """config/config.yaml on a small world and a tiny model: gates that pass (thresholds 0, no
    edit gates), FT-C only, 1 ordering x 4 edits."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["worlds"]["toy"] = {"seed": 37, **SPEC}
    model = cfg["models"][MODEL]
    model.update(n_layer=2, d_model=32, n_head=2, vocab_size=400, n_positions=256, device="cpu")
    model["training"] = {"batch_size": 4, "max_steps": 8, "lr": 3e-3, "warmup_steps": 2}
    model["training"]["checkpoint_every"] = 4
    model["gates"] = {"rewrite": 0.0, "paraphrase": 0.0, "neighborhood": 0.0, "downstream_f1": 0.0}
    cfg.update(
        samples=1, n_edits=4, snapshot_every=2, experiments=[{"model": MODEL, "method": "ftc"}]
    )
    cfg["methods"] = {"ftc": cfg["methods"]["ftc"]}
    cfg["methods"]["ftc"]["per_model"] = {MODEL: {"layer": 0, "num_steps": 2}}
    cfg["evaluation"].update(forgetting_every=2, downstream_every=4, chunk_size=10)
    cfg["evaluation"]["perplexity"].update(n_docs=4, pool_docs=10)
    cfg["evaluation"]["generation"].update(n_prompts=2, max_new_tokens=4)
    cfg["downstream"].update(tasks=["sst2"], n_per_label=2)
    cfg["resources"] = {MODEL: {"threads": 1}}
    return cfg


def planned(out: str) -> dict[str, int]:
    """The jobs a dry run plans, by rule."""
    counts = job_counts(out) if "Job stats:" in out else {}
    counts.pop("total", None)
    return counts


def ran(out: str) -> set[str]:
    """The rules whose jobs a (real) run started."""
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", out, re.M))


def results_mtimes(work: Path) -> dict[Path, int]:
    """Modification times of the edit jobs' results and the figures and tables."""
    return {
        p: p.stat().st_mtime_ns
        for kind in ("trajectories", "evaluations", "disabling", "figures")
        for p in (work / "results" / kind).rglob("*")
        if p.is_file()
    }


def test_gates_are_a_barrier_not_data(tmp_path):
    """The wiring the slow test relies on, in a dry run of the default config: model_gates writes
    the measurement, checkpoint gates_passed copies it to gates.json with the same inputs and
    params, and rule all asks for the measurement (so a failed one is made again)."""
    proc = snakemake("-n", "--directory", str(tmp_path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = {
        m.group(2): m.group(3)
        for m in re.finditer(r"^(?:local)?(rule|checkpoint) (\w+):\n((?:    .*\n)+)", out, re.M)
    }
    assert f"output: {MEASURED}\n" in jobs["model_gates"]
    assert re.search(r"^checkpoint gates_passed:$", out, re.M)
    assert f"output: {GATES}\n" in jobs["gates_passed"]
    gate_inputs = re.search(r"input: (.*)", jobs["model_gates"]).group(1).split(", ")
    passed_inputs = re.search(r"input: (.*)", jobs["gates_passed"]).group(1).split(", ")
    assert passed_inputs == [*gate_inputs, MEASURED]
    all_inputs = re.search(r"input: (.*)", jobs["all"]).group(1).split(", ")
    assert MEASURED in all_inputs
    assert GATES in re.search(r"input: (.*)", jobs["trajectory"]).group(1)


@pytest.mark.slow
def test_failed_gate_rerun_does_not_rerun_finished_edit_jobs(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_world_config()))
    tight = tmp_path / "tight.yaml"  # an overlay: gates the tiny model cannot pass
    tight.write_text(
        yaml.safe_dump(
            {
                "models": {
                    MODEL: {
                        "gates": dict.fromkeys(
                            ("rewrite", "paraphrase", "neighborhood", "downstream_f1"), 1.0
                        )
                    }
                }
            }
        )
    )
    work = tmp_path / "work"

    def run(*args: str, timeout: int = 900):
        proc = snakemake(*args, "--directory", str(work), cwd=tmp_path, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = run("--cores", "2", "--configfile", str(config))
    assert rc == 0, out[-6000:]
    assert EDIT_JOBS | {"figure1", "table2", "summary_table"} <= ran(out)
    assert json.loads((work / GATES).read_text())["passed"]
    finished = results_mtimes(work)

    # a tightened gate: model_gates reruns (its params changed) and fails; Snakemake deletes its
    # output, gates.json stays; nothing behind the gates is planned or run
    rc, out = run("-n", "--configfile", str(config), str(tight))
    assert rc == 0 and set(planned(out)) <= GATES_ONLY, out[-6000:]
    rc, out = run("--cores", "2", "--configfile", str(config), str(tight))
    assert rc != 0 and "misses its gates" in out, out[-6000:]
    assert ran(out) <= GATES_ONLY - {"gates_passed", "all"}, ran(out)
    assert not (work / MEASURED).exists() and (work / GATES).exists()

    # the barrier holds: while the gates fail, a new trajectory waits for them and never starts
    new_trajectory = TRAJECTORY.replace("sample0", "sample1")
    args = ("--configfile", str(config), str(tight), "--config", "samples=2")
    rc, out = run("--cores", "2", new_trajectory, *args)
    assert rc != 0 and "misses its gates" in out and "trajectory" not in ran(out), out[-6000:]
    assert not (work / new_trajectory).exists()

    # the config as it was: the gates are planned again, and nothing else (before: every
    # trajectory, evaluation, disabling and figure job, "Input files updated by another job")
    rc, out = run("-n", "--configfile", str(config))
    counts = planned(out)
    assert rc == 0 and "model_gates" in counts and set(counts) <= GATES_ONLY, out[-6000:]
    rc, out = run("--cores", "2", "--configfile", str(config))
    assert rc == 0 and ran(out) <= GATES_ONLY, out[-6000:]
    rc, out = run("-n", "--configfile", str(config))
    assert rc == 0 and "Nothing to be done" in out, out[-6000:]
    assert results_mtimes(work) == finished  # not one result rewritten

    # a rerun of the gates does not hide an edit job's own reason to run: a config that changes
    # a gate and FT-C's settings at once reruns the gates, then (after the checkpoint) FT-C
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        yaml.safe_dump(
            {
                "models": {MODEL: {"gates": {"rewrite": 0.01}}},
                "methods": {"ftc": {"per_model": {MODEL: {"layer": 0, "num_steps": 3}}}},
            }
        )
    )
    rc, out = run("--cores", "2", TRAJECTORY, "--configfile", str(config), str(changed))
    assert rc == 0 and {"model_gates", "gates_passed", "trajectory"} <= ran(out), out[-6000:]
    rc, out = run("-n", TRAJECTORY, "--configfile", str(config), str(changed))
    assert rc == 0 and "Nothing to be done" in out, out[-6000:]


def test_nothing_reads_the_gates_content():
    """gates.json is a barrier, not data: no job script but gates_passed's reads it, so that
    ancient() on it (the edit jobs' input) cannot hide a change from a consumer of its content
    (figures, tables and the summary read the trajectories and evaluations)."""
    readers = [
        path.name
        for path in sorted((REPO / "workflow" / "scripts").glob("*.py"))
        if re.search(r"input\.gates\b|input\[.gates.\]|input\.get\(.gates.\)", path.read_text())
    ]
    assert readers == []
    assert "ancient(gates)" in (REPO / "rules" / "common.smk").read_text()
