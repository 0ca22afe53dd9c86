"""Disabling edits (Table 2, section 3.4.1): single edits after which the model collapses.

Rule (stated in config ``disabling``): edit t is flagged when

* the update norm of any edited matrix exceeds ``norm_multiple`` x the median of that matrix's
  update norms over edits 1..t-1 (once at least ``min_history`` earlier edits exist; an editor
  that changes several matrices, as MEND, can blow up in one of them only), or
* ``collapse_window`` > 0 and efficacy collapses right after it: the mean ES of the next
  ``collapse_window`` edits is below ``collapse_es_below`` while the mean ES of the previous
  window (edit t included) was not; one collapse flags one edit (no second flag within the
  window).

Every flagged edit, and a seeded random sample of as many normal edits (at least
``min_normal``), is then applied alone to the unedited model (the editor recomputes it there);
the normalised distance ||delta W||_F / numel of each is the quantity of Table 2. For the first
flagged edit, greedy generations of a fixed prompt list before and after it give the analogue of
the paper's Table 8.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from pathlib import Path

import h5py
import numpy as np
import torch

from .downstream import generate_greedy
from .editors import load_editor_module
from .evaljobs import load_weights_into
from .models import arch_of, edit_parameter, load_model, model_identity
from .store import read_editor_state, read_metrics, rebuild_weights
from .trajectory import load_second_moment, select_records

log = logging.getLogger(__name__)


def flag_disabling(update_norm: np.ndarray, es: np.ndarray, *, norm_multiple: float, min_history: int,
                   collapse_window: int, collapse_es_below: float) -> list[tuple[int, str]]:
    """(edit t, reason) for every flagged edit (t is 1-based).

    ``update_norm``: (n,) or (n, matrices), the update norms of each edit (per edited matrix).
    """
    norms = np.asarray(update_norm, dtype=float)
    norms = norms[:, None] if norms.ndim == 1 else norms
    flagged = []
    n = len(norms)
    last_collapse = -(10**9)
    for i in range(n):
        reasons = []
        if i >= max(min_history, 1):
            med = np.median(norms[:i], axis=0)
            for j in np.flatnonzero(norms[i] > norm_multiple * med):
                where = f" (matrix {j})" if norms.shape[1] > 1 else ""
                reasons.append(f"update norm{where} {norms[i, j]:.4g} > {norm_multiple:g} x median {med[j]:.4g}")
        if collapse_window > 0 and i + collapse_window < n and i + 1 >= collapse_window:
            before = float(np.mean(es[i + 1 - collapse_window : i + 1]))
            after = float(np.mean(es[i + 1 : i + 1 + collapse_window]))
            if after < collapse_es_below <= before and i - last_collapse > collapse_window:
                last_collapse = i
                reasons.append(f"ES of the next {collapse_window} edits {after:.2f} < {collapse_es_below:g}")
        if reasons:
            flagged.append((i + 1, "; ".join(reasons)))
    return flagged


def run_disabling(*, trajectory_path, model_dir, counterfact_path, ordering_path, stats_path, out_json, out_csv,
                  rule: dict, prompts: list[str], seed: int, dtype: str = "float32", device: str = "cpu",
                  n_tokens: int = 20, editor_file=None) -> None:
    """Flag disabling edits of one trajectory, measure them standalone, store generations."""
    with h5py.File(trajectory_path, "r") as f:
        hparams = json.loads(f.attrs["hparams"])
        editor_name = str(f.attrs["editor"])
        traj_seed = int(f.attrs["seed"])
        state = read_editor_state(f)
    m = read_metrics(trajectory_path)
    n = len(m["edit"])
    records = select_records(counterfact_path, ordering_path, n)
    n_mat = sum(1 for k in m if k.startswith("update_norm_"))
    norms = np.stack([m[f"update_norm_{i}"] for i in range(n_mat)], axis=1)
    flagged = flag_disabling(norms, m["es"], norm_multiple=rule["norm_multiple"],
                             min_history=rule["min_history"], collapse_window=rule["collapse_window"],
                             collapse_es_below=rule["collapse_es_below"])
    flagged_t = {t for t, _ in flagged}
    normal_pool = [t for t in range(1, n + 1) if t not in flagged_t]
    k = min(len(normal_pool), max(len(flagged), rule["min_normal"]))
    normal = sorted(random.Random(seed).sample(normal_pool, k))
    log.info("%d disabling edits flagged, %d normal edits sampled", len(flagged), len(normal))

    model, tok = load_model(model_dir, dtype=dtype, device=device)
    spec = arch_of(model)
    second_moment = load_second_moment(stats_path, model_dir, int(hparams["layer"])) if stats_path else None
    extra = {} if editor_file is None else {"editor_file": editor_file, "identity": model_identity(model_dir)}
    editor = load_editor_module(editor_name).make_editor(model, tok, hparams, second_moment, traj_seed, state=state,
                                                         **extra)
    numel = {p: edit_parameter(model, p).numel() for p in editor.edited_modules}
    reasons = dict(flagged)
    rows = []
    for kind, steps in (("disabling", sorted(flagged_t)), ("normal", normal)):
        for t in steps:
            res = editor.compute(records[t - 1])  # on the unedited model: editors never modify it
            dists = [u.frobenius_norm() / numel[u.module] for u in res.updates]
            rows.append({"edit": t, "case_id": records[t - 1]["case_id"], "kind": kind,
                         "standalone_distance": float(np.mean(dists)),
                         "trajectory_update_norm": float(norms[t - 1].max()),
                         "reason": reasons.get(t, "")})
    summary = {}
    for kind in ("disabling", "normal"):
        vals = np.array([r["standalone_distance"] for r in rows if r["kind"] == kind])
        summary[kind] = {"count": int(vals.size), "mean": float(vals.mean()) if vals.size else None,
                         "std": float(vals.std(ddof=1)) if vals.size > 1 else None,
                         "min": float(vals.min()) if vals.size else None, "max": float(vals.max()) if vals.size else None}

    generations = None
    if flagged:
        t = flagged[0][0]
        generations = {"edit": t, "case_id": records[t - 1]["case_id"], "prompts": prompts}
        for label, step in (("before", t - 1), ("after", t)):
            load_weights_into(model, rebuild_weights(trajectory_path, step, spec, device=next(model.parameters()).device))
            generations[label] = generate_greedy(model, tok, prompts, max_new_tokens=n_tokens)
    out = {"trajectory": str(trajectory_path), "rule": rule, "seed": seed, "n_edits": n, "edits": rows,
           "summary": summary, "generations": generations}
    tmp = Path(str(out_json) + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, out_json)
    tmp = Path(str(out_csv) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["edit", "case_id", "kind", "standalone_distance", "trajectory_update_norm", "reason"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out_csv)
