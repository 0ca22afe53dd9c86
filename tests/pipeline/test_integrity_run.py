"""A byte changed anywhere in a result file of a finished (reduced) run, then the job that reads
it: a refusal naming the file. Key statistics, trajectory, evaluation chunk and merged
evaluation each get changed bytes at seeded positions across the file, read back by the readers
their consumer jobs use; the text results the figure and table jobs read (per-edit metrics,
tidy downstream and collapse CSVs, the disabling analysis) a changed digit. Two changes go
through Snakemake itself (the probes of issue 25: a context template with its modification time
kept, then ``--forcerun disabling``; three bytes of ``forgetting/curve_paper``, then
``--forcerun figure1``)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import h5py
import pytest
import yaml

from editscale.io.h5 import DamagedFileError, open_verified
from tests.pipeline.test_workflow import snakemake, tiny_local_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_factory, counterfact_path):
    """One ordering of 4 ROME edits of a tiny GPT-2, evaluated in two chunks, with its disabling
    analysis and figures."""
    tmp = tmp_path_factory.mktemp("integrity_run")
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    cfg = tiny_local_config(model_dir, counterfact_path, n_docs=20, tasks=["sst2"])
    cfg["stats"].pop("convergence", None)
    cfg.update(samples=1, n_edits=4, snapshot_every=2)
    cfg["methods"]["rome"]["hparams"].update(v_num_grad_steps=3, context_template_lengths=[[5, 2]])
    cfg["evaluation"].update(forgetting_every=2, downstream_every=4, chunk_size=2)
    cfg["downstream"]["n_per_label"] = 2
    config_file = tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp / "work"
    proc = snakemake(
        "--cores", "2", "--configfile", str(config_file), "--directory", str(work), cwd=tmp
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return config_file, work


FILES = {
    "stats": "resources/stats/tiny-local/wikitext/layer1.h5",
    "trajectory": "results/trajectories/tiny-local/rome/sample0.h5",
    "chunk": "results/evaluations/tiny-local/rome/sample0/chunk0.h5",
    "evaluation": "results/evaluations/tiny-local/rome/sample0.h5",
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_a_flipped_byte_anywhere_is_refused_naming_the_file(finished_run, tmp_path, kind):
    _, work = finished_run
    original = work / FILES[kind]
    size = original.stat().st_size
    rng = random.Random(f"integrity-{kind}")
    # the seal, the first kilobytes (HDF5's superblock, root attributes), and spread over the rest
    offsets = [0, 100, 511, 512, 600] + sorted(rng.sample(range(size), 25)) + [size - 1]
    for offset in offsets:
        path = tmp_path / original.name
        shutil.copy(original, path)
        with open(path, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x20]))
        with pytest.raises(DamagedFileError, match=str(path)):
            open_verified(path).close()
    shutil.copy(original, tmp_path / "intact.h5")
    open_verified(tmp_path / "intact.h5").close()


TEXT_FILES = {
    "metrics": "results/trajectories/tiny-local/rome/sample0.csv",
    "downstream": "results/evaluations/tiny-local/rome/sample0_downstream.csv",
    "collapse": "results/evaluations/tiny-local/rome/sample0_collapse.csv",
    "disabling": "results/disabling/tiny-local/rome/sample0.json",
}


@pytest.mark.parametrize("kind", sorted(TEXT_FILES))
def test_a_changed_digit_in_a_text_result_is_refused_by_its_reader(finished_run, tmp_path, kind):
    """The text results the figure and table jobs read are sealed too: one digit changed is
    refused by the reader those jobs use, naming the file."""
    from editscale.reporting import figure_data

    readers = {
        "metrics": figure_data.load_metrics_csv,
        "downstream": figure_data._load_downstream_csv,
        "collapse": figure_data.load_collapse_csv,
        "disabling": lambda p: figure_data.load_disabling(
            [{"disabling": p, "method": "rome", "sample": 0, "label": "ROME"}]
        ),
    }
    _, work = finished_run
    path = tmp_path / Path(TEXT_FILES[kind]).name
    shutil.copy(work / TEXT_FILES[kind], path)
    shutil.copy(work / (TEXT_FILES[kind] + ".sha256"), str(path) + ".sha256")
    readers[kind](path)  # intact: read
    text = path.read_text()
    i = next(i for i, c in enumerate(text) if c.isdigit() and i > len(text) // 2)
    path.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :])
    with pytest.raises(DamagedFileError, match=f"{path}: its bytes are not those written"):
        readers[kind](path)


def _keep_mtime(path: Path, change) -> None:
    st = path.stat()
    with h5py.File(path, "r+") as f:
        change(f)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _restore(path: Path, saved: Path) -> None:
    shutil.copy2(saved, path)


def test_snakemake_jobs_refuse_changed_files_naming_them(finished_run, tmp_path):
    config_file, work = finished_run
    traj = work / FILES["trajectory"]
    saved = tmp_path / "traj.h5"
    shutil.copy2(traj, saved)

    def one_letter(f):
        ds = f["editor_state/context_templates"]
        text = ds[1].decode()
        ds[1] = ("Q" if text[0] != "Q" else "R") + text[1:]

    _keep_mtime(traj, one_letter)
    proc = snakemake(
        "--cores", "1", "--configfile", str(config_file), "--directory", str(work),
        "--forcerun", "disabling", cwd=work.parent,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    log = "".join(p.read_text() for p in (work / "logs" / "disabling").rglob("*.log"))
    assert f"{FILES['trajectory']}: its bytes are not those written" in log, log[-3000:]
    _restore(traj, saved)

    ev = work / FILES["evaluation"]
    saved_ev = tmp_path / "ev.h5"
    shutil.copy2(ev, saved_ev)
    with h5py.File(ev, "r") as f:
        ds = f["forgetting/curve_paper"]
        offset = ds.id.get_offset()
    assert offset is not None  # contiguous: three bytes of its values
    with open(ev, "r+b") as fh:
        fh.seek(offset + 9)
        fh.write(b"\x7f\x7f\x7f")
    proc = snakemake(
        "--cores", "1", "--configfile", str(config_file), "--directory", str(work),
        "--forcerun", "figure1", cwd=work.parent,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    log = "".join(p.read_text() for p in (work / "logs").rglob("figure1*/**/*.log")) + "".join(
        p.read_text() for p in (work / "logs").rglob("figure1*.log")
    )
    assert f"{FILES['evaluation']}: its bytes are not those written" in log + out, (log + out)[
        -3000:
    ]
    _restore(ev, saved_ev)
