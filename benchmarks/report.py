"""Shared output of the benchmark scripts: a table on stdout and a JSON file under results/."""

from __future__ import annotations

import json
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def report(name: str, runs: list[dict], keys: list[tuple[str, str]], header: str) -> None:
    """Print ``keys`` (metric, format) of every run as a table, and save all runs as JSON."""
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}; {header}")
    print(f"{'metric':30s}" + "".join(f"{r['name']:>26s}" for r in runs))
    for key, fmt in keys:
        print(f"{key:30s}" + "".join(f"{fmt.format(r[key]):>26s}" for r in runs))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}-{platform.node()}.json").write_text(json.dumps(runs, indent=2))
