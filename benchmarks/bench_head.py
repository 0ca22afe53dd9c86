"""The LM head's product on a few rows: whole (``F.linear``) against in vocabulary slices.

    .venv/bin/python benchmarks/bench_head.py [--vocab 49152] [--d 576] [--threads 1]

For every row count from 1 to 25 (the v* search reads the head at 6 m + 1 rows, the scoring at
one row per prompt), times the head's product taken whole and taken by
:class:`editscale.lm.head.SlicedHead` with slices of 256, 512 and 768 vocabulary rows, forced to
slice at every row count, and says whether each sliced product is bitwise equal to the whole one.
The shape defaults to SmolLM2-135M's head. Each time is the first quartile of 21 products, a 240 MB
buffer written between them so that the weights come from memory, as in the search. Output:
stdout and ``benchmarks/results/head-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from report import RESULTS
from torch import nn

from editscale.lm.head import SLICED_ROWS, SlicedHead

SIZES = (256, 512, 768)


def first_quartile_ms(fn, flush: torch.Tensor, repeats: int = 21) -> float:
    times = []
    for _ in range(repeats):
        flush.mul_(1.0)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 4] * 1e3


class _Forced(SlicedHead):
    """Slices at every row count, to measure where slicing pays."""

    def takes_slices(self, x: torch.Tensor) -> bool:
        return True


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(args.d, args.vocab, bias=False).requires_grad_(False)
    lin.weight.copy_(torch.randn(args.vocab, args.d, generator=gen) * 0.05)
    heads = {size: _Forced(lin, size) for size in SIZES}
    flush = torch.zeros(60_000_000)
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}; "
        f"head {args.vocab} x {args.d}, {args.threads} thread(s); ms per product "
        f"(sliced at {SLICED_ROWS.start}-{SLICED_ROWS.stop - 1} rows)"
    )
    rows = []
    for m in range(1, 26):
        x = torch.randn(m, args.d, generator=gen)
        with torch.no_grad():
            whole = lin(x)
            row = {"rows": m, "whole_ms": first_quartile_ms(lambda: lin(x), flush)}
            for size, head in heads.items():
                row[f"slices_{size}_ms"] = first_quartile_ms(lambda: head(x), flush)
                row[f"slices_{size}_equal"] = bool(torch.equal(head(x), whole))
        rows.append(row)
        print(
            f"rows {m:2d}: whole {row['whole_ms']:6.1f}"
            + "".join(
                f"  slices of {s} {row[f'slices_{s}_ms']:6.1f} "
                f"({'bitwise equal' if row[f'slices_{s}_equal'] else 'NOT equal'})"
                for s in SIZES
            ),
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"head-{platform.node()}.json"
    path.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
