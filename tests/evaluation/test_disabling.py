"""The disabling-edit rule: onsets of update-norm run-aways
(editscale.evaluation.disabling.find_onsets).

Synthetic update-norm series with known onsets; the rule must find exactly those. Where it helps
to show that a case can fail, the former rule (a multiple of the median of *all* earlier edits)
is applied to the same series and flags something else.
"""

from __future__ import annotations

import numpy as np
import pytest

from editscale.evaluation.disabling import find_onsets, flag_disabling, trailing_medians

RULE = {"norm_multiple": 10.0, "window": 20, "min_history": 10, "refractory": 10}


def edits(update_norm: np.ndarray, **overrides) -> list[int]:
    return [t for t, _ in flag_disabling(update_norm, **{**RULE, **overrides})]


def all_history_rule(
    update_norm: np.ndarray, multiple: float = 10.0, min_history: int = 10
) -> list[int]:
    """The former rule: x_t > multiple x median(x_1 .. x_{t-1}) in any matrix."""
    x = np.asarray(update_norm, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    return [
        i + 1
        for i in range(min_history, len(x))
        if np.any(x[i] > multiple * np.median(x[:i], axis=0))
    ]


def noise(n: int, seed: int, sigma: float = 0.3, matrices: int | None = None) -> np.ndarray:
    shape = (n,) if matrices is None else (n, matrices)
    return np.random.default_rng(seed).lognormal(0.0, sigma, size=shape)


def test_trailing_medians_hand_computed():
    b = trailing_medians(np.array([1.0, 3.0, 2.0, 10.0, 4.0]), 3)
    assert np.isnan(b[0])
    assert b[1:].tolist() == [1.0, 2.0, 2.0, 3.0]  # [1], [1, 3], [1, 3, 2], [3, 2, 10]
    b = trailing_medians(np.array([1.0, np.nan, np.inf, 5.0]), 3)  # non-finite values left out
    assert b[1:].tolist() == [1.0, 1.0, 1.0]


def test_isolated_spike_flags_exactly_that_edit():
    x = noise(500, seed=1)
    x[249] = 30.0 * np.median(x)  # edit 250
    flagged = flag_disabling(x, **RULE)
    assert [t for t, _ in flagged] == [250]
    assert "onset in matrix 0" in flagged[0][1] and "of edits 230..249" in flagged[0][1]
    # the spike is inside the baseline of the next edits: no echo, even without a refractory window
    assert edits(x, refractory=0) == [250]


@pytest.mark.parametrize("growth", [1.0, 1.003, 1.02])
def test_run_away_flags_only_its_first_edit(growth):
    x = noise(800, seed=2)
    k = np.arange(800 - 199)
    x[199:] *= (
        40.0 * growth**k
    )  # edit 200 jumps 40x; every later edit stays at (or rises from) that level
    x[199] *= 5.0  # the onset itself overshoots
    assert edits(x) == [200]
    assert len(all_history_rule(x)) > 150  # the former rule flags the edits after the blow-up too


def test_ramp_within_the_refractory_window_is_one_onset():
    x = noise(300, seed=3)
    x[99:] *= 20.0
    x[102:] *= 20.0  # a second jump 3 edits later: same run-away
    assert edits(x) == [100]
    assert edits(x, refractory=0) == [100, 103]  # without the refractory window it counts twice


def test_smooth_gradual_rise_flags_nothing():
    x = 1.03 ** np.arange(1000) * noise(
        1000, seed=4, sigma=0.1
    )  # 3% per edit: x 7e12 over 1,000 edits
    assert edits(x) == []
    assert all_history_rule(x)  # the former rule mistakes the rise for disabling edits


def test_noise_without_event_flags_nothing():
    x = noise(
        2000, seed=5, sigma=0.5, matrices=4
    )  # edit-to-edit spread of a factor 2 (1 sd of the log ratio)
    assert edits(x) == []
    assert np.any(
        x[1:] > 10 * x[:-1]
    )  # a single-edit jump of 10x happens by chance: the median matters


def test_nothing_is_flagged_before_min_history():
    x = noise(100, seed=6)
    x[4] = 100.0  # edit 5: only 4 earlier edits
    assert edits(x) == []
    assert edits(x, min_history=4) == [5]


@pytest.mark.parametrize("returns_to_normal", [True, False])
def test_two_run_aways_in_matrix_3_of_4(returns_to_normal):
    n = 2000
    x = noise(n, seed=7, matrices=4) * np.array([1.0, 0.5, 2.0, 0.3])
    first = np.arange(599, 1200 if returns_to_normal else n)
    x[first, 3] *= 60.0 * 1.001 ** np.arange(first.size)  # run-away 1 from edit 600
    x[1499:, 3] *= 50.0  # run-away 2 from edit 1500 (from the normal level, or on top of the first)
    flagged = flag_disabling(x, **RULE)
    assert [t for t, _ in flagged] == [600, 1500]
    for _, reason in flagged:
        assert (
            reason.startswith("onset in matrix 3:")
            and "matrix 0" not in reason
            and "matrix 2" not in reason
        )
    onsets = find_onsets(x, **RULE)
    assert [(o.edit, o.matrix) for o in onsets] == [(600, 3), (1500, 3)]
    assert all(o.norm > RULE["norm_multiple"] * o.baseline for o in onsets)
    assert len(all_history_rule(x)) > 500


def test_same_edit_in_two_matrices_is_one_flag_naming_both():
    x = noise(200, seed=8, matrices=2)
    x[119, :] *= 30.0
    flagged = flag_disabling(x, **RULE)
    assert [t for t, _ in flagged] == [120]
    assert "onset in matrix 0" in flagged[0][1] and "onset in matrix 1" in flagged[0][1]


def test_deterministic_and_nan_safe():
    x = noise(300, seed=9, matrices=2)
    x[50, 0] = np.nan  # an unwritten/failed norm: never an onset, left out of the medians
    x[150, 1] = np.inf  # an overflowing update is an onset
    assert flag_disabling(x, **RULE) == flag_disabling(x.copy(), **RULE)
    assert edits(x) == [151]


def test_short_series():
    """The former unit test's series (moved here from test_evaluations.py), under the onset rule."""
    short = {**RULE, "min_history": 3}
    assert edits(np.array([1.0, 1.1, 0.9, 1.0, 1.05, 30.0, 1.0, 1.0]), **short) == [6]
    # several edited matrices (MEND): a spike in any one of them flags the edit, and is named
    per_matrix = np.stack([np.ones(8), np.array([1.0, 1.2, 0.8, 1.0, 1.1, 1.0, 50.0, 1.0])], axis=1)
    flagged = flag_disabling(per_matrix, **short)
    assert [t for t, _ in flagged] == [7] and flagged[0][1].startswith("onset in matrix 1:")
