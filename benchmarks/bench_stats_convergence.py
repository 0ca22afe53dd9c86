"""How many tokens ROME's key statistics need: cos(u, u_full) of u = C^-1 k* against the
token count.

    python benchmarks/bench_stats_convergence.py --model runs/smollm2/resources/models/smollm2 \
        [--layer 6] [--docs 2000] [--chunk 100] [--records 20] [--max-doc-tokens 256]

The statistics of block ``--layer`` are accumulated over ``--docs`` WikiText-2 paragraphs
(``../shared/data/wikitext``, ROME's fixed random order: ``stats.sample: random``, seed 1, so every
prefix is itself a random subset), ``--chunk`` documents at a time with
:func:`editscale.editing.key_stats.compute_key_second_moment`, keeping the running sums after every
chunk. For ``--records`` CounterFact records (``../shared/data/counterfact/counterfact_500.json``,
the first ones) ROME's key k* is computed by the ROME editor with the project's default settings (6
context templates; one v* step and no C, neither of which k* depends on). For every prefix it
reports:

* min over the records of cos(u_m, u_full), u = C^-1 k* as ROME computes it (Cholesky in
  float64), u_full from all ``--docs`` documents;
* the change a convergence test between two consecutive checkpoints would see: max over the
  records of 1 - cos(u_m, u_{m-1});
* the change the workflow's own test (``stats.convergence``) sees: max over the records of
  ||u_m - u_{m-1}|| / ||u_m||, u = C^-1 k of the bare subject keys
  (:func:`editscale.editing.key_stats.subject_keys`,
  :func:`~editscale.editing.key_stats.solution_change`), and where it stops with ``patience`` 2 for
  several tolerances.

It prints the tokens needed for cos(u, u_full) >= 0.999 on every record, the fraction of the
full run's tokens (and so of its time: the statistics cost is linear in tokens) that saves, and
where a tolerance on the checkpoint-to-checkpoint change (1e-3, 1e-4) would have stopped.
Results are also written as JSON to ``benchmarks/results/``. Seeded and deterministic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

from editscale.data.corpora import sample_corpus  # noqa: E402
from editscale.data.counterfact import load_counterfact, subject_prompt  # noqa: E402
from editscale.editing.key_stats import (
    compute_key_second_moment,
    probe_solutions,
    solution_change,
    stats_attrs,
    subject_keys,
)
from editscale.editors.rome import make_editor  # noqa: E402
from editscale.lm.models import load_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def solve(c: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """u = C^-1 k for every row k, as ROME (Cholesky of C in float64)."""
    chol = torch.linalg.cholesky(c)
    return torch.cholesky_solve(keys.T, chol).T


def cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", required=True, help="a prepared model folder (SmolLM2-135M: rule prepare_model)"
    )
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--max-doc-tokens", type=int, default=256)
    ap.add_argument("--wikitext", default=str(SHARED / "wikitext" / "wikitext-2_valid.tokens.txt"))
    ap.add_argument("--counterfact", default=str(SHARED / "counterfact" / "counterfact_500.json"))
    args = ap.parse_args()
    torch.manual_seed(37)
    model, tok = load_model(args.model, "float32", "cpu")

    records = load_counterfact(args.counterfact)[: args.records]
    editor = make_editor(
        model,
        tok,
        {
            "layer": args.layer,
            "context_template_lengths": [[5, 5]],
            "v_num_grad_steps": 1,
            "mom2_adjustment": False,
        },
        None,
        37,
    )
    k_star = torch.stack([editor.compute(r).vectors["k_star"].double() for r in records])
    probes = subject_keys(model, tok, args.layer, [subject_prompt(r) for r in records])

    corpus = {"type": "text_files", "paths": [args.wikitext], "doc_split": "lines"}
    docs = list(sample_corpus(corpus, args.docs, "random", 1))
    sums, counts, seconds = [], [], []
    mom2, count, t0 = None, 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, a in enumerate(range(0, len(docs), args.chunk)):
            part = Path(tmp) / f"chunk{i}.h5"
            compute_key_second_moment(
                model,
                tok,
                args.layer,
                docs[a : a + args.chunk],
                part,
                n_docs=args.chunk,
                max_doc_tokens=args.max_doc_tokens,
                checkpoint_every_docs=10**9,
                attrs={
                    "model_id": "bench",
                    "revision": "-",
                    "corpus": "wikitext",
                    "corpus_fingerprint": "-",
                },
                progress_every_s=1e9,
            )
            with h5py.File(part, "r") as h5:
                m = torch.from_numpy(h5["mom2_sum"][...])
            mom2 = m if mom2 is None else mom2 + m
            count += int(stats_attrs(part)["count"])
            sums.append(mom2.clone())
            counts.append(count)
            seconds.append(time.perf_counter() - t0)
    u_full = solve(sums[-1] / counts[-1], k_star)
    rows, prev, prev_probe = [], None, None
    for m, n, s in zip(sums, counts, seconds):
        u_probe = probe_solutions(m, n, probes)
        option_change = solution_change(u_probe, prev_probe)
        prev_probe = u_probe
        try:
            u = solve(m / n, k_star)
        except RuntimeError:  # not yet positive definite
            rows.append(
                {
                    "tokens": n,
                    "seconds": s,
                    "min_cos_full": float("nan"),
                    "change": float("nan"),
                    "option_change": option_change,
                }
            )
            prev = None
            continue
        change = float((1 - cos_rows(u, prev)).max()) if prev is not None else float("nan")
        rows.append(
            {
                "tokens": n,
                "seconds": s,
                "min_cos_full": float(cos_rows(u, u_full).min()),
                "change": change,
                "option_change": option_change,
            }
        )
        prev = u
    for r in rows:
        print(
            f"{r['tokens']:>9d} tokens  {r['seconds']:7.1f} s  min cos(u, u_full) "
            f"{r['min_cos_full']:.6f}  checkpoint change {r['change']:.2e}  stats.convergence "
            f"change {r['option_change']:.2e}"
        )
    total = counts[-1]
    need = next((r for r in rows if r["min_cos_full"] >= 0.999), rows[-1])
    runs = [
        {
            "name": "cos >= 0.999",
            "tokens": need["tokens"],
            "fraction_of_tokens": need["tokens"] / total,
            "seconds": need["seconds"],
            "min_cos_full": need["min_cos_full"],
        }
    ]
    for tol in (1e-3, 1e-4):
        stop = next((r for r in rows if r["change"] == r["change"] and r["change"] < tol), rows[-1])
        runs.append(
            {
                "name": f"change < {tol:g}",
                "tokens": stop["tokens"],
                "fraction_of_tokens": stop["tokens"] / total,
                "seconds": stop["seconds"],
                "min_cos_full": stop["min_cos_full"],
            }
        )
    for tol in (1e-1, 3e-2, 1e-2):  # stats.convergence with patience 2
        streak, stop = 0, rows[-1]
        for r in rows:
            streak = streak + 1 if r["option_change"] < tol else 0
            if streak >= 2:
                stop = r
                break
        runs.append(
            {
                "name": f"stats.convergence tolerance {tol:g}",
                "tokens": stop["tokens"],
                "fraction_of_tokens": stop["tokens"] / total,
                "seconds": stop["seconds"],
                "min_cos_full": stop["min_cos_full"],
            }
        )
    runs.append(
        {
            "name": "all documents",
            "tokens": total,
            "fraction_of_tokens": 1.0,
            "seconds": seconds[-1],
            "min_cos_full": 1.0,
        }
    )
    report(
        "stats_convergence",
        runs,
        [
            ("tokens", "{:.0f}"),
            ("fraction_of_tokens", "{:.3f}"),
            ("seconds", "{:.1f}"),
            ("min_cos_full", "{:.6f}"),
        ],
        f"{args.model} layer {args.layer}, {len(docs)} WikiText-2 paragraphs (<= "
        f"{args.max_doc_tokens} tokens, ROME's random order), checkpoints every {args.chunk} "
        f"documents, k* of {len(records)} CounterFact records; torch threads "
        f"{torch.get_num_threads()}",
    )


if __name__ == "__main__":
    main()
