"""Telling signal from noise: mean ± sd over seeds, standard errors, and paired tests on the same rows.

A difference between two students is a finding only when it is larger than the noise: report the spread over
seeds, and test the two students on the *same* test rows (McNemar's exact test counts the rows on which exactly
one of them is right; a paired bootstrap resamples rows and gives an interval for the accuracy difference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def accuracy_se(accuracy: float, n: int) -> float:
    """Standard error of one accuracy measured on ``n`` rows: sqrt(p (1 - p) / n)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def fmt_mean_sd(values: Sequence[float], percent: bool = True) -> str:
    """``"81.2 ± 0.9 %"`` (or without the percent scaling)."""
    mean, sd = mean_sd(values)
    return f"{100 * mean:.1f} ± {100 * sd:.1f} %" if percent else f"{mean:.4f} ± {sd:.4f}"


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """McNemar's exact test on paired predictions of the same rows.

    ``b``: rows only A gets right; ``c``: rows only B gets right. Under "equally accurate" each discordant
    row is a fair coin, so the two-sided p-value is a binomial test of ``b`` out of ``b + c`` at 0.5.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired predictions must have the same length ({a.shape} vs {b_.shape})")
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    return {"only_a": only_a, "only_b": only_b, "p_value": mcnemar_p(only_a, only_b)}


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)


def pooled_mcnemar(pairs: Sequence[tuple[Sequence[bool], Sequence[bool]]]) -> dict:
    """McNemar over several seeds' pairs at once: discordant counts are added up (rows x seeds)."""
    only_a = only_b = 0
    for correct_a, correct_b in pairs:
        result = mcnemar(correct_a, correct_b)
        only_a, only_b = only_a + result["only_a"], only_b + result["only_b"]
    return {"only_a": only_a, "only_b": only_b, "p_value": mcnemar_p(only_a, only_b)}


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool], n_boot: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy difference A - B with a percentile bootstrap interval over rows (the same rows for both)."""
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = a[picks].mean(axis=1) - b[picks].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {"difference": float(a.mean() - b.mean()), "low": float(low), "high": float(high), "level": level}


def paired_difference_se(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Standard error of the accuracy difference of two models on the same rows (from per-row differences)."""
    d = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
