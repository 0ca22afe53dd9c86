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
import pytest
import yaml

from conftest import WIKITEXT
from editscale import provenance

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def snakemake(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the project's snakemake (the interpreter running the tests) on the repo's Snakefile."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_lint_is_clean(tmp_path):
    proc = snakemake("--lint", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt not installed")
    files = [str(SNAKEFILE), *map(str, sorted((REPO / "rules").glob("*.smk")))]
    fmt = subprocess.run([snakefmt, "--check", *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_paper_config_dry_run_plans_twenty_trajectories(tmp_path):
    """config/paper.yaml resolves without network: 2 models x 1 method x 10 samples."""
    proc = snakemake("-n", "--configfile", str(REPO / "config" / "paper.yaml"), "--directory", str(tmp_path),
                     cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out)
    assert counts["trajectory"] == 20 and counts["metrics_csv"] == 20
    assert counts["prepare_model"] == 2 and counts["key_stats"] == 2  # one layer per model
    assert counts["ordering"] == 10 and counts["counterfact"] == 1
    # 3000 edits, forgetting every 10, downstream every 5: 601 checkpoints in chunks of 50 = 13 jobs
    assert counts["eval_chunk"] == 20 * 13 and counts["eval_merge"] == 20 and counts["disabling"] == 20
    assert counts["downstream_set"] == 4
    for path in ("resources/stats/gpt-j-6b/wikipedia/layer5.h5", "resources/stats/gpt2-xl/wikipedia/layer17.h5",
                 "results/trajectories/gpt2-xl/rome/sample9.h5"):
        assert path in out
    assert not (tmp_path / "resources").exists()  # a dry run writes nothing
    # the shipped default config is not merged in: no tiny model in the paper's plan
    assert "tiny-gpt2" not in out


def test_default_config_dry_run(shared_data):
    proc = snakemake("-n", cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out) if "Job stats:" in out else {}
    if counts:  # nothing to do when the default workflow already ran here
        assert counts.get("trajectory", 0) <= 2


@pytest.mark.parametrize("override, key", [
    ("n_edits=-1", "n_edits"),
    ("samples=0", "samples"),
    ("experiments=[{model: nope, method: rome}]", "experiments[0].model"),
])
def test_bad_config_fails_at_start_up(tmp_path, override, key):
    proc = snakemake("-n", "--configfile", str(REPO / "config" / "config.yaml"), "--config", override,
                     "--directory", str(tmp_path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key.split("[")[0] in out and "Job stats" not in out, out
    assert not (tmp_path / "resources").exists()


def test_end_to_end_run_on_a_tiny_local_model(tmp_path, tiny_model_factory, counterfact_path):
    """2 orderings x 5 ROME edits of a tiny local GPT-2, real CounterFact and WikiText statistics."""
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    n_edits, samples = 5, 2
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"] = {"tiny-local": {"source": "local", "path": str(model_dir), "device": "cpu"}}
    cfg["counterfact"]["path"] = str(counterfact_path)
    cfg["corpora"]["wikitext"]["paths"] = [str(WIKITEXT)]
    cfg["stats"].update(n_docs=8, max_doc_tokens=64)
    cfg.update(samples=samples, n_edits=n_edits, snapshot_every=2,
               experiments=[{"model": "tiny-local", "method": "rome"}])
    cfg["evaluation"].update(forgetting_every=2, downstream_every=5, chunk_size=2)
    cfg["downstream"].update(tasks=["sst2", "rte"], n_per_label=3,
                             source={"type": "glue_files", "path": str(counterfact_path.parents[1] / "glue")})
    cfg["methods"]["rome"]["per_model"] = {"tiny-local": {"layer": 1}}
    cfg["methods"]["rome"]["hparams"].update(v_num_grad_steps=5,
                                             context_template_lengths=[[5, 2], [10, 2]])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"

    proc = snakemake("--cores", "2", "--configfile", str(config_file), "--directory", str(work), cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    assert (work / "resources/models/tiny-local/editscale_manifest.json").is_file()
    stats = work / "resources/stats/tiny-local/wikitext/layer1.h5"
    with h5py.File(stats, "r") as f:
        assert f.attrs["layer"] == 1 and f.attrs["corpus"] == "wikitext"
        assert f.attrs["model_id"].startswith("local:")
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
        for name in ("logs/trajectory/tiny-local/rome/sample{}.log", "results/benchmarks/trajectory/tiny-local/rome/sample{}.tsv"):
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
        dis = json.loads((work / f"results/disabling/tiny-local/rome/sample{sample}.json").read_text())
        assert dis["n_edits"] == n_edits and dis["summary"]["normal"]["count"] >= 1

    # Everything is up to date afterwards: a second dry run plans nothing.
    again = snakemake("-n", "--configfile", str(config_file), "--directory", str(work), cwd=tmp_path)
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
