"""Disabling edits (Table 2, section 3.4.1): single edits after which the model collapses.

A disabling edit is the *onset* of a run-away of the update norm of an edited matrix: the first
edit whose update is many times larger than the updates just before it. The rule (config
``disabling``; :func:`find_onsets`) looks at each edited matrix j on its own (an editor that
changes several matrices, as MEND, can blow up in one of them only). Let x_t be the update norm
||delta W_j||_F of edit t (1-based) in matrix j and s the start of the current regime of j:
s = 1 at first, and s = t0 after an onset at edit t0. Edit t is an onset in matrix j when

* enough edits precede it: t - 1 >= ``min_history`` while no onset of j has been found yet,
  and t - t0 > ``refractory`` after an onset at t0 (edits t0+1 .. t0+``refractory`` are never
  onsets of j: the refractory window), and
* x_t > ``norm_multiple`` x B_t, where B_t is the median of x over the trailing window of the
  current regime, edits max(s, t - ``window``) .. t-1 (non-finite norms are left out of the
  median; a NaN x_t is never an onset).

Because the baseline window restarts at each onset (the onset edit included), the elevated level
of a run-away becomes the recent level that a later onset of the same matrix must jump above:
edits that merely stay at, or keep slowly rising from, the run-away's level are not onsets, and a
gradual rise is not one either (geometric growth g per edit gives x_t / B_t ~ g^((window+1)/2),
below ``norm_multiple`` for g < ``norm_multiple`` ** (2 / (window + 1)): 24% per edit with
10 and 20). An isolated spike is one onset; the run-away's drop back to normal is none, and a
later jump from the normal level again is a new onset. An edit is flagged when it is an onset
in any matrix; its reason names every matrix with an onset there.

Only the update norm is looked at: it is the per-edit quantity that Table 2 measures standalone
(the standalone distance is the update norm / numel of the edit recomputed on the unedited
model), while the trajectory's normalised distance accumulates every earlier edit, so a jump of
one edit is diluted there by all the others. The former efficacy-collapse criterion (a drop of
the windowed ES) was dropped: it flags edits whose update is ordinary and fires on noise once ES
sits at chance, which is not an edit "after which the distance spikes".

Every flagged edit, and a seeded random sample of as many normal edits (at least
``min_normal``), is then applied alone to the unedited model (the editor recomputes it there);
the normalised distance ||delta W||_F / numel of each is the quantity of Table 2. For the first
flagged edit, greedy generations of a fixed prompt list before and after it give the analogue of
the paper's Table 8.
"""

from __future__ import annotations

import csv
import logging
import random
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from editscale.data.counterfact import check_record_tokens, select_records
from editscale.editing.editor_state import trajectory_editor
from editscale.editing.replay import WeightLoader
from editscale.editing.store import read_edits_per_step, read_metrics
from editscale.io.files import atomic_open, atomic_write_json
from editscale.lm.generation import generate_greedy
from editscale.lm.models import arch_of, edit_parameter, load_model

log = logging.getLogger(__name__)

RULE_KEYS = ("norm_multiple", "window", "min_history", "refractory")


@dataclass(frozen=True)
class Onset:
    """The onset of a run-away of the update norm of one edited matrix."""

    edit: int  # 1-based edit index
    matrix: int  # index of the edited matrix (update_norm_<matrix>)
    norm: float  # its update norm at the onset
    baseline: float  # median update norm of the baseline window
    first: int  # first and last edit of the baseline window (1-based, inclusive)
    last: int

    def reason(self) -> str:
        ratio = self.norm / self.baseline if self.baseline > 0 else float("inf")
        return (
            f"onset in matrix {self.matrix}: update norm {self.norm:.4g} = {ratio:.3g} x the "
            f"median {self.baseline:.4g} of edits {self.first}..{self.last}"
        )


def trailing_medians(x: np.ndarray, window: int) -> np.ndarray:
    """b[k] = median of the finite values of x[max(0, k - window):k];
    NaN where there are none (k = 0)."""
    x = np.asarray(x, dtype=float)
    padded = np.concatenate([np.full(window, np.nan), np.where(np.isfinite(x), x, np.nan)])
    views = sliding_window_view(padded, window)[: len(x)]  # views[k] = x[k - window:k], NaN-padded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN
        return np.nanmedian(views, axis=1) if len(x) else np.empty(0)


def matrix_onsets(
    x: np.ndarray,
    matrix: int,
    *,
    norm_multiple: float,
    window: int,
    min_history: int,
    refractory: int,
) -> list[Onset]:
    """The onsets of one matrix's update-norm series ``x`` (n,), in order
    (see the module docstring)."""
    x = np.asarray(x, dtype=float)
    out: list[Onset] = []
    start, first_allowed = (
        0,
        min_history,
    )  # 0-based regime start; first offset in it that may be an onset
    while start + first_allowed < len(x):
        seg = x[start:]
        base = trailing_medians(seg, window)
        with np.errstate(invalid="ignore"):
            hits = np.flatnonzero(seg[first_allowed:] > norm_multiple * base[first_allowed:])
        if not hits.size:
            break
        k = first_allowed + int(hits[0])
        out.append(
            Onset(
                edit=start + k + 1,
                matrix=matrix,
                norm=float(seg[k]),
                baseline=float(base[k]),
                first=start + max(0, k - window) + 1,
                last=start + k,
            )
        )
        start, first_allowed = start + k, refractory + 1
    return out


def find_onsets(
    update_norm: np.ndarray, *, norm_multiple: float, window: int, min_history: int, refractory: int
) -> list[Onset]:
    """Every onset of every matrix, ordered by edit then matrix.

    ``update_norm``: (n,) or (n, matrices), the update norm of each edit (per edited matrix).
    """
    norms = np.asarray(update_norm, dtype=float)
    norms = norms[:, None] if norms.ndim == 1 else norms
    onsets = [
        o
        for j in range(norms.shape[1])
        for o in matrix_onsets(
            norms[:, j],
            j,
            norm_multiple=norm_multiple,
            window=window,
            min_history=min_history,
            refractory=refractory,
        )
    ]
    return sorted(onsets, key=lambda o: (o.edit, o.matrix))


def flag_disabling(
    update_norm: np.ndarray, *, norm_multiple: float, window: int, min_history: int, refractory: int
) -> list[tuple[int, str]]:
    """(edit t, reason) for every edit that is an onset in at least one matrix (t is 1-based)."""
    reasons: dict[int, list[str]] = {}
    for o in find_onsets(
        update_norm,
        norm_multiple=norm_multiple,
        window=window,
        min_history=min_history,
        refractory=refractory,
    ):
        reasons.setdefault(o.edit, []).append(o.reason())
    return [(t, "; ".join(r)) for t, r in sorted(reasons.items())]


def edits_per_step(trajectory_path) -> int:
    """Records per editing step of a trajectory (1 for files from before steps existed)."""
    return read_edits_per_step(trajectory_path)


def flag_steps(update_norm: np.ndarray, k: int, rule: dict) -> list[tuple[int, str]]:
    """:func:`flag_disabling` of a trajectory with ``k`` edits per step: the rule runs on the series
    of steps (a step's update is stored with its first edit, its other edits hold none), and a
    flagged step is named by its first edit."""
    norms = np.asarray(update_norm, dtype=float)
    flagged = flag_disabling(norms[::k], **{key: rule[key] for key in RULE_KEYS})
    if k == 1:
        return flagged
    return [
        ((s - 1) * k + 1, f"step {s} (edits {(s - 1) * k + 1}..{s * k}): {why} (steps, not edits)")
        for s, why in flagged
    ]


def _pick_edits(
    norms: np.ndarray, k_step: int, rule: dict, seed: int, n: int
) -> tuple[list[tuple[int, str]], list[int]]:
    """The flagged disabling steps (with why) and a seeded sample of normal steps (as many, at
    least ``rule["min_normal"]``, as far as there are)."""
    flagged = flag_steps(norms, k_step, rule)
    flagged_t = {t for t, _ in flagged}
    normal_pool = [t for t in range(1, n + 1, k_step) if t not in flagged_t]
    k = min(len(normal_pool), max(len(flagged), rule["min_normal"]))
    normal = sorted(random.Random(seed).sample(normal_pool, k))
    return flagged, normal


def _standalone_rows(
    editor,
    model,
    records: list[dict],
    flagged: list[tuple[int, str]],
    normal: list[int],
    k_step: int,
    norms: np.ndarray,
) -> list[dict]:
    """Each flagged and normal step's update computed alone on the unedited model (editors never
    modify it), as a normalised distance beside the trajectory's update norm."""
    numel = {p: edit_parameter(model, p).numel() for p in editor.edited_modules}
    reasons = dict(flagged)
    rows = []
    for kind, steps in (("disabling", sorted({t for t, _ in flagged})), ("normal", normal)):
        for t in steps:
            # on the unedited model (editors never modify it): the step's records together
            res = (
                editor.compute(records[t - 1])
                if k_step == 1
                else editor.compute_batch(records[t - 1 : t - 1 + k_step])
            )
            dists = [u.frobenius_norm() / numel[u.module] for u in res.updates]
            rows.append(
                {
                    "edit": t,
                    "case_id": records[t - 1]["case_id"],
                    "kind": kind,
                    "standalone_distance": float(np.mean(dists)),
                    "trajectory_update_norm": float(norms[t - 1].max()),
                    "reason": reasons.get(t, ""),
                }
            )
    return rows


def _distance_summary(rows: list[dict]) -> dict:
    """Count, mean, std, min and max of the standalone distances of each kind of edit."""
    summary = {}
    for kind in ("disabling", "normal"):
        vals = np.array([r["standalone_distance"] for r in rows if r["kind"] == kind])
        summary[kind] = {
            "count": int(vals.size),
            "mean": float(vals.mean()) if vals.size else None,
            "std": float(vals.std(ddof=1)) if vals.size > 1 else None,
            "min": float(vals.min()) if vals.size else None,
            "max": float(vals.max()) if vals.size else None,
        }
    return summary


def _write_disabling(out_json, out_csv, out: dict, rows: list[dict]) -> None:
    atomic_write_json(out_json, out, indent=1, sealed=True)
    with atomic_open(out_csv, "w", newline="", sealed=True) as fh:
        w = csv.DictWriter(
            fh,
            fieldnames=[
                "edit",
                "case_id",
                "kind",
                "standalone_distance",
                "trajectory_update_norm",
                "reason",
            ],
        )
        w.writeheader()
        w.writerows(rows)


def run_disabling(
    *,
    trajectory_path,
    model_dir,
    counterfact_path,
    ordering_path,
    stats_path,
    out_json,
    out_csv,
    rule: dict,
    prompts: list[str],
    seed: int,
    dtype: str = "float32",
    device: str = "cpu",
    n_tokens: int = 20,
    editor_file=None,
) -> None:
    """Flag disabling edits of one trajectory, measure them standalone, store generations."""
    m = read_metrics(trajectory_path)
    n = len(m["edit"])
    records = select_records(counterfact_path, ordering_path, n)
    n_mat = sum(1 for k in m if k.startswith("update_norm_"))
    norms = np.stack([m[f"update_norm_{i}"] for i in range(n_mat)], axis=1)
    k_step = edits_per_step(trajectory_path)
    flagged, normal = _pick_edits(norms, k_step, rule, seed, n)
    log.info(
        "%d disabling edits (run-away onsets) flagged, %d normal edits sampled",
        len(flagged),
        len(normal),
    )
    for t, why in flagged:
        log.info("edit %d (case %s): %s", t, records[t - 1]["case_id"], why)

    model, tok = load_model(model_dir, dtype=dtype, device=device)
    check_record_tokens(records, tok, model.config, counterfact_path)
    editor = trajectory_editor(trajectory_path, model, tok, model_dir, stats_path, editor_file)
    rows = _standalone_rows(editor, model, records, flagged, normal, k_step, norms)
    generations = None
    if flagged:
        t = flagged[0][0]
        generations = {"edit": t, "case_id": records[t - 1]["case_id"], "prompts": prompts}
        loader = WeightLoader(
            trajectory_path, model, arch_of(model), records, lambda: editor
        )  # after the standalone edits
        for label, step in (("before", t - 1), ("after", t + k_step - 1)):
            loader.load(step)
            generations[label] = generate_greedy(model, tok, prompts, max_new_tokens=n_tokens)
    out = {
        "trajectory": str(trajectory_path),
        "rule": rule,
        "seed": seed,
        "n_edits": n,
        "edits_per_step": k_step,
        "edits": rows,
        "summary": _distance_summary(rows),
        "generations": generations,
    }
    _write_disabling(out_json, out_csv, out, rows)
