"""The statistics helpers against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd_helpers import stats


def test_mean_sd_and_standard_error_by_hand():
    assert stats.mean_sd([0.80, 0.82, 0.84]) == pytest.approx((0.82, 0.02))
    assert stats.mean_sd([0.7]) == (0.7, 0.0)
    assert stats.accuracy_se(0.8, 400) == pytest.approx(0.02)  # sqrt(0.8 * 0.2 / 400)
    assert stats.fmt_mean_sd([0.80, 0.82, 0.84]) == "82.0 ± 2.0 %"


def test_mcnemar_exact_on_a_two_by_two_table():
    # 2 x 2 table of (A right?, B right?): both 30, only A 10, only B 2, neither 8
    a = [1] * 30 + [1] * 10 + [0] * 2 + [0] * 8
    b = [1] * 30 + [0] * 10 + [1] * 2 + [0] * 8
    result = stats.mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2)
    # two-sided exact: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar(a, a)["p_value"] == 1.0  # no discordant rows: no evidence of a difference
    pooled = stats.pooled_mcnemar([(a, b), (a, b)])
    assert (pooled["only_a"], pooled["only_b"]) == (20, 4)
    with pytest.raises(ValueError):
        stats.mcnemar([1, 0], [1])


def test_paired_bootstrap_interval_covers_the_true_difference_about_95_percent():
    """Coverage on a toy: rows where A is right with p 0.80 and B with p 0.75, independently."""
    rng = np.random.default_rng(0)
    covered, trials = 0, 200
    for trial in range(trials):
        a = rng.random(400) < 0.80
        b = rng.random(400) < 0.75
        ci = stats.paired_bootstrap(a, b, n_boot=1000, seed=trial)
        covered += ci["low"] <= 0.05 <= ci["high"]
        assert ci["low"] <= ci["difference"] <= ci["high"]
    assert 0.90 <= covered / trials <= 0.99


def test_paired_difference_se_by_hand():
    a = [1, 1, 0, 1]
    b = [1, 0, 0, 0]
    d = np.array([0, 1, 0, 1])
    assert stats.paired_difference_se(a, b) == pytest.approx(d.std(ddof=1) / math.sqrt(4))
