"""Engine benchmark: ROME edit time vs. its arithmetic floor, evaluation, covariance, memory,
storage.

    .venv/bin/python benchmarks/bench_engine.py [--smollm2 DIR] [--records N] [--threads T]

For each model (a GPT-2-architecture model of ~14M parameters built here, and SmolLM2-135M when
its folder exists) it prints:

* seconds per ROME edit (paper hyperparameters, 21 context templates), and the time of 20 bare
  forward + backward passes of what its search runs (the blocks above the edited layer, on each
  row's positions from its subject token on) over the same batch, and their ratio;
* seconds per record evaluation (ES/PS/NS of one CounterFact record);
* covariance statistics throughput (tokens/s);
* peak resident memory of the process (each model runs in its own process);
* HDF5 bytes per edit of a trajectory file (updates + metrics), and of a snapshot.

Results are also written as JSON to ``benchmarks/results/``.

The SmolLM2-135M folder defaults to ``runs/smollm2/resources/models/smollm2`` inside the
repository: the folder ``make run-smollm2`` prepares, which ``benchmarks/prepare_smollm2.sh`` also
makes on its own (offline, ~30 s). When it is absent the SmolLM2 part is skipped, with a log line.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
WIKITEXT = SHARED / "wikitext" / "wikitext-2_valid.tokens.txt"
COUNTERFACT = SHARED / "counterfact" / "counterfact_500.json"
# the SmolLM2 folder of `make run-smollm2` (rule prepare_model in runs/smollm2/), also made by
# benchmarks/prepare_smollm2.sh
SMOLLM2_REL = Path("runs/smollm2/resources/models/smollm2")
log = logging.getLogger("bench_engine")
PAPER_ROME = {
    "v_num_grad_steps": 20,
    "v_lr": 0.5,
    "v_weight_decay": 0.5,
    "clamp_norm_factor": 4.0,
    "kl_factor": 0.0625,
    "mom2_adjustment": True,
    "context_template_lengths": [[5, 10], [10, 10]],
    "context_template_top_k": 5,
}


def build_gpt2_small(dest: Path) -> None:
    from editscale.data.corpora import iter_corpus
    from editscale.lm.models import build_scratch_model, train_bpe_tokenizer

    docs = list(
        iter_corpus({"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"})
    )
    tok = train_bpe_tokenizer(docs, vocab_size=8000)
    build_scratch_model(
        "gpt2", tok, dest, n_layer=6, d_model=384, n_head=6, n_positions=512, seed=0
    )


def bench_model(model_dir: str, layer: int, n_records: int, threads: int) -> dict:
    import h5py
    import torch

    from editscale.data.corpora import iter_corpus
    from editscale.data.counterfact import load_counterfact, write_ordering
    from editscale.editing.key_stats import compute_key_second_moment, load_key_second_moment
    from editscale.editing.runner import run_trajectory
    from editscale.editors.prompts import build_prompts
    from editscale.editors.rome import lower_pass, make_editor
    from editscale.lm.models import arch_of, load_model, model_identity, upper_layers_only
    from editscale.lm.scoring import evaluate_record
    from editscale.lm.suffix import split_rows

    torch.set_num_threads(threads)
    model, tok = load_model(model_dir)
    spec = arch_of(model)
    res = {
        "model": model_dir,
        "params": sum(p.numel() for p in model.parameters()),
        "layer": layer,
        "arch": spec.name,
    }
    work = Path(tempfile.mkdtemp(prefix="bench-"))

    # covariance statistics
    docs = iter_corpus({"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"})
    t0 = time.perf_counter()
    compute_key_second_moment(
        model,
        tok,
        layer,
        docs,
        work / "stats.h5",
        n_docs=300,
        max_doc_tokens=256,
        batch_tokens=8192,
        attrs={**model_identity(model_dir), "corpus": "wikitext", "corpus_fingerprint": "bench"},
    )
    dt = time.perf_counter() - t0
    with h5py.File(work / "stats.h5") as f:
        res["cov_tokens"] = int(f.attrs["count"])
    res["cov_tokens_per_s"] = res["cov_tokens"] / dt
    c = load_key_second_moment(work / "stats.h5", expect={})

    records = load_counterfact(COUNTERFACT)[:n_records]
    ed = make_editor(model, tok, {"layer": layer, **PAPER_ROME}, c, seed=0)

    # ROME edit time (the model is not modified by compute)
    ed.compute(records[0])  # warm-up
    edit_times, steps = [], []
    for rec in records:
        t0 = time.perf_counter()
        r = ed.compute(rec)
        edit_times.append(time.perf_counter() - t0)
        steps.append(r.info["v_steps"])
    res["rome_s_per_edit"] = sum(edit_times) / len(edit_times)
    res["rome_mean_v_steps"] = sum(steps) / len(steps)

    # the floor: 20 forward + backward passes of what the search runs, the blocks above the edited
    # layer on each row's positions from its subject token on, the KL prompt's subject token only
    # (packed, their prefix cached once, as editscale.lm.suffix does), over the same batch
    floor = []
    for rec in records:
        rw = rec["requested_rewrite"]
        pre, _, post = rw["prompt"].partition("{}")
        texts = [
            (
                c_.partition("{}")[0] + pre + rw["subject"] + post + " x",
                len(c_.partition("{}")[0] + pre + rw["subject"]),
            )
            for c_ in ed.context_templates
        ] + [(rw["subject"] + " is a", len(rw["subject"]))]
        enc, lookup = build_prompts(tok, texts)
        resid, _, _ = lower_pass(model, layer, enc, lookup)
        delta = torch.zeros(resid.shape[-1], requires_grad=True)
        t0 = time.perf_counter()
        with upper_layers_only(model, layer + 1) as upper:
            end = enc["attention_mask"].sum(1)
            end[-1] = lookup[-1] + 1
            rows = split_rows(model, upper, layer + 1, resid, enc["attention_mask"], lookup, end)
            h0 = rows.take(resid)
            for _ in range(20):
                h = rows.run(upper, h0 + delta)
                h.float().pow(2).mean().backward()  # no LM head at all: a floor, not a rival
        floor.append(time.perf_counter() - t0)
    res["floor_20_fwd_bwd_s"] = sum(floor) / len(floor)
    res["edit_over_floor"] = res["rome_s_per_edit"] / res["floor_20_fwd_bwd_s"]

    # record evaluation
    evaluate_record(model, tok, records[0])
    t0 = time.perf_counter()
    for rec in records:
        evaluate_record(model, tok, rec)
    res["eval_s_per_record"] = (time.perf_counter() - t0) / len(records)

    # storage: a short trajectory, snapshots only at 0 and at the end
    write_ordering(work / "order.json", [r["case_id"] for r in records])
    hp = {"layer": layer, **PAPER_ROME, "v_num_grad_steps": 2}
    run_trajectory(
        model_dir=model_dir,
        counterfact_path=COUNTERFACT,
        ordering_path=work / "order.json",
        stats_path=work / "stats.h5",
        out_path=work / "t.h5",
        method="rome",
        editor="rome",
        hparams=hp,
        n_edits=len(records),
        snapshot_every=10_000,
        seed=0,
    )
    with h5py.File(work / "t.h5") as f:
        snap = sum(f[f"snapshots/0/{k}"].id.get_storage_size() for k in f["snapshots/0"]) / len(
            f["snapshots/0"]
        )
        upd = sum(f[f"updates/0/{k}"].id.get_storage_size() for k in f["updates/0"])
        met = sum(f[f"metrics/{k}"].id.get_storage_size() for k in f["metrics"])
    res["h5_bytes_per_edit"] = (upd + met) / len(records)
    res["h5_bytes_per_snapshot"] = snap
    res["h5_file_bytes"] = (work / "t.h5").stat().st_size
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def smollm2_target(folder: str) -> list[tuple[str, str, int]]:
    """The SmolLM2-135M benchmark target when ``folder`` holds a model, else none (logged)."""
    if (Path(folder) / "config.json").exists():
        log.info("SmolLM2-135M: using %s", folder)
        return [("SmolLM2-135M (layer 6)", folder, 6)]
    log.warning(
        "skipping SmolLM2-135M: no model folder at %s (make it with "
        "benchmarks/prepare_smollm2.sh, or make run-smollm2)",
        folder,
    )
    return []


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--smollm2",
        default=str(REPO / SMOLLM2_REL),
        help=f"SmolLM2-135M folder, skipped if absent (default: {SMOLLM2_REL}, in the repository)",
    )
    ap.add_argument("--records", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("MODEL_DIR", "LAYER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.one:
        print(json.dumps(bench_model(args.one[0], int(args.one[1]), args.records, args.threads)))
        return
    if not COUNTERFACT.exists():
        sys.exit(f"needs the real data subsets in {SHARED}")
    runs = []
    smollm2 = smollm2_target(args.smollm2)
    with tempfile.TemporaryDirectory() as tmp:
        gpt2 = Path(tmp) / "gpt2-small"
        build_gpt2_small(gpt2)
        targets = [("gpt2-14M (layer 2)", str(gpt2), 2)] + smollm2
        for name, path, layer in targets:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    path,
                    str(layer),
                    "--records",
                    str(args.records),
                    "--threads",
                    str(args.threads),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["name"] = name
            runs.append(r)
    keys = [
        ("params", "{:,.0f}"),
        ("rome_s_per_edit", "{:.2f}"),
        ("floor_20_fwd_bwd_s", "{:.2f}"),
        ("edit_over_floor", "{:.2f}"),
        ("rome_mean_v_steps", "{:.1f}"),
        ("eval_s_per_record", "{:.3f}"),
        ("cov_tokens_per_s", "{:,.0f}"),
        ("peak_rss_mb", "{:,.0f}"),
        ("h5_bytes_per_edit", "{:,.0f}"),
        ("h5_bytes_per_snapshot", "{:,.0f}"),
    ]
    report("engine", runs, keys, f"threads={args.threads}, records={args.records}")


if __name__ == "__main__":
    main()
