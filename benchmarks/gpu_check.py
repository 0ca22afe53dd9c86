"""The trajectory, store and replay path on a GPU: one command, printing its figures (JSON).

On tiny random GPT-2 and Llama models built here (no downloads), for each architecture:
ROME and FT-C trajectories (FT-C with ``store_updates: false``, its weights between snapshots
rebuilt by replaying the editor) run with ``device`` cuda, then their sealed files are verified,
the weights after every edit rebuilt on the GPU, and the FT-C replay checked bitwise against its
stored snapshots on the same device. The same trajectories run on the CPU too, and the largest
difference of the per-edit metrics between the two devices is printed (an observation, not a
check: kernels differ). Usage::

    python benchmarks/gpu_check.py [--out results.json] [--device cuda]

(``--device cpu`` runs the same steps on the CPU twice: a rehearsal of the script without a GPU.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from editscale.data.counterfact import select_records, write_ordering
from editscale.editing.editor_state import trajectory_editor
from editscale.editing.key_stats import compute_key_second_moment
from editscale.editing.replay import WeightLoader
from editscale.editing.runner import run_trajectory
from editscale.editing.store import read_metrics, rebuild_weights
from editscale.io.h5 import verify
from editscale.lm.models import (
    arch_of,
    build_scratch_model,
    load_model,
    model_identity,
    train_bpe_tokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tiny records
from tests.conftest import (  # noqa: E402
    OBJECTS,
    SUBJECTS,
    TEMPLATES,
    _tokenizer_texts,
    synthetic_records,
)

N_EDITS, SNAPSHOT_EVERY = 8, 3
ROME = {"layer": 1, "v_num_grad_steps": 5, "context_template_lengths": [[4, 2]]}
FTC = {"layer": 0, "lr": 1e-2, "norm_constraint": 1e-3, "num_steps": 4}
TIMINGS = {"edit_seconds", "eval_seconds"}


def _inputs(d: Path, arch: str, device: str) -> dict:
    tok = train_bpe_tokenizer(_tokenizer_texts(), vocab_size=600)
    model_dir = d / f"model-{arch}"
    build_scratch_model(arch, tok, model_dir, n_layer=3, d_model=64, n_head=4, n_positions=128)
    (d / "cf.json").write_text(json.dumps(synthetic_records()))
    write_ordering(d / "order.json", [100 + i for i in (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)], sample=0)
    model, tok = load_model(model_dir, device=device)
    docs = [
        f"{s} {t.replace('{}', s)} {o} and more text {i}"
        for i, (s, t, o) in enumerate(zip(SUBJECTS * 30, TEMPLATES * 75, OBJECTS * 50))
    ]
    stats = d / f"stats-{arch}.h5"
    compute_key_second_moment(
        model, tok, 1, docs, stats, n_docs=len(docs), max_doc_tokens=64, batch_tokens=2048,
        attrs={**model_identity(model_dir), "corpus": "synthetic", "corpus_fingerprint": "x"},
    )  # fmt: skip
    return {"model_dir": model_dir, "cf": d / "cf.json", "order": d / "order.json", "stats": stats}


def _run(inp: dict, out: Path, editor: str, device: str, **kw) -> float:
    t0 = time.perf_counter()
    run_trajectory(
        model_dir=inp["model_dir"], counterfact_path=inp["cf"], ordering_path=inp["order"],
        stats_path=inp["stats"] if editor == "rome" else None, out_path=out, method=editor,
        editor=editor, hparams=ROME if editor == "rome" else FTC, n_edits=N_EDITS,
        snapshot_every=SNAPSHOT_EVERY, seed=3, device=device, progress_every_s=0.0, **kw,
    )  # fmt: skip
    return time.perf_counter() - t0


def _replay_check(inp: dict, path: Path, device: str) -> int:
    """Load every edit's weights through the replaying loader (checks each snapshot bitwise)."""
    model, tok = load_model(inp["model_dir"], device=device)
    records = select_records(inp["cf"], inp["order"], N_EDITS)
    loader = WeightLoader(
        path, model, arch_of(model), records,
        lambda: trajectory_editor(path, model, tok, inp["model_dir"], None),
    )  # fmt: skip
    for t in range(N_EDITS + 1):
        loader.load(t)
    return loader.replayed


def _metric_gap(a: Path, b: Path) -> float:
    ma, mb = read_metrics(a), read_metrics(b)
    gaps = [float(np.nanmax(np.abs(ma[k] - mb[k]))) for k in ma if k not in TIMINGS and k in mb]
    return max(gaps) if gaps else 0.0


def check(arch: str, d: Path, dev: str) -> dict:
    inp = _inputs(d, arch, dev)
    out: dict = {"arch": arch}
    for editor, kw in (("rome", {}), ("ftc", {"store_updates": False})):
        gpu, cpu = d / f"{arch}-{editor}-{dev}.h5", d / f"{arch}-{editor}-cpu.h5"
        out[f"{editor}_{dev}_s"] = round(_run(inp, gpu, editor, dev, **kw), 2)
        out[f"{editor}_cpu_s"] = round(_run(inp, cpu, editor, "cpu", **kw), 2)
        out[f"{editor}_sealed"] = verify(gpu) and verify(cpu)
        out[f"{editor}_metric_gap_{dev}_vs_cpu"] = _metric_gap(gpu, cpu)
        if kw:
            out[f"{editor}_replayed_edits_{dev}"] = _replay_check(inp, gpu, dev)
        else:
            w = rebuild_weights(gpu, N_EDITS, device=dev)
            out[f"{editor}_rebuilt_on"] = str(next(iter(w.values())).device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to rehearse")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU (or --device cpu)")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("gpt2", "llama"):
            (Path(tmp) / arch).mkdir()
            results["runs"].append(check(arch, Path(tmp) / arch, args.device))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
