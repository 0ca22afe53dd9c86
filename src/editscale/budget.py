"""The disk a config's trajectories will take, before running it.

    python -m editscale.budget config/paper.yaml [--models-dir resources/models]

prints one line per (model, method) of the config (bytes per trajectory, by what holds them,
times the samples) and the total, from the store's arithmetic
(:func:`editscale.editing.disk.trajectory_budget`). The matrix shapes come from each model's
``config.json``: a prepared model folder under ``--models-dir``, else the hub config at the
pinned revision (a small download).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from editscale.config import experiment_n_edits, load_config, method_hparams
from editscale.editing.disk import mlp_in_blocks, model_widths, trajectory_budget
from editscale.reporting.figure_data import experiment_samples


def config_budgets(
    cfg: dict, widths: dict[str, tuple[int, int, int]], in_blocks: dict[str, int] | None = None
) -> list[dict]:
    """One row per experiment of a loaded config: bytes per trajectory and for all samples.
    ``widths``: (d_model, d_mlp, n_layer) per model; ``in_blocks``: the MLP input matrix's blocks
    of d_mlp rows per model (:func:`editscale.editing.disk.mlp_in_blocks`; 1 when not given)."""
    rows = []
    for exp in cfg["experiments"]:
        model, method = exp["model"], exp["method"]
        spec = cfg["methods"][method]
        d_model, d_mlp, n_layer = widths[model]
        budget = trajectory_budget(
            spec["editor"],
            method_hparams(cfg, method, model),
            d_model=d_model,
            d_mlp=d_mlp,
            n_layer=n_layer,
            n_edits=experiment_n_edits(cfg, model, method),
            snapshot_every=int(cfg["snapshot_every"]),
            edits_per_step=int(spec.get("edits_per_step", 1)),
            store_updates=bool(spec.get("store_updates", True)),
            mlp_in_blocks=(in_blocks or {}).get(model, 1),
        )
        samples = experiment_samples(cfg, model, method)
        rows.append(
            {"model": model, "method": method, "per_trajectory": budget, "samples": samples}
        )
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--models-dir", type=Path, default=Path("resources/models"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    widths, in_blocks = {}, {}
    for name, spec in cfg["models"].items():
        folder = args.models_dir / name
        if (folder / "config.json").exists():
            hf_config = folder
        elif spec.get("source") == "hub":
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(spec["repo_id"], revision=spec.get("revision"))
        else:
            raise SystemExit(f"model {name}: no config.json in {folder} (prepare it first)")
        widths[name], in_blocks[name] = model_widths(hf_config), mlp_in_blocks(hf_config)
    total = 0
    for row in config_budgets(cfg, widths, in_blocks):
        b, k = row["per_trajectory"], row["samples"]
        total += b.total * k
        print(
            f"{row['model']:>12} {row['method']:>10}: {_gib(b.total)} per trajectory "
            f"(snapshots {_gib(b.snapshots)}, updates {_gib(b.updates)}, carried "
            f"{_gib(b.carry)}) x {k} = {_gib(b.total * k)}"
        )
    print(f"{'total':>23}: {_gib(total)}")


if __name__ == "__main__":
    main()
