"""Where a config comes from (issue 25): each --configfile file is checked on its own, so that a
mistake names the file, and a workflow target written after --configfile (which takes every word
after it) says how to give targets; --config sets top-level keys only, and a nested key says how
to give an overlay file. And where a run's figures go: under results/ (git-ignored), never into
the committed reference folder figures/, which only `make publish-figures` changes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from editscale import config as escfg
from tests.pipeline.test_workflow import REPO, snakemake

DEFAULT = str(REPO / "config" / "config.yaml")
CONFIGS = {  # the shipped runs: their config files
    "default": ["config.yaml"],
    "lifelong": ["config.yaml", "lifelong.yaml"],
    "smollm2": ["smollm2.yaml"],
    "paper": ["paper.yaml"],
}


def failed(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out, out[-4000:]
    assert len(out.splitlines()) < 25, out  # a short message, not the schema or a traceback
    return out


# --------------------------------------------------------------------------- --configfile


def test_a_target_after_configfile_is_named_with_the_way_out(tmp_path):
    """`snakemake --configfile CONFIG TARGET`: TARGET is read as a second config file. A figure's
    JSON sidecar (a mapping, so Snakemake itself takes it) stops the run naming it."""
    target = tmp_path / "results" / "figures" / "toy-llama" / "figure1.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"rule": "figure1", "config": {}, "models": {}, "git": {}}))
    out = failed(
        snakemake(
            "-n", "--configfile", DEFAULT, str(target), "--directory", str(tmp_path), cwd=tmp_path
        )
    )
    assert f"config file {target}: is not a config file" in out, out
    assert "put the targets before --configfile" in out and "-- TARGET" in out, out


def test_targets_after_double_dash_are_targets(tmp_path):
    proc = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        DEFAULT,
        "--",
        "run_config",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "run_config" in out and "trajectory" not in out, out[-4000:]


def test_a_mistake_in_an_overlay_names_the_overlay(tmp_path):
    overlay = tmp_path / "tight.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"toy-llama": {"gates": {"rewrite": 2}}}}))
    out = failed(
        snakemake(
            "-n",
            "--configfile",
            DEFAULT,
            str(overlay),
            "--directory",
            str(tmp_path),
            cwd=tmp_path,
        )
    )
    assert f"config file {overlay}: key 'models.toy-llama.gates.rewrite':" in out, out


def test_a_partial_overlay_is_a_config_file(tmp_path):
    """An overlay holds only the keys it changes (no model source, no experiments): each file on
    its own is checked for the keys it has, the merged config for what it must have."""
    overlay = tmp_path / "loose.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "models": {"toy-llama": {"gates": {"rewrite": 0.5}}},
                "methods": {"rome": {"hparams": {"v_lr": 0.3}}},
            }
        )
    )
    escfg.check_config_file(overlay)
    proc = snakemake(
        "-n", "--configfile", DEFAULT, str(overlay), "--directory", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.parametrize(
    "content, expect",
    [
        ("rule,jobs\ntrajectory,8\n", "it is a str, not a mapping of config keys"),
        ("- 1\n- 2\n", "it is a list, not a mapping"),
        ("config_hash: x\ngit: {}\nconfig: {}\n", "are no config keys"),
    ],
)
def test_check_config_file_names_files_that_are_no_config(tmp_path, content, expect):
    """What check_config_file says of files that are no config. (Snakemake's command line already
    refuses a file that is not a YAML/JSON mapping, or that does not exist, before the workflow
    is read: config/README.md, "Config files and targets".)"""
    path = tmp_path / "results" / "x.csv"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(escfg.ConfigFileError) as err:
        escfg.check_config_file(path)
    assert str(err.value).startswith(f"config file {path}: ") and expect in str(err.value)
    assert "put the targets before --configfile" in str(err.value)


def test_shipped_configs_pass_the_file_checks():
    for files in CONFIGS.values():
        for name in files:
            escfg.check_config_file(REPO / "config" / name)


# --------------------------------------------------------------------------- --config


def test_unknown_config_key_points_to_overlay_files(tmp_path):
    out = failed(
        snakemake("-n", "--config", "v_lr=0.3", "--directory", str(tmp_path), cwd=tmp_path)
    )
    assert "config key 'v_lr': given with --config, is not a top-level config key" in out, out
    assert "--configfile config/config.yaml my-overlay.yaml" in out, out


def test_nested_value_given_with_config_points_to_overlay_files(tmp_path):
    """A --config mapping is merged into the config, but Snakemake reads its values as text."""
    out = failed(
        snakemake(
            "-n",
            "--config",
            "methods={rome: {hparams: {v_lr: 0.3}}}",
            "--directory",
            str(tmp_path),
            cwd=tmp_path,
        )
    )
    assert "config key 'methods.rome.hparams.v_lr'" in out and "set with --config methods=" in out
    assert "--configfile config/config.yaml my-overlay.yaml" in out, out


def test_dotted_config_key_is_refused_naming_it():
    """Snakemake 9.27's command line refuses a dotted --config key itself ('Config entry must start
    with a valid identifier'); a dotted key reaching the workflow otherwise (the API, an older
    Snakemake) stops naming it."""
    with pytest.raises(escfg.ConfigError) as err:
        escfg.check_config_overrides({"methods.rome.hparams.v_lr": 0.3})
    message = str(err.value)
    assert message.startswith("config key 'methods.rome.hparams.v_lr': given with --config")
    assert "overlay file" in message and "did you mean" not in message
    escfg.check_config_overrides({"n_edits": 5, "samples": 1})


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("run", sorted(CONFIGS))
def test_runs_write_figures_under_results_which_git_ignores(run):
    merged: dict = {}
    for name in CONFIGS[run]:
        data = yaml.safe_load((REPO / "config" / name).read_text())
        merged = {**merged, **data, "figures": {**merged.get("figures", {}), **data["figures"]}}
    figures_dir = merged["figures"]["dir"]
    assert figures_dir.startswith("results/figures"), (run, figures_dir)
    example = f"{figures_dir}/some-model/figure1.png"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", example], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.returncode == 0, f"{example} is not git-ignored"
    committed = subprocess.run(
        ["git", "check-ignore", "-q", "figures/toy-llama/figure1.png"], cwd=REPO
    )
    assert committed.returncode == 1  # the reference copies stay tracked
    assert escfg.load_schema()["$defs"]["figures"]["properties"]["dir"]["default"] == (
        "results/figures"
    )


def test_default_dry_run_writes_nothing_under_figures(tmp_path):
    proc = snakemake("-n", "--directory", str(tmp_path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    outputs = [
        path.strip()
        for line in out.splitlines()
        if line.startswith("    output: ")
        for path in line.removeprefix("    output: ").split(",")
    ]
    assert any(p.startswith("results/figures/toy-llama/figure1") for p in outputs)
    assert not [p for p in outputs if p.startswith("figures/")]


def test_publish_figures_copies_a_runs_figures_into_the_reference_folder(tmp_path):
    run = tmp_path / "run"
    src = run / "results" / "figures" / "lifelong" / "toy-llama"
    (src / "samples").mkdir(parents=True)
    for name in ("figure1.png", "figure1.pdf", "figure1.json", "table2.md", "table2.tex"):
        (src / name).write_text(name)
    (src / "samples" / "figure1_sample0.png").write_text("x")
    (run / "results" / "report").mkdir(parents=True)
    (run / "results" / "report" / "runtime_summary.csv").write_text("rule\n")
    dest = tmp_path / "figures"
    configs = [str(REPO / "config" / "config.yaml"), str(REPO / "config" / "lifelong.yaml")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "editscale.reporting.publish",
            "--configfile",
            *configs,
            "--directory",
            str(run),
            "--dest",
            str(dest),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        f"lifelong/toy-llama/{name}"
        for name in ("figure1.json", "figure1.png", "runtime_summary.csv", "table2.md")
        + ("table2.tex",)
    ]
    # nothing to publish: it says so and copies nothing
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "editscale.reporting.publish",
            "--directory",
            str(tmp_path / "none"),
            "--dest",
            str(dest),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "has the run finished?" in proc.stderr
    assert "publish-figures:" in (REPO / "Makefile").read_text()
