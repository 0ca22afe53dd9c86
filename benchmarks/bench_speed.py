"""Seconds per edit of every editor: the project's beside the public code's, on one machine in
one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_speed.py --refcode REFCODE \
        --threads 2 --organism . --smollm2 runs/smollm2 [--records 3] [--batch 10] \
        [--models organism smollm2]

    # the v* search's prefix cache: old path vs new path vs the public code, with scores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_speed.py --refcode REFCODE --paths \
        --methods rome memit --threads 1 --records 5 --batch 0

Per model, each editor edits the first ``--records`` CounterFact records one at a time (each on
the model after the project's earlier updates), then one step of ``--batch`` records (the batched
editors). The timings come from the side-by-side harnesses, which compute each update with both
implementations on the same weights:

* ROME and r-ROME's ROME core: ``bench_rome_reference.run`` (kmeng01/rome);
* MEMIT, EMMET, AlphaEdit, ENCORE: ``bench_memit_reference.run`` (their public repositories);
* FT-C and MEND: the project's editors only (``editor.compute``; MEND with the run directory's
  trained editor, ``resources/editors/<model>/mend.safetensors``). Their public code (kmeng01/rome's
  FT baseline, eric-mitchell/mend) is not set up here.

``--paths`` (ROME and the batched editors): each step is also computed with the project's
reference v* search (no prefix cache, ``search_prefix_cache = False``) on the same weights, and the
record is scored (ES/PS/NS) once (``search_paths.py``). The second table then gives seconds per edit
with its scores (edit + ES/PS/NS) of the old path, the new path and the public code, the v* search
alone of both paths, their ratios, and the largest relative difference between the two paths'
updates.

The public trees are ``<--refcode>/<rome|memit|emmet|alphaedit|encore>``, extracted and patched as
the harnesses' docstrings say (outside this repository). Models:

* ``organism``: the default run's ``toy-llama`` (``--organism``: the working directory of a
  finished ``make run``), its statistics of layers 2 and 3, ROME with config/config.yaml's
  settings and the batched editors with config/lifelong.yaml's;
* ``smollm2``: ``--smollm2`` (a SmolLM2 run directory with statistics of layers 4-6:
  runs/smollm2-lifelong of `make run-smollm2-lifelong` has them, runs/smollm2 only layer 6),
  ROME at layer 6, the batched editors on layers 4-6 with their public defaults.

The organism's tokenizer adds BOS to every text; the public ROME and MEMIT code then put BOS into
the target tokens (EMMET's, AlphaEdit's and ENCORE's strip it), so their organism updates differ
from the project's (the ``agree`` column: steps within the harness's tolerance); the seconds compare
the same work. Measured on the 2-core VM: docs/benchmarks.md. Output: the tables on stdout and
``benchmarks/results/speed-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from report import RESULTS  # noqa: E402

log = logging.getLogger("bench_speed")

BATCHED = ("memit", "emmet", "alphaedit", "encore")


def model_setups(args) -> dict[str, dict]:
    org, sm = Path(args.organism).resolve(), Path(args.smollm2).resolve()
    return {
        "organism": {
            "model": org / "resources/models/toy-llama",
            "stats": org / "resources/stats/toy-llama/toy_heldout",
            "rome_config": REPO / "config/config.yaml",
            "config": REPO / "config/lifelong.yaml",
            "key": "toy-llama",
            "layers": [2, 3],
            "rome_layer": 3,
            "counterfact": org / "resources/worlds/toy/counterfact.json",
            "mend_file": org / "resources/editors/toy-llama/mend.safetensors",
        },
        "smollm2": {
            "model": sm / "resources/models/smollm2",
            "stats": sm / "resources/stats/smollm2/wikitext",
            "rome_config": REPO / "config/smollm2.yaml",
            "config": REPO / "config/smollm2.yaml",
            "key": "smollm2",
            "layers": [4, 5, 6],
            "rome_layer": 6,
            "counterfact": REPO.parent / "shared/data/counterfact/counterfact_500.json",
            "mend_file": sm / "resources/editors/smollm2/mend.safetensors",
        },
    }


def per_edit(rows: list[dict], single: int) -> dict:
    """Mean seconds per edit of the single edits and of the batch step
    (its seconds / its records); with the harness's ``--paths`` columns, the same for the old
    and new search paths, their searches alone and the scoring."""
    singles, batch = rows[:single], rows[single:]

    def mean(key: str, of: list[dict]) -> float | None:
        vals = [r[key] for r in of if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    out = {
        "proj_single": mean("seconds_proj", singles) or 0.0,
        "ref_single": mean("seconds_ref", singles) or 0.0,
        "agree": f"{sum(bool(r.get('agree')) for r in rows)}/{len(rows)}",
    }
    if singles and "seconds_old" in singles[0]:
        for key in ("seconds_old", "seconds_new", "search_old", "search_new", "seconds_scores"):
            out[key] = mean(key, singles)
        out["paths_rel_diff"] = max(r["paths_rel_diff"] for r in rows)
        out["paths_steps_differ"] = sum(r["steps_old"] != r["steps_new"] for r in rows)
    if batch:
        n = len(batch[0]["case_ids"])
        out.update(proj_batch=batch[0]["seconds_proj"] / n, ref_batch=batch[0]["seconds_ref"] / n)
    return out


def paths_table(rows: list[dict]) -> list[str]:
    """Lines of the old-vs-new-vs-public table (seconds per single edit, one thread as run)."""
    lines = [
        f"{'model':>9} {'method':>9} {'old+sc':>7} {'new+sc':>7} {'pub+sc':>7} {'new/old':>8} "
        f"{'new/pub':>8} {'search old':>11} {'new':>6} {'new/old':>8} {'max diff':>9} steps!="
    ]
    for r in rows:
        if r.get("seconds_old") is None:
            continue
        sc = r["seconds_scores"]
        old, new, pub = r["seconds_old"] + sc, r["seconds_new"] + sc, r["ref_single"] + sc
        lines.append(
            f"{r['model']:>9} {r['method']:>9} {old:7.2f} {new:7.2f} {pub:7.2f} {new / old:8.3f} "
            f"{new / pub:8.3f} {r['search_old']:11.2f} {r['search_new']:6.2f} "
            f"{r['search_new'] / r['search_old']:8.3f} {r['paths_rel_diff']:9.1e} "
            f"{r['paths_steps_differ']}"
        )
    return lines


def time_rome(setup: dict, args) -> dict:
    import bench_rome_reference as rr

    ns = SimpleNamespace(
        rome_src=(Path(args.refcode) / "rome").resolve(),
        model=setup["model"],
        stats=setup["stats"] / f"layer{setup['rome_layer']}.h5",
        config=setup["rome_config"],
        model_key=setup["key"],
        counterfact=setup["counterfact"],
        records=args.records,
        seed=args.seed,
        threads=args.threads,
        eval=False,
        paths=args.paths,
    )
    rows, _ = rr.run(ns)  # each row's "agree": the harness's tolerances
    return per_edit(rows, len(rows))


def time_batched(method: str, setup: dict, args) -> dict:
    import bench_memit_reference as mr

    ns = SimpleNamespace(
        method=method,
        src=(Path(args.refcode) / method).resolve(),
        layers=setup["layers"],
        model=setup["model"],
        stats_dir=setup["stats"],
        config=setup["config"],
        model_key=setup["key"],
        counterfact=setup["counterfact"],
        records=args.records,
        batch=args.batch,
        seed=args.seed,
        threads=args.threads,
        paths=args.paths,
    )
    rows, _ = mr.run(ns)
    return per_edit(rows, args.records)


def time_project_only(editor: str, setup: dict, args) -> dict | None:
    """Seconds per edit of the project's FT-C or MEND (no public code run)."""
    import yaml

    from editscale.config import method_hparams
    from editscale.data.counterfact import load_counterfact
    from editscale.editors import load_editor_module
    from editscale.editors.base import apply_updates
    from editscale.lm.models import arch_of, load_model, model_identity

    if editor == "mend" and not setup["mend_file"].exists():
        return None
    cfg = yaml.safe_load(Path(setup["rome_config"]).read_text())
    hp = method_hparams(cfg, editor, setup["key"])
    model, tok = load_model(setup["model"], "float32", "cpu")
    extra = (
        {}
        if editor != "mend"
        else {"editor_file": setup["mend_file"], "identity": model_identity(setup["model"])}
    )
    ed = load_editor_module(editor).make_editor(model, tok, hp, None, args.seed, **extra)
    seconds = []
    for rec in load_counterfact(setup["counterfact"])[: args.records]:
        t0 = time.perf_counter()
        result = ed.compute(rec)
        seconds.append(time.perf_counter() - t0)
        apply_updates(model, result.updates, arch_of(model))
    return {"proj_single": sum(seconds) / len(seconds), "ref_single": None, "agree": "n/a"}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--refcode", type=Path, required=True, help="folder of the patched public trees"
    )
    ap.add_argument(
        "--organism", type=Path, default=REPO, help="working directory of a finished default run"
    )
    ap.add_argument("--smollm2", type=Path, default=REPO / "runs/smollm2")
    ap.add_argument(
        "--models", nargs="+", default=["organism", "smollm2"], choices=["organism", "smollm2"]
    )
    ap.add_argument("--methods", nargs="+", default=["rome", "ftc", "mend", *BATCHED])
    ap.add_argument("--records", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--seed", type=int, default=37)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--paths",
        action="store_true",
        help="also the project's reference v* search (no prefix cache) and the scoring",
    )
    ap.add_argument(
        "--child", type=Path, default=None, help=argparse.SUPPRESS
    )  # one (model, method) -> JSON
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.child is not None:  # the public trees share package names (rome, util): one per process
        name, method = args.models[0], args.methods[0]
        setup = model_setups(args)[name]
        torch.manual_seed(args.seed)
        if method == "rome":
            res = time_rome(setup, args)
        elif method in BATCHED:
            res = time_batched(method, setup, args)
        else:
            res = time_project_only(method, setup, args)
        args.child.write_text(json.dumps(res))
        return
    setups = model_setups(args)
    rows = []
    for name in args.models:
        for method in args.methods:
            out = RESULTS / f".speed-{name}-{method}.json"
            RESULTS.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                __file__,
                "--refcode",
                str(args.refcode),
                "--organism",
                str(args.organism),
                "--smollm2",
                str(args.smollm2),
                "--models",
                name,
                "--methods",
                method,
                "--records",
                str(args.records),
                "--batch",
                str(args.batch),
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads),
                "--child",
                str(out),
                *(["--paths"] if args.paths else []),
            ]
            subprocess.run(cmd, check=True)
            res = json.loads(out.read_text())
            out.unlink()
            if res is None:
                log.info(
                    "%s on %s skipped (no trained editor file %s)",
                    method,
                    name,
                    setups[name]["mend_file"],
                )
                continue
            rows.append({"name": f"{name} {method}", "model": name, "method": method, **res})
            log.info("%s", rows[-1])

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    print(
        f"{'model':>9} {'method':>10} {'s/edit ours':>12} {'public':>8} {'batch ours':>11} "
        f"{'public':>8}  agree"
    )
    for r in rows:
        print(
            f"{r['model']:>9} {r['method']:>10} {fmt(r['proj_single']):>12} "
            f"{fmt(r.get('ref_single')):>8} {fmt(r.get('proj_batch')):>11} "
            f"{fmt(r.get('ref_batch')):>8}  {r['agree']}"
        )
    header = (
        f"machine {platform.node()} {platform.processor() or platform.machine()}, threads "
        f"{args.threads}; {args.records} single edits, then one step of {args.batch} (batched "
        "editors); seconds per edit of computing the update (batch: the step's seconds / its "
        "records)"
    )
    print(header)
    if args.paths:
        print("\n".join(paths_table(rows)))
        print(
            "seconds per single edit with its ES/PS/NS (+sc): the project's reference search path "
            "(old), its prefix-cached path (new), the public code (pub); search: the v* searches "
            "alone; max diff: largest ||dW_new - dW_old|| / ||dW_old||"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"speed-{platform.node()}.json"
    out.write_text(
        json.dumps({"setup": header, "torch": torch.__version__, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
