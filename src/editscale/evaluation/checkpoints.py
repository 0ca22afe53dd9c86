"""Which edit counts are evaluated, and how they split into jobs (light: the Snakefile imports it).

Checkpoint t means "the model after edit t" (t = 0: unedited). Forgetting is evaluated every
``forgetting_every`` edits, downstream tasks at t = 0 and every ``downstream_every`` edits; the
union of those steps, in order, is cut into chunks of ``chunk_size`` checkpoints, one job each.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=32)
def _plan_steps(
    n_edits: int, forgetting_every: int, downstream_every: int
) -> tuple[tuple[int, bool, bool], ...]:
    """The plan as an immutable tuple, cached: the Snakefile asks for it once per evaluation job
    (780 jobs in the paper's DAG), each time with the same arguments."""
    steps = []
    for t in range(0, n_edits + 1):
        forget = t > 0 and forgetting_every > 0 and t % forgetting_every == 0
        down = downstream_every > 0 and t % downstream_every == 0
        if forget or down:
            steps.append((t, forget, down))
    return tuple(steps)


def checkpoint_plan(n_edits: int, forgetting_every: int, downstream_every: int) -> list[dict]:
    """One entry per evaluated step: {"t": int, "forgetting": bool, "downstream": bool} (new dicts
    each call)."""
    return [
        {"t": t, "forgetting": f, "downstream": d}
        for t, f, d in _plan_steps(int(n_edits), int(forgetting_every), int(downstream_every))
    ]


def chunks(plan: list[dict], chunk_size: int) -> list[list[dict]]:
    if chunk_size < 1:
        raise ValueError("evaluation.chunk_size must be >= 1")
    return [plan[i : i + chunk_size] for i in range(0, len(plan), chunk_size)]


def n_chunks(n_edits: int, forgetting_every: int, downstream_every: int, chunk_size: int) -> int:
    return len(chunks(checkpoint_plan(n_edits, forgetting_every, downstream_every), chunk_size))
