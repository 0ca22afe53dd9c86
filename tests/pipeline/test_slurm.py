"""The SLURM profile, tested on a real one-node Slurm cluster started on this machine.

The cluster is Debian's Slurm (slurmctld, slurmd, munge; installed with apt-get when missing),
configured in a temporary folder (SLURM_CONF, spool, pid and log files, a private munge socket
and key, free ports), started without systemd and stopped by PID afterwards. Without slurmdbd
there is no accounting, so the plugin reads job states with squeue (``--slurm-status-command
squeue``). The tiny-model workflow then runs through ``--workflow-profile profiles/slurm``: its
heavy jobs are sbatch submissions (the profile sends them to a partition named ``gpu``, which
this cluster has). The node has one pretend GPU (gres.conf ``File=/dev/null``): the tiny config
asks for ``gpu: 1`` for the trajectory (sbatch ``--gpus=1``; the model still runs on the CPU) and
``gpu: 0`` for the other jobs, which then ask for no GPU at all.

Outside CI a machine without root or without the packages skips these tests; in CI (CI=true)
that is a failure. A cluster that does not come up fails within seconds, and the workflow runs
under ``timeout -s INT`` so that it cannot hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytest
import yaml

from tests.pipeline.test_cluster_kill import tiny_workflow_config
from tests.pipeline.test_envs import parse_rules

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = {
    "munged": "/usr/sbin/munged",
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
}
CLIENTS = ["sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun"]
WORKFLOW_TIMEOUT_S = 900  # the run takes 1-3 minutes; this only stops a hung run


def _unavailable(reason: str):
    """Skip on a developer's machine, fail loudly in CI."""
    if IN_CI:
        pytest.fail(f"Slurm test cannot run in CI: {reason}")
    pytest.skip(reason)


def _missing_tools() -> list[str]:
    return [p for p in DAEMONS.values() if not os.access(p, os.X_OK)] + [
        c for c in CLIENTS if shutil.which(c) is None
    ]


def ensure_slurm_installed() -> None:
    """Install Debian's Slurm and munge when missing (root and apt-get only)."""
    if not _missing_tools():
        return
    if not sys.platform.startswith("linux") or shutil.which("apt-get") is None:
        _unavailable(
            f"Slurm is not installed ({', '.join(_missing_tools())} missing) and apt-get is absent"
        )
    if os.geteuid() != 0:
        _unavailable(
            f"Slurm is not installed ({', '.join(_missing_tools())} missing) and installing "
            "it needs root"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        upd = subprocess.run(
            ["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=900
        )
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.fail(
                "apt-get could not install Slurm:\n"
                + upd.stdout[-2000:]
                + upd.stderr[-2000:]
                + proc.stdout[-3000:]
                + proc.stderr[-3000:]
            )
    if _missing_tools():
        pytest.fail(f"still missing after apt-get install: {_missing_tools()}")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _available_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info.get("MemAvailable", info["MemTotal"]) // 1024


class LocalSlurm:
    """A one-node Slurm cluster in a temporary folder; every daemon is stopped by its PID."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="editscale-slurm-"))
        self.root.chmod(0o755)  # munged (user munge) must reach its socket folder
        self.pids: dict[str, int] = {}
        self.env: dict[str, str] = {}

    # -------------------------------------------------------------- configuration
    def write_config(self) -> Path:
        r = self.root
        for d in ("spool/ctld", "spool/d", "run", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        munge = r / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        ctld_port, d_port = _free_ports(2)
        cpus = os.cpu_count() or 1
        mem = max(2000, min(_available_memory_mb() - 3000, 16000))
        self.memory_mb = mem
        # the node has the GPU type the profile pins the replaying rules to (a node feature)
        features = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"][
            "trajectory"
        ]["constraint"]
        node = (
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:1 "
            f"Features={features} State=UNKNOWN"
        )
        conf = f"""\
ClusterName=editscaletest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge}/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation={r}/spool/ctld
SlurmdSpoolDir={r}/spool/d
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
{node}
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
        path = r / "slurm.conf"
        path.write_text(conf)
        # One pretend GPU (a device file that exists), so that Slurm's GPU scheduling is real:
        # a job asking for --gpus=1 gets it; nothing here uses CUDA.
        (r / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")
        self.env = dict(os.environ, SLURM_CONF=str(path))
        for var in [v for v in self.env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
            del self.env[var]  # not inside someone else's job
        # Inside a job, the jobstep plugin runs the rule with `srun` after dropping every SLURM_*
        # variable, SLURM_CONF included; real clusters keep slurm.conf where srun looks anyway
        # (/etc/slurm or slurmd's configless cache). This srun (first on PATH, exported to the
        # jobs) puts SLURM_CONF back and runs the real srun.
        real_srun = shutil.which("srun")
        bindir = r / "bin"
        bindir.mkdir(exist_ok=True)
        (bindir / "srun").write_text(
            f'#!/bin/sh\nexport SLURM_CONF="{path}"\nexec "{real_srun}" "$@"\n'
        )
        (bindir / "srun").chmod(0o755)
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env.get('PATH', '')}"
        return path

    # -------------------------------------------------------------- daemons
    def _start(self, name: str, cmd: list[str], pidfile: Path, timeout: float = 15) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} did not start (exit {proc.returncode}): {proc.stdout}{proc.stderr}\n"
                + self.logs()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
                continue
            self.pids[name] = pid
            return
        raise RuntimeError(f"{name} wrote no pid file {pidfile} within {timeout} s\n" + self.logs())

    def start(self) -> None:
        self.write_config()
        m = self.root / "munge"
        self._start(
            "munged",
            [
                "runuser",
                "-u",
                "munge",
                "--",
                DAEMONS["munged"],
                f"--socket={m}/munge.socket",
                f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
            m / "munged.pid",
        )
        self._start("slurmctld", [DAEMONS["slurmctld"]], self.root / "run/slurmctld.pid")
        self._start("slurmd", [DAEMONS["slurmd"], "-N", "localhost"], self.root / "run/slurmd.pid")
        self.wait_idle()

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise RuntimeError(
                        f"{name} (pid {pid}) died while the cluster came up\n" + self.logs()
                    )
            try:
                state = self.run(
                    "sinfo", "-h", "-n", "localhost", "-o", "%T", timeout=10
                ).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "sinfo timed out"
            if state.split("\n")[0].rstrip("*") == "idle":
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"the node is not idle after {timeout} s (sinfo: {state!r})\n" + self.logs()
        )

    def logs(self, chars: int = 3000) -> str:
        out = []
        for p in (
            self.root / "log/slurmctld.log",
            self.root / "log/slurmd.log",
            self.root / "munge/munged.log",
        ):
            if p.exists():
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel what is left in the queue, then stop the daemons (slurmd first) by PID."""
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            try:
                self.run("scancel", "--full", "--user", str(os.geteuid()), timeout=15)
                deadline = time.monotonic() + 20
                while (
                    time.monotonic() < deadline
                    and self.run("squeue", "-h", "-t", "PD,R,CG", timeout=10).stdout.strip()
                ):
                    time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def slurm_cluster():
    ensure_slurm_installed()
    cluster = LocalSlurm()
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            pytest.fail(f"the local Slurm cluster did not come up: {err}")
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup()


@pytest.mark.slurm
def test_cluster_runs_a_batch_job(slurm_cluster, tmp_path):
    """The cluster itself: an sbatch job runs and completes (state kept by MinJobAge)."""
    out = tmp_path / "hello.out"
    proc = slurm_cluster.run(
        "sbatch",
        "--parsable",
        "-p",
        "gpu",
        "--mem",
        "100",
        "-t",
        "1",
        "-o",
        str(out),
        "--wrap",
        "echo hello from $SLURM_JOB_ID",
    )
    assert proc.returncode == 0, proc.stderr
    jobid = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = slurm_cluster.run(
            "squeue", "-h", "-t", "all", "-j", jobid, "-o", "%T"
        ).stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    assert state == "COMPLETED", state + "\n" + slurm_cluster.logs()
    assert out.read_text().strip() == f"hello from {jobid}"


def _tiny_config(tmp_path: Path, model_dir: Path, counterfact_path: Path) -> Path:
    # The per-model table of the heavy rules: no GPU here, amounts this cluster can give, and a
    # per-rule override (checked on the submitted job below).
    resources = {
        "tiny-local": {
            "mem_mb": 1500,
            "runtime": 10,
            "threads": 1,
            "gpu": 0,
            "rules": {"trajectory": {"runtime": 15, "gpu": 1}},
        }
    }
    cfg = tiny_workflow_config(
        model_dir, counterfact_path, n_edits=4, snapshot_every=2, resources=resources
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# The experiment's results (not the figures, which are local plotting rules).
TARGETS = [
    "results/trajectories/tiny-local/rome/sample0.csv",
    "results/evaluations/tiny-local/rome/sample0.h5",
    "results/evaluations/tiny-local/rome/sample0_downstream.csv",
    "results/disabling/tiny-local/rome/sample0.json",
]


@pytest.mark.slurm
def test_tiny_workflow_through_slurm(slurm_cluster, tmp_path, tiny_model_factory, counterfact_path):
    """The tiny workflow with profiles/slurm: heavy jobs are real Slurm jobs, light ones local."""
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    config_file = _tiny_config(tmp_path, model_dir, counterfact_path)
    work = tmp_path / "work"
    env = dict(
        slurm_cluster.env, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    cmd = [
        "timeout",
        "-s",
        "INT",
        "-k",
        "60",
        str(WORKFLOW_TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--workflow-profile",
        str(PROFILE),
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        # this cluster has no accounting (slurmdbd): states from squeue, no account
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--slurm-logdir",
        str(tmp_path / "slurm_logs"),
        "--jobs",
        "2",
        "--local-cores",
        "1",
        "--latency-wait",
        "5",
        "--retries",
        "0",
        *TARGETS,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=WORKFLOW_TIMEOUT_S + 120
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    (tmp_path / "snakemake.out").write_text(out)
    assert proc.returncode != 124, (
        f"the workflow hung and was interrupted after {WORKFLOW_TIMEOUT_S} s:\n{out[-6000:]}"
    )
    assert proc.returncode == 0, out[-8000:] + "\n" + slurm_cluster.logs()
    print(f"tiny workflow through Slurm: {elapsed:.0f} s")

    # the results
    traj = work / "results/trajectories/tiny-local/rome/sample0.h5"
    with h5py.File(traj, "r") as f:
        assert bool(f.attrs["complete"]) and int(f.attrs["n_done"]) == 4
    assert (work / "results/trajectories/tiny-local/rome/sample0.csv").is_file()
    assert (work / "results/evaluations/tiny-local/rome/sample0_downstream.csv").is_file()
    assert (
        json.loads((work / "results/disabling/tiny-local/rome/sample0.json").read_text())["n_edits"]
        == 4
    )

    # the heavy jobs went through Slurm: one sbatch job each, in the profile's partition
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))
    assert submitted, out[-4000:]
    slurm_logs = tmp_path / "slurm_logs"
    by_rule: dict[str, list[str]] = {}
    for log in slurm_logs.rglob("*.log"):
        rule = next(p for p in log.relative_to(slurm_logs).parts if p.startswith("rule_"))[
            len("rule_") :
        ]
        by_rule.setdefault(rule, []).append(log.stem)
    assert {"key_stats", "trajectory", "eval_chunk", "disabling"} <= set(by_rule), by_rule
    assert not {"prepare_model", "counterfact", "ordering", "metrics_csv", "eval_merge"} & set(
        by_rule
    ), by_rule
    assert sorted(j for ids in by_rule.values() for j in ids) == sorted(submitted.values())
    for rule in ("key_stats", "trajectory", "eval_chunk", "disabling"):
        for jobid in by_rule[rule]:
            show = slurm_cluster.run("scontrol", "show", "job", jobid).stdout
            assert "JobState=COMPLETED" in show, show
            assert "Partition=gpu" in show, show  # profiles/slurm set-resources for GPU rules
    traj_job = slurm_cluster.run("scontrol", "show", "job", by_rule["trajectory"][0]).stdout
    assert "TimeLimit=00:15:00" in traj_job, (
        traj_job
    )  # resources.tiny-local.rules.trajectory.runtime
    assert re.search(r"mem=1500M", traj_job), traj_job
    # gpu: 1 became sbatch --gpus=1, which Slurm allocated (the pretend GPU); gpu: 0 asks none
    assert "TresPerJob=gres:gpu:1" in traj_job, traj_job
    stats_job = slurm_cluster.run("scontrol", "show", "job", by_rule["key_stats"][0]).stdout
    assert "gres:gpu" not in stats_job, stats_job
    # the jobs that write or replay a trajectory ran on the one GPU type the profile pins
    for rule in ("trajectory", "eval_chunk", "disabling"):
        show = slurm_cluster.run("scontrol", "show", "job", by_rule[rule][0]).stdout
        assert re.search(r"\bFeatures=a100\b", show), show
    assert not re.search(r"\bFeatures=a100\b", stats_job), stats_job
    # the rule's own log was written on the node
    assert "trajectory" in (work / "logs/trajectory/tiny-local/rome/sample0.log").read_text()

    # what the nodes wrote is complete and up to date for the submitting host
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(SNAKEFILE),
            "-n",
            "--configfile",
            str(config_file),
            "--directory",
            str(work),
            *TARGETS,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, (
        again.stdout[-3000:]
    )


@pytest.mark.slurm
def test_cluster_start_failure_is_loud(tmp_path):
    """A cluster that cannot come up (slurmd never registers) fails within the bound, not hangs."""
    ensure_slurm_installed()
    cluster = LocalSlurm()
    try:
        cluster.write_config()
        m = cluster.root / "munge"
        cluster._start(
            "munged",
            [
                "runuser",
                "-u",
                "munge",
                "--",
                DAEMONS["munged"],
                f"--socket={m}/munge.socket",
                f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
            m / "munged.pid",
        )
        cluster._start("slurmctld", [DAEMONS["slurmctld"]], cluster.root / "run/slurmctld.pid")
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="not idle"):
            cluster.wait_idle(timeout=5)  # no slurmd started
        assert time.monotonic() - t0 < 30
    finally:
        cluster.stop()
        cluster.cleanup()


# ---------------------------------------------------------------- the profile itself (no cluster)


def test_profile_sends_every_gpu_rule_to_the_gpu_partition():
    """Rules that ask for GPUs (resources gpu=...) have a set-resources entry with a partition;
    the light ones are local rules; the user's account and partitions are left to fill in."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    rules = parse_rules()
    gpu_rules = {name for name, r in rules.items() if r["gpu"]}
    assert {"trajectory", "key_stats", "eval_chunk"} <= gpu_rules
    set_resources = profile["set-resources"]
    missing = sorted(r for r in gpu_rules if "slurm_partition" not in set_resources.get(r, {}))
    assert not missing, (
        f"GPU rules without a partition in profiles/slurm/config.yaml set-resources: {missing}"
    )
    assert "slurm_account" not in profile["default-resources"]  # the user's to fill in (commented)
    # one GPU type for the rules that write or replay a trajectory (bitwise replay of FT-C)
    pins = {set_resources[r].get("constraint") for r in ("trajectory", "eval_chunk", "disabling")}
    assert len(pins) == 1 and None not in pins, pins
    text = (PROFILE / "config.yaml").read_text()
    assert "# slurm_account:" in text and "<- your" in text
    # mem_mb/runtime of the heavy rules come from the workflow config, not from the profile
    for rule in gpu_rules:
        assert not {"mem_mb", "runtime", "gpu"} & set(set_resources.get(rule, {})), rule
        assert "model_resource(" in rules[rule]["directives"]["resources"], rule


def test_default_profile_stays_local():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert "executor" not in profile or profile["executor"] in ("local", "dryrun")
    assert profile.get("rerun-incomplete") is True


def test_model_resources_per_rule_overrides():
    from editscale.config import load_config, model_resources

    cfg = load_config(REPO / "config" / "paper.yaml")
    assert model_resources(cfg, "gpt-j-6b") == {
        "mem_mb": 64000,
        "runtime": 720,
        "threads": 8,
        "gpu": 1,
    }
    assert model_resources(cfg, "gpt-j-6b", "trajectory")["runtime"] == 1440
    assert model_resources(cfg, "gpt2-xl", "trajectory")["runtime"] == 1440
    assert model_resources(cfg, "gpt2-xl", "eval_chunk") == {
        "mem_mb": 32000,
        "runtime": 240,
        "threads": 8,
        "gpu": 1,
    }
    assert model_resources(cfg, "gpt2-xl", "no_such_rule")["runtime"] == 480
