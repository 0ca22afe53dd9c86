"""Evaluation benchmark: forgetting throughput (facts/s) and downstream seconds per checkpoint.

    .venv/bin/python benchmarks/bench_eval.py [--smollm2 DIR] [--facts N] [--n-per-label K]

Models: the default config's model (``resources/models/tiny-gpt2`` when ``make run`` has made it,
else the same architecture built here with random weights) and SmolLM2-135M when its folder
exists. Forgetting: the rewrite prompts of N real CounterFact records scored at one checkpoint
(probability + argmax tests), with and without paraphrases. Downstream: the four GLUE tasks with
K examples per label (the paper: 100) at one checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def default_model(tmp: Path) -> Path:
    built = REPO / "resources" / "models" / "tiny-gpt2"
    if (built / "config.json").exists():
        return built
    from editscale.data.corpora import iter_corpus
    from editscale.lm.models import build_scratch_model, train_bpe_tokenizer

    docs = list(
        iter_corpus(
            {
                "type": "text_files",
                "paths": [str(SHARED / "wikitext" / "wikitext-2_valid.tokens.txt")],
                "doc_split": "blank_lines",
            }
        )
    )
    tok = train_bpe_tokenizer(docs, vocab_size=2000)
    build_scratch_model(
        "gpt2", tok, tmp / "tiny", n_layer=4, d_model=64, n_head=4, n_positions=1024, seed=37
    )
    return tmp / "tiny"


def bench(model_dir: Path, n_facts: int, n_per_label: int, threads: int) -> dict:
    import torch

    from editscale.data.counterfact import load_counterfact
    from editscale.data.glue import load_glue, prepare_task_set
    from editscale.evaluation.downstream import evaluate_task_set
    from editscale.evaluation.forgetting import evaluate_facts
    from editscale.lm.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(model_dir)
    records = load_counterfact(SHARED / "counterfact" / "counterfact_500.json")[:n_facts]
    out = {"model": str(model_dir), "params": sum(p.numel() for p in model.parameters())}
    evaluate_facts(model, tok, records[:8])
    for label, para in (("facts_per_s", False), ("facts_per_s_with_paraphrases", True)):
        t0 = time.perf_counter()
        evaluate_facts(model, tok, records, paraphrases=para)
        out[label] = n_facts / (time.perf_counter() - t0)
    sets = [
        prepare_task_set(
            t, load_glue(t, {"type": "glue_files", "path": str(SHARED / "glue")}), n_per_label, 37
        )
        for t in ("sst2", "mrpc", "cola", "rte")
    ]
    t0 = time.perf_counter()
    for ts in sets:
        r = evaluate_task_set(model, tok, ts)
        out[f"{ts['task']}_f1"] = r["f1"]
    out["downstream_s_per_checkpoint"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smollm2", default=str(REPO / "runs/smollm2/resources/models/smollm2"))
    ap.add_argument("--facts", type=int, default=200)
    ap.add_argument("--n-per-label", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("default tiny-gpt2", default_model(Path(tmp)))]
        if (Path(args.smollm2) / "config.json").exists():
            targets.append(("SmolLM2-135M", Path(args.smollm2)))
        for name, path in targets:
            r = bench(path, args.facts, args.n_per_label, args.threads)
            r["name"] = name
            runs.append(r)
    keys = [
        ("params", "{:,.0f}"),
        ("facts_per_s", "{:,.1f}"),
        ("facts_per_s_with_paraphrases", "{:,.1f}"),
        ("downstream_s_per_checkpoint", "{:,.1f}"),
    ] + [(f"{t}_f1", "{:.3f}") for t in ("sst2", "mrpc", "cola", "rte")]
    report(
        "eval",
        runs,
        keys,
        f"threads={args.threads}, facts={args.facts}, "
        f"downstream examples per task={2 * args.n_per_label}",
    )


if __name__ == "__main__":
    main()
