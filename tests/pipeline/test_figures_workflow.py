"""The workflow's figure, table and report rules: the default DAG ends with them (dry run). The real
run of these rules and ``snakemake --report`` on it are in
tests/test_workflow.py::test_end_to_end_run_on_a_tiny_local_model."""

from __future__ import annotations

import re

import yaml

from editscale import config as escfg
from editscale.reporting import figure_data
from tests.pipeline.test_workflow import REPO, job_counts, snakemake


def test_default_dag_ends_with_figures_tables_and_report_items(shared_data):
    proc = snakemake("-n", "--forceall", cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    cfg = escfg.load_config(REPO / "config" / "config.yaml", base_dir=REPO)
    models = list(dict.fromkeys(m for m, _ in escfg.experiments(cfg)))
    counts = job_counts(out)
    n = len(models)
    assert counts["figure1"] == n and counts["figure2"] == n and counts["table2"] == n
    assert (
        counts["figure1_sample"] == n * cfg["samples"]
        and counts["figure2_sample"] == n * cfg["samples"]
    )
    assert counts["run_config"] == 1 and counts["runtime_table"] == 1
    all_inputs = re.search(r"(?:local)?rule all:\n\s+input: (.*)\n", out).group(1).split(", ")
    for model in models:
        for name in (
            "figure1.pdf",
            "figure1.png",
            "figure1.json",
            "figure2.pdf",
            "figure2.png",
            "figure2.json",
            "table2.md",
            "table2.csv",
            "table2.tex",
            "table2.json",
            "samples/figure1_sample0.json",
            "summary.md",
            "summary.csv",
            "summary.tex",
            "summary.json",
        ):
            assert f"results/figures/{model}/{name}" in all_inputs, name
    assert "results/report/runtime_summary.csv" in all_inputs
    # the methods of the default config are drawn in the paper's order
    layout = figure_data.figure_layout(cfg, models[0])
    assert [e["method"] for e in layout][:: cfg["samples"]] == figure_data.figure_methods(
        cfg, models[0]
    )


def test_lifelong_overlay_adds_the_batched_methods_and_draws_into_its_own_folder(
    shared_data, tmp_path
):
    proc = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "lifelong.yaml"),
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    counts = job_counts(out)
    samples = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["samples"]
    n = 12 * samples  # 12 methods, each on every ordering of the default
    assert counts["trajectory"] == n and counts["eval_merge"] == n
    assert counts["key_stats"] == 2  # layers 2, 3
    assert counts["summary_table"] == 1 and counts["figure1"] == 1
    all_inputs = re.search(r"(?:local)?rule all:\n\s+input: (.*)\n", out).group(1).split(", ")
    assert "results/figures/lifelong/toy-llama/summary.md" in all_inputs
    assert not any(p.startswith("results/figures/toy-llama/") for p in all_inputs)
    cfg = escfg.load_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()) | {})
    lifelong = yaml.safe_load((REPO / "config" / "lifelong.yaml").read_text())
    assert lifelong["methods"]["memit_b10"]["edits_per_step"] == 10
    assert {
        k: v for k, v in lifelong["methods"]["memit_b10"].items() if k != "edits_per_step"
    } == lifelong["methods"]["memit"]
    assert set(cfg["methods"]) < {e["method"] for e in lifelong["experiments"]}


def test_plot_environment_lists_what_the_plot_code_imports():
    env = yaml.safe_load((REPO / "envs" / "plot.yaml").read_text())
    names = {re.split(r"[=<> ]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
    assert {"python", "numpy", "h5py", "matplotlib", "pyyaml"} <= names
