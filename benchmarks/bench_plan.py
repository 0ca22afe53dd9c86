"""Planning benchmark: wall and CPU seconds of a dry run of the paper's DAG (~1,100 jobs).

    .venv/bin/python benchmarks/bench_plan.py [--configfile config/paper.yaml] [--repeats 3]

Runs ``snakemake -n --configfile FILE --cores 8`` in an empty working directory (nothing is
written there but Snakemake's own metadata) with the project's interpreter, ``--repeats`` times,
and reports the median wall time, the median CPU time of the snakemake process (user + system)
and the number of planned jobs. Also times the per-job helper the resource functions call
(``editscale.config.model_resources``), which used to re-parse the config schema on every call.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402


def plan_once(configfile: Path, cores: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryDirectory() as work:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(REPO / "Snakefile"),
                "-n",
                "--configfile",
                str(configfile),
                "--cores",
                str(cores),
                "--directory",
                work,
            ],
            cwd=work,
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed (exit {proc.returncode}):\n{out[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", out, re.M)
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "jobs": int(total.group(1)) if total else -1,
    }


def model_resources_us(configfile: Path, n: int = 2000) -> float:
    """Microseconds per ``model_resources`` call on the validated config (warm caches)."""
    import warnings

    from editscale import config as escfg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = escfg.load_config(configfile)
    model = next(iter(cfg["models"]))
    escfg.model_resources(cfg, model, "trajectory")
    t0 = time.perf_counter()
    for _ in range(n):
        escfg.model_resources(cfg, model, "trajectory")
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configfile", type=Path, default=REPO / "config" / "paper.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=8)
    args = ap.parse_args()
    runs = [plan_once(args.configfile.resolve(), args.cores) for _ in range(args.repeats)]
    row = {
        "name": args.configfile.name,
        "jobs": runs[0]["jobs"],
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "wall_s_max": max(r["wall_s"] for r in runs),
        "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
        "model_resources_us": model_resources_us(args.configfile.resolve()),
    }
    load = os.getloadavg()[0]
    report(
        "plan",
        [row],
        [
            ("jobs", "{:,d}"),
            ("wall_s_median", "{:.1f}"),
            ("wall_s_max", "{:.1f}"),
            ("cpu_s_median", "{:.1f}"),
            ("model_resources_us", "{:.1f}"),
        ],
        f"snakemake -n --cores {args.cores}, {args.repeats} runs, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the end",
    )


if __name__ == "__main__":
    main()
