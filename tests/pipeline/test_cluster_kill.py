"""A job killed the way a cluster kills it at its time limit (SIGTERM to every process, SIGKILL
after a grace period) continues where it stopped when Snakemake reruns it with --rerun-incomplete,
and ends with the same trajectory as an uninterrupted run.

The local executor stands in for the cluster: what matters is what the kill leaves behind (a
``.partial`` trajectory, Snakemake's incomplete marker) and what the rerun does with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from editscale.editing.store import read_metrics
from tests.conftest import WIKITEXT

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
N_EDITS = 25
TARGET = "results/trajectories/tiny-local/rome/sample0.h5"
TIMINGS = {"edit_seconds", "eval_seconds"}


def tiny_workflow_config(
    model_dir: Path, counterfact_path: Path, *, n_edits: int, **overrides
) -> dict:
    """A self-contained workflow config for a tiny local GPT-2, ROME on the real CounterFact subset
    and WikiText statistics (independent of config/config.yaml, which other work changes)."""
    hparams = dict(
        yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["methods"]["rome"]["hparams"]
    )
    hparams.update(v_num_grad_steps=10, context_template_lengths=[[5, 2], [10, 2]])
    cfg = {
        "seed": 37,
        "models": {"tiny-local": {"source": "local", "path": str(model_dir), "device": "cpu"}},
        "counterfact": {"path": str(counterfact_path), "url": None},
        "corpora": {
            "wikitext": {"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"}
        },
        "stats": {"corpus": "wikitext", "n_docs": 8, "max_doc_tokens": 64},
        "samples": 1,
        "ordering_seed": 37,
        "n_edits": n_edits,
        "snapshot_every": 7,
        "experiments": [{"model": "tiny-local", "method": "rome"}],
        "methods": {
            "rome": {
                "editor": "rome",
                "hparams": hparams,
                "per_model": {"tiny-local": {"layer": 1}},
            }
        },
        "evaluation": {
            "forgetting_every": 2,
            "downstream_every": 4,
            "chunk_size": 4,
            "forgetting_paraphrases": False,
        },
        "downstream": {
            "tasks": ["sst2"],
            "n_per_label": 2,
            "source": {"type": "glue_files", "path": str(counterfact_path.parents[1] / "glue")},
        },
        "disabling": {"min_history": 3, "refractory": 3, "min_normal": 3},
        "resources": {"tiny-local": {"threads": 1}},
    }
    cfg.update(overrides)
    return cfg


def _config(tmp_path: Path, model_dir: Path, counterfact_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(tiny_workflow_config(model_dir, counterfact_path, n_edits=N_EDITS))
    )
    return path


def _snakemake_cmd(config: Path, work: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--cores",
        "1",
        "--configfile",
        str(config),
        "--directory",
        str(work),
        *extra,
        TARGET,
    ]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _n_done(partial: Path) -> int:
    """Edits recorded in a trajectory being written (0 when it cannot be read right now)."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f.attrs["n_done"])
    except (OSError, KeyError, ValueError):
        return 0


def test_killed_trajectory_job_resumes_under_rerun_incomplete(
    tmp_path, tiny_model_factory, counterfact_path
):
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=128)
    config = _config(tmp_path, model_dir, counterfact_path)

    # an uninterrupted run: the reference
    ref = tmp_path / "reference"
    proc = subprocess.run(
        _snakemake_cmd(config, ref), capture_output=True, text=True, env=_env(), timeout=900
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    # the same run, killed like a job at its time limit once a few edits are stored
    work = tmp_path / "killed"
    partial = work / (TARGET + ".partial")
    # the same model, data and statistics as the reference (saves their jobs;
    # only the trajectory runs)
    shutil.copytree(ref / "resources", work / "resources", symlinks=True)
    log = (tmp_path / "killed.out").open("w")
    proc = subprocess.Popen(
        _snakemake_cmd(config, work),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while _n_done(partial) < 3:
            assert proc.poll() is None, (
                "snakemake ended before the kill:\n" + (tmp_path / "killed.out").read_text()[-5000:]
            )
            assert time.monotonic() < deadline, "the trajectory stored no edits in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # SIGTERM to snakemake and the job's processes
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever survived the grace period
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()
    done = _n_done(partial)
    assert 3 <= done < N_EDITS, f"killed after {done} of {N_EDITS} edits"
    assert not (work / TARGET).exists()

    # the rerun (what a resubmission after the kill does) continues from the .partial file
    proc = subprocess.run(
        _snakemake_cmd(config, work, "--rerun-incomplete"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    traj_log = (work / "logs/trajectory/tiny-local/rome/sample0.log").read_text()
    resumed_at = [
        int(line.split("after edit ")[1].split()[0])
        for line in traj_log.splitlines()
        if "resuming" in line and "after edit" in line
    ]
    assert resumed_at and resumed_at[-1] >= done, traj_log[-3000:]
    assert not partial.exists()

    # the resumed trajectory is the uninterrupted one
    a, b = read_metrics(ref / TARGET), read_metrics(work / TARGET)
    assert set(a) == set(b)
    for key in a:
        if key not in TIMINGS:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with h5py.File(ref / TARGET, "r") as fa, h5py.File(work / TARGET, "r") as fb:
        assert bool(fb.attrs["complete"]) and int(fb.attrs["n_done"]) == N_EDITS
        np.testing.assert_array_equal(fa["updates/0/u"][()], fb["updates/0/u"][()])
        np.testing.assert_array_equal(fa["updates/0/v"][()], fb["updates/0/v"][()])
        last = max(fa["snapshots/0"].keys(), key=int)
        np.testing.assert_array_equal(fa[f"snapshots/0/{last}"][()], fb[f"snapshots/0/{last}"][()])

    # Snakemake considers the result complete: nothing left to do
    again = subprocess.run(
        _snakemake_cmd(config, work, "-n"), capture_output=True, text=True, env=_env(), timeout=300
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
