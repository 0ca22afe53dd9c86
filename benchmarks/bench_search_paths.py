"""The v* search with and without its prefix cache, edit by edit on SmolLM2-135M.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_search_paths.py \
        [--smollm2 runs/smollm2] [--records 20] [--methods rome memit]

ROME (layer 6, config/smollm2.yaml's settings and statistics) and MEMIT (layers 4-6, its public
defaults) each edit the first ``--records`` unique-subject CounterFact records of
``../shared/data`` one after another into SmolLM2-135M (float32, one thread). Every edit is computed
twice on the same weights, by the reference search (every position at every step) and by the
prefix-cached one (:func:`editscale.editors.search_check.compare_search_paths`), the record is
scored (ES/PS/NS) with each update applied, and the cached path's update is kept. Per edit it
prints the relative difference of the updates and of the search targets (v* for ROME, z for
MEMIT), both paths' optimisation steps, ES/PS/NS and seconds; the summary line gives the largest
differences, the count of edits whose steps or scores differ, and the seconds per edit of each
path. ``--exact`` also computes each step on a float64 copy of the model (the reference path,
autograd in float64) and gives each float32 path's relative distance from that update.
``--timing`` only times the two paths edit by edit (the edit with its ES/PS/NS, and its v*
search alone; medians over the edits after the first) and prints the ratios; ``--repeats K``
runs each path and the scoring K times per edit, the two paths taking turns to go first, and
keeps the fastest of each (on a machine whose speed wanders, the computation's own cost).
Needs a run directory of ``make run-smollm2`` (ROME: statistics of layer 6; MEMIT: layers 4-6,
``runs/smollm2/resources/stats/smollm2/wikitext/layer{4,5,6}.h5``). Output: stdout and
``benchmarks/results/search_paths-<host>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from report import RESULTS  # noqa: E402

log = logging.getLogger("bench_search_paths")
COUNTERFACT = REPO.parent / "shared/data/counterfact/counterfact_500.json"
LAYERS = {"rome": [6], "memit": [4, 5, 6]}


def stats_files(method: str, run_dir: Path) -> dict[int, Path]:
    """The key statistics ``method`` reads, by layer, in a run directory of ``make run-smollm2``."""
    stats = run_dir / "resources/stats/smollm2/wikitext"
    return {layer: stats / f"layer{layer}.h5" for layer in LAYERS[method]}


def editor_for(method: str, model, tok, run_dir: Path, seed: int, state: dict | None = None):
    import yaml

    from editscale.config import method_hparams
    from editscale.editing.key_stats import load_key_second_moment
    from editscale.editors import load_editor_module

    cfg = yaml.safe_load((REPO / "config/smollm2.yaml").read_text())
    if method == "rome":
        hp = method_hparams(cfg, "rome", "smollm2")
    else:
        hp = {"layers": LAYERS["memit"], "mom2_update_weight": 15000.0}
    second = {
        layer: load_key_second_moment(path, expect={"layer": layer})
        for layer, path in stats_files(method, run_dir).items()
    }
    if method == "rome":
        second = second[6]
    return load_editor_module(method).make_editor(model, tok, hp, second, seed, state=state)


def time_paths(method: str, editor, model, tok, records: list[dict], repeats: int = 1) -> dict:
    """Seconds per edit of both paths, with the record's scores, and of their searches alone, the
    first edit left out as a warm-up; the default path's update is applied after each edit. With
    ``repeats`` each time is the fastest of that many runs (:func:`search_paths.project_paths`);
    the summary gives the medians and the median of the edits' own ratios."""
    from statistics import median

    from search_paths import project_paths

    from editscale.editors.base import apply_updates
    from editscale.lm.models import arch_of

    rows = []
    for t, rec in enumerate(records, 1):
        result, row = project_paths(editor, [rec], model, tok, repeats)
        apply_updates(model, result.updates, arch_of(model))
        rows.append(row)
        print(
            f"{method} edit {t:>2} case {rec['case_id']:>5}: old {row['seconds_old']:.2f} s "
            f"(search {row['search_old']:.2f}) new {row['seconds_new']:.2f} s (search "
            f"{row['search_new']:.2f}) scores {row['seconds_scores']:.2f} s dW "
            f"{row['paths_rel_diff']:.1e}"
        )
    timed = rows[1:] or rows
    old = median(r["seconds_old"] + r["seconds_scores"] for r in timed)
    new = median(r["seconds_new"] + r["seconds_scores"] for r in timed)
    search_old = median(r["search_old"] for r in timed)
    search_new = median(r["search_new"] for r in timed)
    summary = {
        "edits_timed": len(timed),
        "old_with_scores": old,
        "new_with_scores": new,
        "ratio_with_scores": new / old,
        "search_old": search_old,
        "search_new": search_new,
        "ratio_search": search_new / search_old,
        "median_edit_ratio_with_scores": median(
            (r["seconds_new"] + r["seconds_scores"]) / (r["seconds_old"] + r["seconds_scores"])
            for r in timed
        ),
        "median_edit_ratio_search": median(r["search_new"] / r["search_old"] for r in timed),
        "repeats": repeats,
    }
    print(f"{method} timing (medians): {json.dumps(summary)}")
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smollm2", type=Path, default=REPO / "runs/smollm2")
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=["rome", "memit"], choices=sorted(LAYERS))
    ap.add_argument("--seed", type=int, default=37)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--timing",
        action="store_true",
        help="only time the two paths edit by edit (each edit, with its scores, and its v* "
        "search alone; benchmarks/search_paths.py), printing the ratios",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="with --timing: run each path and the scoring this many times per edit (the paths "
        "taking turns to go first) and keep the fastest time of each",
    )
    ap.add_argument(
        "--exact",
        action="store_true",
        help="also compute every step on a float64 copy of the model (reference path) and give "
        "each float32 path's distance from it",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    from editscale.data.counterfact import load_counterfact, unique_subject_records
    from editscale.editors.search_check import SCORES, compare_search_paths
    from editscale.lm.models import load_model

    if args.repeats < 1 or (args.repeats != 1 and not args.timing):
        ap.error(f"--repeats {args.repeats}: a count of at least 1, and only with --timing")
    missing = [
        f"{method}: {path}"
        for method in args.methods
        for path in stats_files(method, args.smollm2).values()
        if not path.exists()
    ]
    if missing:  # before any edit is timed, not after the first method's minutes
        ap.error(
            "key statistics missing; the workflow makes them, e.g. .venv/bin/snakemake --cores 2 "
            "--configfile config/smollm2.yaml --directory runs/smollm2 "
            "resources/stats/smollm2/wikitext/layer4.h5:\n  " + "\n  ".join(missing)
        )
    records = unique_subject_records(load_counterfact(COUNTERFACT))[: args.records]
    results = RESULTS / f"search_paths-{platform.node()}.json"
    out = {"machine": f"{platform.node()} {platform.machine()}", "threads": args.threads}
    for method in args.methods:
        model, tok = load_model(args.smollm2 / "resources/models/smollm2")
        ed = editor_for(method, model, tok, args.smollm2, args.seed)
        if args.timing:
            out[method] = time_paths(method, ed, model, tok, records, args.repeats)
            _write(results, out)
            continue
        exact = None
        if args.exact:
            model64 = copy.deepcopy(model).double()
            exact = editor_for(method, model64, tok, args.smollm2, args.seed, ed.state_strings())
        target = "target" if method == "rome" else "z"
        rows = compare_search_paths(ed, [[r] for r in records], target_key=target, exact=exact)
        for t, r in enumerate(rows, 1):
            scores = " ".join(f"{k} {r[k + '_old']:.2f}/{r[k + '_new']:.2f}" for k in SCORES)
            far = ""
            if exact is not None:
                far = f" from float64 {r['exact_rel_old']:.1e}/{r['exact_rel_new']:.1e}"
            print(
                f"{method} edit {t:>2} case {r['case_ids'][0]:>5}: dW {r['update_rel']:.1e} "
                f"target {r['target_rel']:.1e}{far} steps {r['steps_old']}/{r['steps_new']} "
                f"{scores} {r['seconds_old']:.2f} s / {r['seconds_new']:.2f} s"
            )
        differ = sum(
            r["steps_old"] != r["steps_new"] or any(r[k + "_old"] != r[k + "_new"] for k in SCORES)
            for r in rows
        )
        summary = {
            "edits": len(rows),
            "max_update_rel": max(r["update_rel"] for r in rows),
            "max_target_rel": max(r["target_rel"] for r in rows),
            "edits_with_other_steps_or_scores": differ,
            "seconds_old": sum(r["seconds_old"] for r in rows) / len(rows),
            "seconds_new": sum(r["seconds_new"] for r in rows) / len(rows),
        }
        if exact is not None:
            summary["max_exact_rel_old"] = max(r["exact_rel_old"] for r in rows)
            summary["max_exact_rel_new"] = max(r["exact_rel_new"] for r in rows)
        print(f"{method}: {json.dumps(summary)}")
        out[method] = {"summary": summary, "rows": rows}
        _write(results, out)


def _write(path: Path, out: dict) -> None:
    """The results so far (after each method, so that a later one's failure keeps them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
