"""The project's v* search with and without its prefix cache, timed in the side-by-side harnesses.

``bench_rome_reference.run`` and ``bench_memit_reference.run`` call :func:`project_paths` for each
step when ``--paths`` is given: the step's update computed by the reference path
(``search_prefix_cache = False``, every position at every search step) and by the default path
(the prefix cache), both on the current weights; the seconds of each, the seconds of its v* searches
alone (the time inside ``optimise_delta``), the relative difference of the two updates, and the
seconds of scoring the record (ES/PS/NS, the same for both paths). The default path's result is
returned for the harness to compare with the public code and apply.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from editscale.editors import memit, rome
from editscale.editors.search_check import update_difference
from editscale.lm.scoring import evaluate_record


class _SearchClock:
    """Seconds spent in ``optimise_delta`` while a lap is open (both editors' module names)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._inner = rome.optimise_delta

    def _timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    @contextmanager
    def lap(self) -> Iterator[dict]:
        out = {"search": 0.0, "total": 0.0}
        saved = (rome.optimise_delta, memit.optimise_delta)
        rome.optimise_delta = memit.optimise_delta = self._timed
        self.seconds = 0.0
        t0 = time.perf_counter()
        try:
            yield out
        finally:
            out["total"] = time.perf_counter() - t0
            out["search"] = self.seconds
            rome.optimise_delta, memit.optimise_delta = saved


def project_paths(editor, records: list[dict], model, tok, repeats: int = 1) -> tuple[object, dict]:
    """The default path's result and the timings of both paths (see the module docstring).

    ``repeats`` > 1 runs each path (and the scoring) that many times on the same weights, the two
    paths taking turns to go first, and keeps the fastest time of each: the computation's cost
    with less of the machine's interference. The repeated updates must be bitwise equal."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    clock = _SearchClock()
    results, row = {}, {}
    paths = (("old", False), ("new", True))
    for rep in range(repeats):
        for name, cached in paths if rep % 2 == 0 else paths[::-1]:
            editor.search_prefix_cache = cached
            with clock.lap() as lap:
                if len(records) == 1:
                    result = editor.compute(records[0])
                else:
                    result = editor.compute_batch(records)
            if name in results and not _same_updates(result, results[name]):
                raise RuntimeError(f"the {name} path gave another update when repeated")
            results[name] = result
            for key, value in (
                (f"seconds_{name}", lap["total"]),
                (f"search_{name}", lap["search"]),
            ):
                row[key] = min(row.get(key, value), value)
    editor.search_prefix_cache = True
    row["paths_rel_diff"] = update_difference(results["new"], results["old"])
    row["steps_old"] = results["old"].info.get("v_steps")
    row["steps_new"] = results["new"].info.get("v_steps")
    scoring = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for rec in records:
            evaluate_record(model, tok, rec)
        scoring.append(time.perf_counter() - t0)
    row["seconds_scores"] = min(scoring)
    row["repeats"] = repeats
    return results["new"], row


def _same_updates(a, b) -> bool:
    return len(a.updates) == len(b.updates) and all(
        torch.equal(x.delta_out_in(), y.delta_out_in()) for x, y in zip(a.updates, b.updates)
    )
