"""Tests of the Snakemake workflow: lint, dry runs of the shipped configs, start-up config errors,
a real end-to-end run on a tiny local model, and the provenance helpers the workflow stamps."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from editscale.editing.key_stats import stats_attrs
from editscale.io import provenance
from tests.conftest import WIKITEXT

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"


def snakemake(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the project's snakemake (the interpreter running the tests) on the repo's Snakefile."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def planned_jobs(output: str) -> dict[tuple[str, str], dict]:
    """{(rule, model wildcard): {"local", "threads", "resources": {name: value}}} of a dry run's
    job listing (the last job of each pair wins)."""
    jobs = {}
    for m in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n)+)", output, re.M):
        body = m.group(3)
        model = re.search(r"wildcards: .*?\bmodel=([^,\s]+)", body)
        threads = re.search(r"threads: (\d+)", body)
        res = re.search(r"resources: (.*)", body)
        jobs[(m.group(2), model.group(1) if model else "")] = {
            "local": bool(m.group(1)),
            "threads": threads.group(1) if threads else None,
            "resources": dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {},
        }
    return jobs


def test_lint_is_clean(tmp_path):
    proc = snakemake("--lint", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which(
        "snakefmt"
    )
    if snakefmt is None:
        pytest.skip("snakefmt not installed")
    files = [str(SNAKEFILE), *map(str, sorted((REPO / "rules").glob("*.smk")))]
    fmt = subprocess.run([snakefmt, "--check", *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_python_lint_is_clean():
    """ruff (format and lint, 100 columns; settings in pyproject.toml) on every Python folder, as
    `make lint` runs it."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is pinned in requirements.txt"
    sources = ["src", "tests", "workflow", "benchmarks"]
    for args in (["format", "--check", *sources], ["check", *sources]):
        proc = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"ruff {args[0]}:\n{proc.stdout}{proc.stderr}"
    assert "PY_SOURCES := " + " ".join(sources) in (REPO / "Makefile").read_text()


def test_paper_config_dry_run_plans_twenty_trajectories(tmp_path):
    """config/paper.yaml resolves without network: 2 models x 3 methods (FT-C, MEND, ROME) x 10
    samples, MEND with the authors' public editors (downloaded, nothing trained or reserved).
    Planned with the SLURM profile: the heavy jobs get the per-model (and per-rule) resources of
    the config."""
    # a dry run caps every job's threads at --cores (1 when not given, snakemake >= 9.2x); a real
    # SLURM run does not, so give a bound above any job's threads to see what SLURM would get
    proc = snakemake(
        "-n",
        "--cores",
        "64",
        "--configfile",
        str(REPO / "config" / "paper.yaml"),
        "--directory",
        str(tmp_path),
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out)
    assert counts["trajectory"] == 60 and counts["metrics_csv"] == 60
    # ROME: one layer per model, its statistics ROME's published ones
    # (stats.published), not computed
    assert (
        counts["prepare_model"] == 2 and counts["import_stats"] == 2 and "key_stats" not in counts
    )
    assert (
        counts["download_editor"] == 2
        and "train_mend" not in counts
        and "editor_split" not in counts
    )
    assert counts["ordering"] == 10 and counts["counterfact"] == 1
    # 1200 edits, forgetting every 10, downstream every 5: 241 checkpoints in chunks of 50 = 5 jobs;
    # disabling jobs for ROME only (the paper's Table 2)
    assert (
        counts["eval_chunk"] == 60 * 5 and counts["eval_merge"] == 60 and counts["disabling"] == 20
    )
    assert counts["downstream_set"] == 4
    for path in (
        "resources/stats_published/gpt-j-6b/layer5.h5",
        "resources/stats_published/gpt2-xl/layer17.h5",
        "results/trajectories/gpt2-xl/rome/sample9.h5",
        "resources/editors/gpt-j-6b/mend.pt",
    ):
        assert path in out
    assert not (tmp_path / "resources").exists()  # a dry run writes nothing
    # the shipped default config is not merged in: no tiny model in the paper's plan
    assert "tiny-gpt2" not in out
    # what each job asks SLURM for (config/paper.yaml resources; profiles/slurm partition)
    jobs = planned_jobs(out)
    assert (
        jobs[("trajectory", "gpt-j-6b")]["resources"].items()
        >= {"gpu": "1", "mem_mb": "64000", "runtime": "1440"}.items()
    )
    assert (
        jobs[("trajectory", "gpt2-xl")]["resources"].items()
        >= {"gpu": "1", "mem_mb": "32000", "runtime": "1440"}.items()
    )
    assert (
        jobs[("eval_chunk", "gpt-j-6b")]["resources"].items()
        >= {"gpu": "1", "runtime": "720"}.items()
    )
    # import_stats downloads: a local rule on the submitting host (a dry run under the slurm
    # executor prints no "localrule"), sized for the .npz, not the model
    local = re.search(r"^localrules:\n((?:    \w+,?\n)+)", SNAKEFILE.read_text(), re.M)
    assert "import_stats" in local.group(1).replace(",", " ").split()
    assert jobs[("import_stats", "gpt2-xl")]["resources"].items() >= {"mem_mb": "6000"}.items()
    assert jobs[("trajectory", "gpt-j-6b")]["threads"] == "8"


def test_default_config_dry_run(tmp_path):
    """The embedded default plans the whole experiment from nothing but the repository."""
    proc = snakemake("-n", "--directory", str(tmp_path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # the paper's density of editing (GPT-J 0.07, GPT-2 XL 0.19 edits per key dimension of the
    # edited matrix, whose input is the MLP's hidden width), over several orderings (paper: 10)
    organism = cfg["models"]["toy-llama"]
    d_mlp = organism.get("d_mlp") or 4 * organism["d_model"]
    assert 0.05 <= cfg["n_edits"] / d_mlp <= 0.5 and 2 <= cfg["samples"] <= 10
    methods = {e["method"] for e in cfg["experiments"]}
    assert methods == {"rome", "rrome", "ftc", "mend"}
    assert cfg["methods"]["rrome"]["hparams"]["key_mode"] == "homogeneous"
    assert cfg["methods"]["rome"]["hparams"]["key_mode"] == "original"
    # r-ROME differs from ROME by its key only
    same = {k: v for k, v in cfg["methods"]["rrome"]["hparams"].items() if k != "key_mode"}
    assert same == {k: v for k, v in cfg["methods"]["rome"]["hparams"].items() if k != "key_mode"}
    for rule in (
        "world",
        "train_world_model",
        "model_gates",
        "key_stats",
        "train_mend",
        "counterfact",
    ):
        assert counts[rule] == 1, rule
    assert "prepare_model" not in counts  # the model is trained here, not downloaded
    assert counts["trajectory"] == len(methods) * cfg["samples"] and counts["figure1"] == 1
    assert "resources/worlds/toy/corpus_heldout.jsonl" in out
    assert not (tmp_path / "resources").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("n_edits=-1", "n_edits"),
        ("samples=0", "samples"),
        ("experiments=[{model: nope, method: rome}]", "experiments[0].model"),
    ],
)
def test_bad_config_fails_at_start_up(tmp_path, override, key):
    proc = snakemake(
        "-n",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--config",
        override,
        "--directory",
        str(tmp_path),
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key.split("[")[0] in out and "Job stats" not in out, out
    assert not (tmp_path / "resources").exists()


def test_misspelled_key_is_one_short_message(tmp_path):
    """A misspelled top-level key: a few lines naming the key and the closest known one (Snakemake's
    own schema validation printed the whole schema, ~1,700 lines)."""
    text = (REPO / "config" / "config.yaml").read_text().replace("\nn_edits:", "\nn_edit:")
    assert "\nn_edit:" in text
    config_file = tmp_path / "c.yaml"
    config_file.write_text(text)
    proc = snakemake(
        "-n", "--configfile", str(config_file), "--directory", str(tmp_path), cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # the file is checked on its own first, so the message names it (issue 25)
    assert (
        f"config file {config_file}: key 'n_edit': is not a known key here (did you mean 'n_edits'?"
        in out
    ), out
    assert len(out.splitlines()) < 20, out


def tiny_local_config(model_dir, counterfact_path, *, n_docs: int, tasks: list[str]) -> dict:
    """The default config on a tiny local model ("tiny-local"): ROME only (layer 1), the real
    CounterFact subset, WikiText statistics over ``n_docs`` documents, GLUE ``tasks`` from the
    shared files, no resources."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"] = {"tiny-local": {"source": "local", "path": str(model_dir), "device": "cpu"}}
    cfg["counterfact"]["path"] = str(counterfact_path)
    cfg["corpora"] = {
        "wikitext": {"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"}
    }
    cfg["stats"].update(corpus="wikitext", n_docs=n_docs, max_doc_tokens=64)
    cfg["experiments"] = [{"model": "tiny-local", "method": "rome"}]
    cfg["methods"] = {"rome": cfg["methods"]["rome"]}  # the default config also has FT-C and MEND
    cfg["methods"]["rome"]["per_model"] = {"tiny-local": {"layer": 1}}
    cfg["resources"] = {}
    cfg["downstream"]["tasks"] = tasks
    cfg["downstream"]["source"] = {
        "type": "glue_files",
        "path": str(counterfact_path.parents[1] / "glue"),
    }
    return cfg


def test_end_to_end_run_on_a_tiny_local_model(tmp_path, tiny_model_factory, counterfact_path):
    """2 orderings x 5 ROME edits of a tiny local GPT-2,
    real CounterFact and WikiText statistics."""
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    n_edits, samples = 5, 2
    cfg = tiny_local_config(model_dir, counterfact_path, n_docs=40, tasks=["sst2", "rte"])
    # the statistics stop once u = C^-1 k of 3 CounterFact subjects has settled: with this
    # tolerance at the first check that has a previous, non-singular C to compare with
    cfg["stats"]["convergence"] = {
        "n_probes": 3,
        "tolerance": 100.0,
        "check_every_docs": 4,
        "patience": 1,
    }
    cfg.update(samples=samples, n_edits=n_edits, snapshot_every=2)
    cfg["evaluation"].update(forgetting_every=2, downstream_every=5, chunk_size=2)
    cfg["downstream"]["n_per_label"] = 3
    cfg["methods"]["rome"]["hparams"].update(
        v_num_grad_steps=5, context_template_lengths=[[5, 2], [10, 2]]
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"

    proc = snakemake(
        "--cores", "2", "--configfile", str(config_file), "--directory", str(work), cwd=tmp_path
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    assert (work / "resources/models/tiny-local/editscale_manifest.json").is_file()
    stats = work / "resources/stats/tiny-local/wikitext/layer1.h5"
    with h5py.File(stats, "r") as f:
        assert f.attrs["layer"] == 1 and f.attrs["corpus"] == "wikitext"
        assert f.attrs["model_id"].startswith("local:")
    conv = stats_attrs(stats)
    hist = conv["convergence_history"]
    assert (
        conv["converged"] is True and conv["n_docs"] == hist[-1][0] < conv["n_docs_requested"] == 40
    )
    assert hist[-1][2] < 100.0 and all(h[2] is None for h in hist[:-1]) and len(hist) >= 2
    assert conv["convergence"]["probe_source"].startswith("CounterFact case_ids ")
    for sample in range(samples):
        ordering = json.loads((work / f"resources/data/orderings/sample{sample}.json").read_text())
        assert ordering["sample"] == sample and ordering["seed"] == cfg["ordering_seed"]
        h5 = work / f"results/trajectories/tiny-local/rome/sample{sample}.h5"
        with h5py.File(h5, "r") as f:
            assert bool(f.attrs["complete"])
            assert f.attrs["config_hash"] and "git_commit" in json.loads(f.attrs["environment"])
        with open(h5.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n_edits
        assert [int(r["case_id"]) for r in rows] == ordering["case_ids"][:n_edits]
        assert [int(r["edit"]) for r in rows] == list(range(1, n_edits + 1))
        for name in (
            "logs/trajectory/tiny-local/rome/sample{}.log",
            "results/benchmarks/trajectory/tiny-local/rome/sample{}.tsv",
        ):
            assert (work / name.format(sample)).is_file()

        # evaluations: checkpoints 0, 2, 4, 5 in two chunks, merged; disabling edits measured
        ev = work / f"results/evaluations/tiny-local/rome/sample{sample}"
        assert (ev / "chunk0.h5").is_file() and (ev / "chunk1.h5").is_file()
        with h5py.File(f"{ev}.h5", "r") as f:
            assert list(f["forgetting/checkpoints"][()]) == [2, 4]
            assert list(f["downstream/checkpoints"][()]) == [0, 5]
            assert f["downstream/rte/f1"].shape == (2,)
        down = list(csv.DictReader(open(f"{ev}_downstream.csv")))
        assert {r["task"] for r in down} == {"sst2", "rte"}
        # collapse measures at every checkpoint, on the one probe of the run
        ppl = {
            int(r["checkpoint"]): float(r["value"])
            for r in csv.DictReader(open(f"{ev}_collapse.csv"))
            if r["metric"] == "perplexity"
        }
        assert sorted(ppl) == [0, 2, 4, 5] and all(v > 1 for v in ppl.values())
        assert float(rows[0]["weight_norm_0"]) > 0
        dis = json.loads(
            (work / f"results/disabling/tiny-local/rome/sample{sample}.json").read_text()
        )
        assert dis["n_edits"] == n_edits and dis["summary"]["normal"]["count"] >= 1

    # figures and tables of the model, each with its provenance sidecar; the runtime table. They
    # go under results/ (figures.dir), not into the committed reference folder figures/
    figs = work / "results/figures/tiny-local"
    assert not (work / "figures").exists()
    for name in (
        "figure1.pdf",
        "figure1.png",
        "figure2.pdf",
        "figure2.png",
        "table2.md",
        "table2.csv",
        "table2.tex",
        "table2_generations.csv",
        "samples/figure1_sample1.pdf",
        "samples/figure2_sample0.png",
        "collapse.pdf",
        "collapse.png",
    ):
        assert (figs / name).stat().st_size > 0, name
    for name in (
        "figure1",
        "figure2",
        "table2",
        "samples/figure1_sample0",
        "samples/figure2_sample1",
        "collapse",
    ):
        side = json.loads((figs / f"{name}.json").read_text())
        assert side["config"]["n_edits"] == n_edits and side["git"]["commit"] and side["digest"]
        assert side["models"]["tiny-local"]["model_id"].startswith("local:")
    side = json.loads((figs / "figure1.json").read_text())
    assert side["rule"] == "figure1"
    assert set(side["hdf5_inputs"]) == {
        f"results/evaluations/tiny-local/rome/sample{s}.h5" for s in range(samples)
    }
    # the lifelong summary: one row per method, the means over samples of the per-trajectory numbers
    with open(figs / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["method"] for r in summary] == ["rome"] and int(summary[0]["samples"]) == samples
    es = [
        np.mean(
            [
                float(r["es"])
                for r in csv.DictReader(
                    open(work / f"results/trajectories/tiny-local/rome/sample{s}.csv")
                )
            ]
        )
        for s in range(samples)
    ]
    assert float(summary[0]["es_last"]) == pytest.approx(np.mean(es))
    assert int(summary[0]["known_checkpoint"]) == 4 and 0 <= float(summary[0]["known_end"]) <= 1
    f1_0 = [
        np.mean(
            [
                float(r["value"])
                for r in csv.DictReader(
                    open(work / f"results/evaluations/tiny-local/rome/sample{s}_downstream.csv")
                )
                if r["metric"] == "f1" and r["checkpoint"] == "0"
            ]
        )
        for s in range(samples)
    ]
    assert float(summary[0]["f1_unedited"]) == pytest.approx(
        np.mean(f1_0)
    )  # retained: "" when it is 0
    assert float(summary[0]["norm_growth"]) > 0
    assert (
        "| ROME | 1 |" in (figs / "summary.md").read_text()
        and "tabular" in (figs / "summary.tex").read_text()
    )
    assert json.loads((figs / "summary.json").read_text())["rule"] == "summary_table"
    with open(work / "results/report/runtime_summary.csv", newline="") as f:
        runtime = {r["rule"]: r for r in csv.DictReader(f)}
    assert set(runtime) >= {"prepare_model", "key_stats", "trajectory", "eval_chunk", "disabling"}
    assert int(runtime["eval_chunk"]["jobs"]) == 2 * samples

    # the self-contained report: every figure and table with its caption, config and runtime
    report = tmp_path / "report.html"
    proc = snakemake(
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    html = report.read_text()
    assert len(html) > 100_000
    for caption in (
        "Figure 1 (tiny-local)",
        "Figure 2 (tiny-local)",
        "Table 2 (tiny-local)",
        "Figure 1, sample 1",
        "Collapse measures (tiny-local)",
        "Lifelong-editing summary (tiny-local)",
        "Runtime of the heavy jobs",
        "Configuration of this run",
        "experiments (model / method)",
    ):
        assert caption in html, caption

    # Everything is up to date afterwards: a second dry run plans nothing.
    again = snakemake(
        "-n", "--configfile", str(config_file), "--directory", str(work), cwd=tmp_path
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


# ---------------------------------------------------------------- provenance


def test_environment_records_versions_host_and_git():
    env = provenance.environment()
    for key in ("python", "platform", "hostname", "cpu", "gpus", "git_commit", "git_dirty"):
        assert key in env
    for pkg in ("torch", "transformers", "numpy", "h5py", "snakemake", "datasets", "tokenizers"):
        assert env["packages"][pkg]
    json.dumps(env)


def test_git_state_outside_a_repository(tmp_path):
    assert provenance.git_state(tmp_path) == {"git_commit": None, "git_dirty": None}


def test_config_hash_is_canonical():
    a = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    b = {"a": {"x": None, "y": 1.5}, "b": [1, 2]}
    assert provenance.config_hash(a) == provenance.config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", provenance.config_hash(a))
    assert provenance.config_hash(a) != provenance.config_hash({**a, "c": 0})
