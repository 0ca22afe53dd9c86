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

__all__ = ["PACKAGES", "sha256_file", "environment", "config_hash", "canonical_json", "git_state", "setup_rule_logging"]

log = logging.getLogger(__name__)

# Distributions whose versions are recorded (distribution names as pip knows them).
PACKAGES = ("editscale", "torch", "transformers", "tokenizers", "numpy", "h5py", "safetensors",
            "datasets", "huggingface-hub", "snakemake")

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
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the repository holding ``path``.

    ``path`` defaults to the editscale source tree (the repository this package is installed
    from in editable mode). Changed tracked files and untracked files that git does not ignore
    (e.g. a new, uncommitted script) count as dirty.
    """
    where = Path(path) if path is not None else REPO_ROOT
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=30)
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; tuples become lists, other objects ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(cfg: dict) -> str:
    """sha256 (hex) of the canonical JSON of a (resolved) config."""
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()


def setup_rule_logging(log_file: str | os.PathLike | None, threads: int | None = None,
                       level: int = logging.INFO) -> logging.Logger:
    """Logging for a workflow rule script: everything to the rule's log file, and torch threads.

    Called first by every ``workflow/scripts/*.py``: log records of all loggers (and Python
    warnings) go to ``log_file``; an uncaught exception is logged with its traceback there and
    still printed to stderr. When ``threads`` is given and torch is installed, torch uses that
    many threads (the rule's ``threads``). The environment is logged for provenance.
    """
    handlers: list[logging.Handler] = []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
