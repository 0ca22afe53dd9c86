"""Cost of the fletcher32 checksums of trajectory files: write and read time, file size.

    python benchmarks/bench_checksum.py [--edits 1000] [--snapshots 10] [--repeats 3]

Writes a representative trajectory file through :class:`editscale.editing.store.TrajectoryWriter`,
with and without the checksums: rank-one updates (u, v) of one 576 x 1536 float32 matrix (the MLP
down projection of SmolLM2-135M) for every edit, the runner's per-edit metric columns, and snapshots
of the matrix (the unedited one plus ``--snapshots`` more, evenly spaced). The read is what the
evaluation jobs and the CSV export do: all metrics, all updates, the weights rebuilt after the last
edit. Times are the median of ``--repeats`` runs, wall clock and CPU time of the process (the CPU
time is what to compare on a machine busy with other work); the data are made beforehand. Results
are also written as JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

import editscale.editing.store as store  # noqa: E402
from editscale.editors.base import ParamUpdate  # noqa: E402
from editscale.lm.scoring import METRIC_NAMES  # noqa: E402

OUT_DIM, IN_DIM = 576, 1536
MODULE = "model.layers.5.mlp.down_proj"
METRICS = [
    "edit",
    "case_id",
    *METRIC_NAMES,
    "update_norm_0",
    "distance_0",
    "weight_norm_0",
    "v_loss",
    "edit_seconds",
    "eval_seconds",
]


def make_data(n_edits: int, n_snapshots: int) -> dict:
    """Random updates, weights after the snapshot edits, and metrics (not timed)."""
    gen = torch.Generator().manual_seed(0)
    every = max(1, n_edits // n_snapshots)
    w = torch.randn(OUT_DIM, IN_DIM, generator=gen) * 0.02
    snapshots = {0: w.clone()}
    updates = []
    for t in range(1, n_edits + 1):
        upd = ParamUpdate(
            MODULE,
            u=torch.randn(IN_DIM, generator=gen),
            v=torch.randn(OUT_DIM, generator=gen) * 1e-3,
        )
        updates.append(upd)
        if t % every == 0 or t == n_edits:
            w = w + torch.outer(
                upd.v, upd.u
            )  # not the exact trajectory: sizes and entropy are what count
            snapshots[t] = w.clone()
    metrics = [
        {name: float(torch.rand(1, generator=gen)) for name in METRICS} for _ in range(n_edits)
    ]
    return {"updates": updates, "snapshots": snapshots, "metrics": metrics}


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn(*args)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def write(path: Path, data: dict) -> None:
    n = len(data["updates"])
    writer = store.TrajectoryWriter.open(
        path,
        n_edits=n,
        params=[MODULE],
        shapes={MODULE: (OUT_DIM, IN_DIM)},
        dtypes={MODULE: "torch.float32"},
        kinds={MODULE: "rank_one"},
        metric_names=METRICS,
        attrs={"arch": "llama"},
        resume_key="bench",
    )
    writer.write_snapshot(0, {MODULE: data["snapshots"][0]})
    for t in range(1, n + 1):
        snap = {MODULE: data["snapshots"][t]} if t in data["snapshots"] else None
        writer.write_edit(t, data["metrics"][t - 1], [data["updates"][t - 1]], snapshot=snap)
    writer.finish(path)
    writer.close()


def read(path: Path) -> None:
    import h5py

    store.read_metrics(path)
    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_done"])
        store.read_updates(f, 0, n)
    store.rebuild_weights(path, n)


def bench(checksum: bool, data: dict, repeats: int, work: Path) -> dict:
    saved = store._CHECKSUM
    store._CHECKSUM = {"fletcher32": True} if checksum else {}
    try:
        writes, reads, size = [], [], 0
        for i in range(repeats):
            path = work / f"{'on' if checksum else 'off'}-{i}.h5"
            writes.append(_timed(write, path, data))
            reads.append(_timed(read, path))
            size = path.stat().st_size
            path.unlink()
    finally:
        store._CHECKSUM = saved
    return {
        "name": "fletcher32" if checksum else "no checksum",
        "write_s": statistics.median(w for w, _ in writes),
        "write_cpu_s": statistics.median(c for _, c in writes),
        "read_s": statistics.median(w for w, _ in reads),
        "read_cpu_s": statistics.median(c for _, c in reads),
        "size_mb": size / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = make_data(args.edits, args.snapshots)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [bench(c, data, args.repeats, Path(tmp)) for c in (False, True)]
    off, on = runs
    keys = ("write_s", "write_cpu_s", "read_s", "read_cpu_s", "size_mb")
    for key in keys:
        on[f"{key}_ratio"] = on[key] / off[key]
        off[f"{key}_ratio"] = 1.0
    report(
        "checksum",
        runs,
        [(k, "{:.3f}") for k in keys] + [(f"{k}_ratio", "{:.4f}") for k in keys],
        f"{args.edits} rank-one edits of a {OUT_DIM}x{IN_DIM} float32 matrix, "
        f"{len(data['snapshots'])} snapshots, {len(METRICS)} metrics; median of {args.repeats}",
    )


if __name__ == "__main__":
    main()
