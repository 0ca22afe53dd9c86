"""Storage of FT-C trajectories on GPT-J: bytes per edit of its dense updates,
projected per trajectory.

    python benchmarks/bench_ftc_storage.py [--edits 50] [--steps 25] [--rows 256] [--n-edits 3000]

FT-C (``editscale.editors.ftc``) edits GPT-J's ``mlp.fc_out`` (4096 x 16384, float32) with a
fresh Adam per edit and clamps the delta to the L-infinity ball of radius eps = 5e-5 (the
paper's GPT-J setting) after every step; the trajectory stores each edit's delta exactly. This
benchmark simulates ``--edits`` such edits on a GPT-J-shaped matrix: per Adam step a gradient
of rank 10 (a prompt's ~10 positions each add an outer product; it drifts slowly between the
steps of an edit), ``--steps`` steps (the paper's num_steps 25; fewer when the loss stops it
early), Adam with lr = eps (as FT-C's public GPT-J hyperparameters), then the clamp. The weights
start as N(0, 0.02^2) (the scale of GPT-J's fc_out). Seeded.

Exact encodings of each edit's delta, measured on ``--rows`` rows of the matrix (compression
time on the full 256 MiB matrix is minutes per edit on a laptop; the rows are statistically
alike) and scaled to the full matrix:

* ``dense``: float32 as is (4 bytes an entry);
* ``store gzip-1``: what ``editscale.editing.store`` writes today (HDF5 gzip level 1, no shuffle);
* ``shuffle+zlib-6``: byte-shuffled float32, zlib level 6 (HDF5's shuffle + gzip 6);
* ``ternary+exceptions``: a 2-bit code per entry (0, +eps, -eps, other), packed and zlib-6
  compressed, plus the "other" entries as (int32 index, float32 value) pairs, zlib-6; checked to
  decode to the same bits;
* ``checkpoint XOR``: only the weights at the evaluation checkpoints (every 5 edits: the paper's
  downstream schedule), each stored as the XOR of its float32 bits with the previous
  checkpoint's, byte-shuffled, zlib-6 (exact; per edit = per checkpoint / 5);
* ``snapshots only (replay)``: what ``store_updates: false`` stores (the paper config's FT-C): no
  update, a snapshot of the weights (and bias) every ``--snapshot-every`` edits and after the
  last, as the store writes them (gzip-1), measured on the weights after the simulated edits;
  the evaluation jobs replay the edits in between (:mod:`editscale.editing.replay`). Per edit = the
  trajectory's snapshots / ``--n-edits``.

It prints bytes per edit and the projection for an ``--n-edits`` trajectory (3,000: the paper
config), against the 25 GB target of the issue. Results are also written as JSON to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

OUT_DIM, IN_DIM = 4096, 16384  # GPT-J mlp.fc_out (out, in)
EPS = 5e-5
RANK = 10
CHECKPOINT_EVERY = 5
TARGET_BYTES = 25e9


def gzip1_bytes(a: np.ndarray) -> int:
    """HDF5's gzip filter without shuffle: deflate of the raw little-endian bytes."""
    return len(zlib.compress(a.tobytes(), 1))


def shuffled_zlib_bytes(a: np.ndarray, level: int = 6) -> int:
    b = np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T)
    return len(zlib.compress(b.tobytes(), level))


def ternary_encode(delta: np.ndarray, eps32: np.float32) -> tuple[bytes, bytes, bytes]:
    """Codes 0: 0.0, 1: +eps, 2: -eps, 3: other; others as (index, value)."""
    code = np.full(delta.shape, 3, dtype=np.uint8)
    code[delta == 0] = 0
    code[delta == eps32] = 1
    code[delta == -eps32] = 2
    flat = code.ravel()
    pad = (-flat.size) % 4
    flat = np.concatenate([flat, np.zeros(pad, np.uint8)]).reshape(-1, 4)
    packed = flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)
    idx = np.flatnonzero(code.ravel() == 3).astype(np.int32)
    vals = delta.ravel()[idx].astype(np.float32)
    return (
        zlib.compress(packed.tobytes(), 6),
        zlib.compress(idx.tobytes(), 6),
        zlib.compress(vals.tobytes(), 6),
    )


def ternary_decode(
    parts: tuple[bytes, bytes, bytes], shape: tuple[int, int], eps32: np.float32
) -> np.ndarray:
    packed = np.frombuffer(zlib.decompress(parts[0]), dtype=np.uint8)
    code = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=1).ravel()[
        : shape[0] * shape[1]
    ]
    table = np.array([0.0, eps32, -eps32, 0.0], dtype=np.float32)
    out = table[code]
    idx = np.frombuffer(zlib.decompress(parts[1]), dtype=np.int32)
    out[idx] = np.frombuffer(zlib.decompress(parts[2]), dtype=np.float32)
    return out.reshape(shape)


def simulate(args) -> dict:
    gen = torch.Generator().manual_seed(37)
    w = torch.randn(OUT_DIM, IN_DIM, generator=gen) * 0.02
    rows = torch.randperm(OUT_DIM, generator=gen)[: args.rows].sort().values
    eps32 = np.float32(EPS)
    sums = {
        "dense": 0,
        "store gzip-1": 0,
        "shuffle+zlib-6": 0,
        "ternary+exceptions": 0,
        "checkpoint XOR": 0,
    }
    fractions = {"zero": 0.0, "at +-eps": 0.0, "other": 0.0}
    last_ckpt = w[rows].numpy().copy()
    t0 = time.perf_counter()
    for e in range(args.edits):
        delta = torch.zeros(OUT_DIM, IN_DIM, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=EPS)
        a = torch.randn(OUT_DIM, RANK, generator=gen)
        b = torch.randn(IN_DIM, RANK, generator=gen) * (
            torch.rand(IN_DIM, 1, generator=gen) > 0.05
        )  # ~5% dead keys
        for _ in range(args.steps):
            a = a + 0.3 * torch.randn(OUT_DIM, RANK, generator=gen)
            delta.grad = (a @ b.T) * 1e-4
            opt.step()
            with torch.no_grad():
                delta.clamp_(-EPS, EPS)
        d = delta.detach()
        with torch.no_grad():
            w += d
        sub = d[rows].numpy()
        scale = OUT_DIM / args.rows
        sums["dense"] += 4 * OUT_DIM * IN_DIM
        sums["store gzip-1"] += gzip1_bytes(sub) * scale
        sums["shuffle+zlib-6"] += shuffled_zlib_bytes(sub) * scale
        parts = ternary_encode(sub, eps32)
        back = ternary_decode(parts, sub.shape, eps32)
        if not np.array_equal(back.view(np.uint32), sub.view(np.uint32)):
            raise AssertionError(f"edit {e}: the ternary code does not decode to the same bits")
        sums["ternary+exceptions"] += sum(len(p) for p in parts) * scale
        fractions["zero"] += float((sub == 0).mean()) / args.edits
        fractions["at +-eps"] += float((np.abs(sub) == eps32).mean()) / args.edits
        fractions["other"] += float(((sub != 0) & (np.abs(sub) != eps32)).mean()) / args.edits
        if (e + 1) % CHECKPOINT_EVERY == 0:
            now = w[rows].numpy()
            xor = now.view(np.uint32) ^ last_ckpt.view(np.uint32)
            sums["checkpoint XOR"] += shuffled_zlib_bytes(xor) * scale
            last_ckpt = now.copy()
        print(
            f"edit {e + 1}/{args.edits}: {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    n_ckpt_edits = args.edits - args.edits % CHECKPOINT_EVERY
    per_edit = {
        k: v / (n_ckpt_edits if k == "checkpoint XOR" else args.edits) for k, v in sums.items()
    }
    # snapshots 0, k, 2k, ... and the last edit; the bias (OUT_DIM floats) uncompressed
    n_snapshots = len(set(range(0, args.n_edits + 1, args.snapshot_every)) | {args.n_edits})
    snapshot = gzip1_bytes(w[rows].numpy()) * OUT_DIM / args.rows + 4 * OUT_DIM
    per_edit["snapshots only (replay)"] = n_snapshots * snapshot / args.n_edits
    return {"per_edit": per_edit, "fractions": fractions, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument(
        "--n-edits", type=int, default=3000, help="trajectory length for the projection"
    )
    ap.add_argument(
        "--snapshot-every", type=int, default=100, help="snapshot interval (the paper config's)"
    )
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = simulate(args)
    runs = []
    for name, b in res["per_edit"].items():
        total = b * args.n_edits
        runs.append(
            {
                "name": name,
                "MiB_per_edit": b / 2**20,
                "GB_per_trajectory": total / 1e9,
                "fits_25GB": float(total <= TARGET_BYTES),
            }
        )
    report(
        "ftc_storage",
        runs,
        [("MiB_per_edit", "{:.2f}"), ("GB_per_trajectory", "{:.1f}"), ("fits_25GB", "{:.0f}")],
        f"{args.edits} simulated FT-C edits of a {OUT_DIM}x{IN_DIM} float32 matrix, eps {EPS}, "
        f"{args.steps} Adam steps each, measured on {args.rows} rows; projected to {args.n_edits} "
        "edits; entries: "
        + ", ".join(f"{k} {v:.3f}" for k, v in res["fractions"].items())
        + f"; {res['seconds']:.0f} s",
    )


if __name__ == "__main__":
    main()
