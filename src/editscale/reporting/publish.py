"""Copy a finished run's figures and tables into the committed reference folder figures/.

Runs write their figures and tables to the config's ``figures.dir`` (``results/figures`` in the
shipped configs, git-ignored), so that running the workflow never changes a committed file. This
module, behind ``make publish-figures``, is the one way the committed copies change: for each
model of the config it copies ``<run dir>/<figures.dir>/<model>/`` to
``figures/<figures.dir below results/figures>/<model>/`` -- the PNGs, the Markdown, CSV and LaTeX
tables and the JSON provenance sidecars (not the PDFs, not ``samples/``) -- plus the run's
``results/report/runtime_summary.csv``. Examples (from the repository root)::

    python -m editscale.reporting.publish                                # after make run
    python -m editscale.reporting.publish --configfile config/config.yaml config/lifelong.yaml
    python -m editscale.reporting.publish --configfile config/smollm2.yaml --directory runs/smollm2

The config files are merged in order as Snakemake merges them (nested keys of a later file
override, the rest is kept).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

RUNS_ROOT = Path("results/figures")
SUFFIXES = {".png", ".md", ".csv", ".tex", ".json"}
RUNTIME_SUMMARY = Path("results/report/runtime_summary.csv")


def merged_config(files: list[Path]) -> dict:
    """The config files merged in order, nested mappings key by key (as ``--configfile``)."""

    def merge(into: dict, other: dict) -> None:
        for key, value in other.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    cfg: dict = {}
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise SystemExit(f"{path}: not a config file (no mapping of config keys)")
        merge(cfg, data)
    return cfg


def publish_plan(cfg: dict, run_dir: Path, dest: Path) -> list[tuple[Path, Path]]:
    """(source, destination) of every file to copy; stops naming what is missing."""
    figures_dir = Path(cfg.get("figures", {}).get("dir", str(RUNS_ROOT)))
    try:
        below = figures_dir.relative_to(RUNS_ROOT)
    except ValueError:
        raise SystemExit(
            f"figures.dir is {figures_dir}, not under {RUNS_ROOT}/: its figures have no place "
            "under figures/ (give such a run's figures a folder under results/figures)"
        ) from None
    models = list(dict.fromkeys(e["model"] for e in cfg.get("experiments", [])))
    if not models:
        raise SystemExit("the config has no experiments: no figures to publish")
    plan = []
    for model in models:
        src = run_dir / figures_dir / model
        files = sorted(p for p in src.glob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise SystemExit(f"{src}: no figures or tables (has the run finished?)")
        target = dest / below / model
        plan += [(p, target / p.name) for p in files]
        runtime = run_dir / RUNTIME_SUMMARY
        if runtime.is_file():
            plan.append((runtime, target / "runtime_summary.csv"))
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        type=Path,
        default=[Path("config/config.yaml")],
        help="the run's config files, as given to snakemake (default: config/config.yaml)",
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=Path("."),
        help="the run's working directory (snakemake --directory; default: .)",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path("figures"),
        help="the committed reference folder (default: figures/, from the repository root)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be copied, copy nothing"
    )
    args = parser.parse_args(argv)
    plan = publish_plan(merged_config(args.configfile), args.directory, args.dest)
    for src, dst in plan:
        print(f"{src} -> {dst}")
        if not args.dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    print(f"{len(plan)} files {'to copy' if args.dry_run else 'copied'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
