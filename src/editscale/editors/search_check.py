"""The v* search with and without its prefix cache, side by side on the same weights.

:func:`editscale.editors.rome.optimise_delta` runs each search step on the positions from each
row's subject token to the last one its loss reads, the rows packed into one sequence
(``prefix_cache=True``, the default), or on every position (the reference path).
:func:`compare_search_paths` edits records one step after another into one model; for every step
it computes the update both ways on the current weights, scores the record (ES/PS/NS) with
each update applied, then applies the cached path's update before the next step. So edit t
compares the two paths on the model after t - 1 edits, and differences never accumulate. The tests
(``tests/editors/test_search_cache.py``) and ``benchmarks/bench_speed.py`` use it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from editscale.editors.base import EditResult, apply_updates
from editscale.lm.models import arch_of, edit_parameter
from editscale.lm.scoring import evaluate_record

SCORES = ("es", "ps", "ns")


def relative_difference(new: torch.Tensor, old: torch.Tensor) -> float:
    """||new - old|| / ||old|| in float64 (0 when both are 0)."""
    new, old = new.double(), old.double()
    scale = old.norm()
    diff = (new - old).norm()
    return float(diff / scale) if scale > 0 else float(diff)


def update_difference(new: EditResult, old: EditResult) -> float:
    """The largest relative difference between the two results' updates (dW in (out, in))."""
    if [u.module for u in new.updates] != [u.module for u in old.updates]:
        raise ValueError("the two results edit different matrices")
    return max(
        relative_difference(a.delta_out_in(), b.delta_out_in())
        for a, b in zip(new.updates, old.updates)
    )


@contextmanager
def _applied(model, result: EditResult) -> Iterator[None]:
    """The model with ``result``'s updates applied; the weights are restored afterwards."""
    saved = {u.module: edit_parameter(model, u.module).detach().clone() for u in result.updates}
    apply_updates(model, result.updates, arch_of(model))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                edit_parameter(model, name).copy_(weight)


def _timed(editor, records: list[dict], cached: bool) -> tuple[EditResult, float]:
    editor.search_prefix_cache = cached
    t0 = time.perf_counter()
    result = editor.compute_batch(records) if len(records) > 1 else editor.compute(records[0])
    return result, time.perf_counter() - t0


def compare_search_paths(
    editor,
    steps: Sequence[list[dict]],
    score: bool = True,
    target_key: str = "target",
    exact=None,
) -> list[dict]:
    """Per step (a list of records, one step of the editor): the relative differences of the
    update (``update_rel``) and of the search's target vectors (``target_rel``: ``vectors
    [target_key]``, v* for ROME, ``z`` for MEMIT), both paths' optimisation steps and seconds, and
    with ``score``, each path's ES/PS/NS of the step's first record. The cached path's update is
    applied after each step. ``editor``: a ROME- or MEMIT-family editor (``search_prefix_cache``).

    ``exact``: the same editor on a float64 copy of the model (its context templates given); each
    step is computed there too, by the reference path (in float64 throughout: half-precision
    logits are taken to float32, float64 ones kept), and each path's update is compared with it
    (``exact_rel_old``, ``exact_rel_new``: how far each float32 path is from the float64 update);
    the cached path's update is applied to it as well, so both models stay the same.
    """
    model = editor.model
    rows = []
    for records in steps:
        old, t_old = _timed(editor, records, cached=False)
        new, t_new = _timed(editor, records, cached=True)
        row = {
            "case_ids": [r["case_id"] for r in records],
            "update_rel": update_difference(new, old),
            "target_rel": relative_difference(new.vectors[target_key], old.vectors[target_key]),
            "steps_old": old.info.get("v_steps"),
            "steps_new": new.info.get("v_steps"),
            "seconds_old": t_old,
            "seconds_new": t_new,
        }
        if exact is not None:
            ref, _ = _timed(exact, records, cached=False)
            row["exact_rel_old"] = update_difference(old, ref)
            row["exact_rel_new"] = update_difference(new, ref)
            apply_updates(exact.model, new.updates, arch_of(exact.model))
        if score:
            for label, result in (("old", old), ("new", new)):
                with _applied(model, result):
                    scores = evaluate_record(model, editor.tok, records[0])
                row.update({f"{k}_{label}": scores[k] for k in SCORES})
        apply_updates(model, new.updates, arch_of(model))
        rows.append(row)
    return rows
