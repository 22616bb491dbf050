"""The interval over seeds and test draws, and a claim's verdict over the levels of an undecided factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from canlib.lab.analysis import DEPENDS, robust_verdict, seed_draw_interval, verdict_of, welch_interval


def test_one_draw_is_welchs_interval_and_scipys() -> None:
    a, b = np.array([[0.61], [0.64], [0.60]]), np.array([[0.58], [0.57], [0.62], [0.59]])
    got = seed_draw_interval(a, b)
    ref = stats.ttest_ind(a[:, 0], b[:, 0], equal_var=False).confidence_interval(0.95)
    mine = welch_interval(a.mean(), a[:, 0].std(ddof=1), 3, b.mean(), b[:, 0].std(ddof=1), 4)
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert (got.low, got.high) == pytest.approx(mine, abs=1e-12)


def test_a_draws_own_difficulty_cancels_its_interaction_with_the_row_does_not() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.01, (3, 5)), rng.normal(0.58, 0.01, (3, 5))
    shift = rng.normal(0, 0.2, 5)  # some test draws are far harder than others, for both rows alike
    base = seed_draw_interval(a, b)
    assert seed_draw_interval(a + shift, b + shift) == pytest.approx(base)
    interaction = rng.normal(0, 0.05, 5)  # a draw that favours one row over the other
    assert seed_draw_interval(a + interaction, b).se > base.se


def test_coverage_under_the_model_is_at_least_the_nominal() -> None:
    """Simulated from the model the estimator assumes, with no true difference: the 95 % interval
    excludes zero in at most about 5 % of the experiments (3 seeds a row, 5 draws)."""
    rng = np.random.default_rng(1)
    misses, one_draw, trials = 0, 0, 4000
    for _ in range(trials):
        draw = rng.normal(0, 3.0, 5)
        rows = [rng.normal(0, 1.0, (3, 1)) + draw + rng.normal(0, 1.0, 5) + rng.normal(0, 0.5, (3, 5)) for _ in "ab"]
        iv, welch = seed_draw_interval(*rows), seed_draw_interval(rows[0][:, :1], rows[1][:, :1])
        misses += iv.low > 0 or iv.high < 0
        one_draw += welch.low > 0 or welch.high < 0
    assert misses / trials <= 0.06
    assert one_draw / trials > 0.1  # seeds on one test draw alone: a false verdict far more often


def test_shapes_and_too_few_seeds() -> None:
    with pytest.raises(ValueError, match="same draws"):
        seed_draw_interval(np.zeros((3, 5)), np.zeros((3, 4)))
    iv = seed_draw_interval(np.ones((1, 5)), np.zeros((3, 5)))
    assert iv.diff == 1.0 and math.isnan(iv.low) and verdict_of([(iv.low, iv.high)]) == "inconclusive"


def test_a_claim_that_flips_between_neck_levels_is_never_robust() -> None:
    holds, contradicted = verdict_of([(0.2, 1.4)]), verdict_of([(-1.7, -0.1)])
    assert (holds, contradicted) == ("holds", "contradicted")
    assert robust_verdict([holds, contradicted]) == DEPENDS
    assert robust_verdict([holds, "inconclusive"]) == DEPENDS
    assert robust_verdict([holds, holds]) == "holds" and robust_verdict(["inconclusive"] * 2) == "inconclusive"
    assert robust_verdict([holds, "not run"]) == "not run"
