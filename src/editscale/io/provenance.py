"""Provenance: the software/hardware environment of a run, a stable hash of its config, and the
logging set-up shared by the workflow's rule scripts.

Everything here is light (no torch import unless torch is already installed and CUDA is asked
about) and never fails because of the environment: a missing package is reported as ``None``,
a folder that is not a git repository gives ``git_commit: None``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from editscale.io.files import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

# Distributions whose versions are recorded (distribution names as pip knows them).
PACKAGES = (
    "editscale",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "h5py",
    "safetensors",
    "datasets",
    "huggingface-hub",
    "snakemake",
    "accelerate",
    "gguf",
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    """Names of the visible CUDA devices (empty without torch or CUDA)."""
    if _version("torch") is None:
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken driver must not stop a run from being recorded
        log.debug("could not query CUDA devices: %s", exc)
        return []


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the repository holding
    ``path``.

    ``path`` defaults to the editscale source tree (the repository this package is installed
    from in editable mode). Changed tracked files and untracked files that git does not ignore
    (e.g. a new, uncommitted script) count as dirty.
    """
    where = Path(path) if path is not None else REPO_ROOT
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"git_commit": commit.stdout.strip(), "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def environment() -> dict[str, Any]:
    """Python, package versions, platform, host, CPU, GPUs and git state of this run."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": _gpus(),
    }
    if env["packages"]["torch"] is not None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch_cuda"] = getattr(torch.version, "cuda", None)
    env.update(git_state())
    return env


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; tuples become lists, other objects ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(cfg: dict) -> str:
    """sha256 (hex) of the canonical JSON of a (resolved) config."""
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()


KEEP_ATTEMPT_LOGS = 10


def attempt_log_path(
    log_file: str | os.PathLike, when: float | None = None, pid: int | None = None
) -> Path:
    """Where this attempt's copy of a rule log goes: ``logs/x/y.log`` ->
    ``logs/x/y.attempts/20261129T015500Z-1234.log`` (sortable by start time)."""
    import time

    log_file = Path(log_file)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if when is None else when))
    folder = log_file.with_name(
        (log_file.stem if log_file.suffix == ".log" else log_file.name) + ".attempts"
    )
    return folder / f"{stamp}-{os.getpid() if pid is None else pid}.log"


def _prune_attempt_logs(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` attempt logs of a folder (names sort by start time)."""
    logs = sorted(folder.glob("*.log"))
    for old in logs[: max(0, len(logs) - keep)]:
        old.unlink(missing_ok=True)


def setup_rule_logging(
    log_file: str | os.PathLike | None, threads: int | None = None, level: int = logging.INFO
) -> logging.Logger:
    """Logging for a workflow rule script: everything to the rule's log file, and torch threads.

    Called first by every ``workflow/scripts/*.py``: log records of all loggers (and Python
    warnings) go to ``log_file``; an uncaught exception is logged with its traceback there and
    still printed to stderr. When ``threads`` is given and torch is installed, torch uses that
    many threads (the rule's ``threads``). The environment is logged for provenance.

    Snakemake deletes a job's log before it reruns the job, so the log of a killed or failed
    attempt would be lost with it: every record also goes to a copy per attempt,
    ``<log without .log>.attempts/<UTC start time>-<pid>.log`` (:func:`attempt_log_path`), which
    no rule declares and Snakemake never deletes; the newest ``KEEP_ATTEMPT_LOGS`` are kept.
    """
    handlers: list[logging.Handler] = []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
        attempt = attempt_log_path(log_file)
        attempt.parent.mkdir(parents=True, exist_ok=True)
        _prune_attempt_logs(attempt.parent, KEEP_ATTEMPT_LOGS - 1)
        handlers.append(logging.FileHandler(attempt, mode="w", encoding="utf-8"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=level,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    logger = logging.getLogger("editscale.rule")

    previous_hook = sys.excepthook

    def _log_uncaught(exc_type, exc, tb):
        logger.critical("uncaught exception", exc_info=(exc_type, exc, tb))
        previous_hook(exc_type, exc, tb)

    sys.excepthook = _log_uncaught
    if threads is not None and _version("torch") is not None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        logger.info("torch threads: %d", torch.get_num_threads())
    logger.info("environment: %s", canonical_json(environment()))
    return logger


# ---------------------------------------------------------------- figures and tables

# Packages the figures and tables additionally depend on.
FIGURE_PACKAGES = ("matplotlib", "pillow", "jinja2", "docutils")


def identity_from_manifest(manifest: dict, folder: str | os.PathLike) -> dict[str, str]:
    """``model_id`` and ``revision`` of a prepared model folder from its manifest (torch-free).

    Hub models: the repo id and pinned revision. Local, world, scratch and GGUF models: their
    source and a digest of their files' hashes, so any change of weights shows.
    """
    files_digest = hashlib.sha256(
        json.dumps(manifest["files"], sort_keys=True).encode()
    ).hexdigest()[:16]
    source = manifest.get("source")
    if source == "hub":
        return {"model_id": manifest["repo_id"], "revision": manifest["revision"]}
    if source == "world":
        return {
            "model_id": f"world:{manifest.get('world')}:{manifest.get('arch')}",
            "revision": f"seed{manifest.get('seed')}-{files_digest}",
        }
    if source == "scratch":
        return {
            "model_id": f"scratch:{manifest.get('arch')}",
            "revision": f"seed{manifest.get('seed')}-{files_digest}",
        }
    if source == "gguf":
        origin = manifest.get("package") or "file"
        if manifest.get("package_version"):
            origin += f"=={manifest['package_version']}"
        return {
            "model_id": f"gguf:{origin}:{manifest.get('gguf_file')}",
            "revision": f"{manifest.get('gguf_sha256', '')[:16]}-{files_digest}",
        }
    return {
        "model_id": f"local:{manifest.get('path', str(Path(folder).resolve()))}",
        "revision": files_digest,
    }


def _model_record(manifest_path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a prepared model from its manifest: id, revision (:func:`identity_from_manifest`,
    the one naming rule), file hashes."""
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    ident = identity_from_manifest(manifest, Path(manifest_path).parent)
    return {
        "model_id": ident["model_id"],
        "revision": ident["revision"],
        "source": manifest.get("source"),
        "file_sha256": manifest.get("files", {}),
        "manifest": str(manifest_path),
        "manifest_sha256": sha256_file(manifest_path),
    }


def _h5_upstream(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance an HDF5 input carries about its own inputs (its trajectory, its hashes)."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is in every environment of the workflow
        return None
    keep = (
        "trajectory",
        "trajectory_sha256",
        "config_hash",
        "model_id",
        "revision",
        "counterfact_sha256",
        "ordering_sha256",
        "stats_sha256",
    )
    try:
        with h5py.File(path, "r") as f:
            out = {
                k: (v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else str(v))
                for k in keep
                if (v := f.attrs.get(k)) is not None
            }
            env = f.attrs.get("trajectory_environment", f.attrs.get("environment"))
    except OSError as exc:
        return {"error": str(exc)}
    if env is not None:
        try:
            env = json.loads(env)
            out["trajectory_hardware"] = {
                k: env.get(k) for k in ("hostname", "cpu", "cpu_count", "gpus", "torch_cuda")
            }
        except (TypeError, ValueError):
            pass
    return out


def artifact_provenance(
    *,
    outputs: list[str],
    inputs: list[str],
    config: dict,
    rule: str,
    models: dict[str, str] | None = None,
    data: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance record of a figure or table (its JSON sidecar and embedded metadata).

    ``inputs``: every input file (sha256 of each; HDF5 inputs also listed with what they record
    about their own inputs); ``models``: model name -> its ``editscale_manifest.json``;
    ``data``: the data files among the inputs (CounterFact, orderings, downstream sets).
    ``digest`` is the sha256 of the record without its time stamp: it changes when an input,
    the config, the code version or the environment changes, and only then.
    """
    from datetime import datetime, timezone

    env = environment()
    env["packages"].update({name: _version(name) for name in FIGURE_PACKAGES})
    git = {"commit": env.pop("git_commit", None), "dirty": env.pop("git_dirty", None)}
    hashes = {str(p): sha256_file(p) for p in inputs}
    record: dict[str, Any] = {
        "outputs": [str(p) for p in outputs],
        "rule": rule,
        "git": git,
        "config_hash": config_hash(config),
        "config": config,
        "environment": env,
        "hardware": {
            "cpu": env.get("cpu"),
            "cpu_count": env.get("cpu_count"),
            "gpus": env.get("gpus"),
        },
        "models": {name: _model_record(path) for name, path in (models or {}).items()},
        "data_sha256": {str(p): hashes.get(str(p)) or sha256_file(p) for p in (data or [])},
        "seeds": _seeds(config),
        "inputs_sha256": hashes,
        "hdf5_inputs": {
            p: {"sha256": h, "records": _h5_upstream(p)}
            for p, h in hashes.items()
            if p.endswith((".h5", ".hdf5"))
        },
    }
    # this job's hardware above; where the trajectories behind the HDF5 inputs ran, here
    record["hardware"]["trajectories"] = {
        p: v["records"]["trajectory_hardware"]
        for p, v in record["hdf5_inputs"].items()
        if v["records"] and "trajectory_hardware" in v["records"]
    }
    if extra:
        record["extra"] = extra
    record["digest"] = hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


def _seeds(config: dict) -> dict[str, Any]:
    seeds = {k: config.get(k) for k in ("seed", "ordering_seed")}
    for section in ("downstream", "disabling"):
        if isinstance(config.get(section), dict) and "seed" in config[section]:
            seeds[f"{section}.seed"] = config[section]["seed"]
    for name, spec in (config.get("models") or {}).items():
        if isinstance(spec, dict) and spec.get("seed") is not None:
            seeds[f"models.{name}.seed"] = spec["seed"]
    return seeds


def write_sidecar(record: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a provenance record as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record, end="\n", indent=1, sort_keys=True, default=str)
