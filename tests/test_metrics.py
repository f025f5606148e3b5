"""Correlation metrics against scipy, hand-worked cases, ties and degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from dsmix_cli.evaluation import (
    MetricWarning,
    correlations,
    krcc,
    plcc,
    plcc_logistic,
    rmse,
    srcc,
    summarize,
)


def test_hand_worked_small_case():
    pred, target = [1, 2, 3, 4], [1, 3, 2, 4]
    # d = (0, -1, 1, 0): 1 - 6 * 2 / (4 * 15) = 0.8
    assert srcc(pred, target) == pytest.approx(0.8)
    # centred products sum to 4, squared deviations to 5 each: r = 4 / 5
    assert plcc(pred, target) == pytest.approx(0.8)
    # 5 concordant pairs, 1 discordant: (5 - 1) / 6
    assert krcc(pred, target) == pytest.approx(4 / 6)
    assert rmse(pred, target) == pytest.approx(math.sqrt(0.5))


def test_hand_worked_ties():
    pred, target = [1, 1, 2], [1, 2, 3]
    # average ranks (1.5, 1.5, 3) vs (1, 2, 3): r = 1.5 / sqrt(1.5 * 2)
    assert srcc(pred, target) == pytest.approx(1.5 / math.sqrt(3.0))
    # tau-b: 2 concordant, 0 discordant, one pair tied in pred: 2 / sqrt((3 - 1) * 3)
    assert krcc(pred, target) == pytest.approx(2 / math.sqrt(6.0))


def test_against_scipy_with_ties_and_negative_correlation():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 8, 200).astype(float)  # many ties
    for pred in (target + rng.normal(0, 2, 200), -np.round(target + rng.normal(0, 1, 200))):
        assert srcc(pred, target) == pytest.approx(scipy.stats.spearmanr(pred, target)[0], abs=1e-12)
        assert plcc(pred, target) == pytest.approx(scipy.stats.pearsonr(pred, target)[0], abs=1e-12)
        assert krcc(pred, target) == pytest.approx(scipy.stats.kendalltau(pred, target)[0], abs=1e-12)
        assert rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))
    assert srcc(-target, target) == pytest.approx(-1.0)
    assert isinstance(srcc([1, 2], [2, 1]), float)


@pytest.mark.parametrize("fn", [srcc, plcc, krcc, plcc_logistic])
def test_constant_input_is_nan_with_a_warning(fn):
    with pytest.warns(MetricWarning, match="constant"):
        assert math.isnan(fn([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]))
    with pytest.warns(MetricWarning, match="constant"):
        assert math.isnan(fn([1.0, 2.0, 3.0, 4.0, 5.0], [2.0] * 5))


@pytest.mark.parametrize("fn", [srcc, plcc, krcc])
def test_too_few_points_and_non_finite(fn):
    with pytest.warns(MetricWarning, match="at least 2"):
        assert math.isnan(fn([1.0], [2.0]))
    with pytest.warns(MetricWarning, match="at least 2"):
        assert math.isnan(fn([], []))
    with pytest.warns(MetricWarning, match="non-finite"):
        assert math.isnan(fn([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]))


def test_rmse_edge_cases():
    assert rmse([3.0], [1.0]) == 2.0
    assert rmse([2.0, 2.0], [2.0, 2.0]) == 0.0  # constant is fine for an error
    with pytest.warns(MetricWarning):
        assert math.isnan(rmse([], []))
    with pytest.raises(ValueError):
        rmse([1.0, 2.0], [1.0])


def test_plcc_logistic_linearises_a_monotonic_curve():
    x = np.linspace(-3, 3, 60)
    y = 1.0 + 4.0 / (1.0 + np.exp(-2.0 * (x - 0.3)))  # a 4-parameter logistic of x
    raw = scipy.stats.pearsonr(x, y)[0]
    assert raw < 0.97
    assert plcc_logistic(x, y) == pytest.approx(1.0, abs=1e-6)
    # A decreasing relation is fitted too (the fitted curve is compared with the targets).
    assert plcc_logistic(-x, y) == pytest.approx(1.0, abs=1e-6)
    noisy = y + np.random.default_rng(1).normal(0, 0.2, y.size)
    assert plcc_logistic(x, noisy) > scipy.stats.pearsonr(x, noisy)[0]


def test_correlations_keys():
    rng = np.random.default_rng(2)
    t = rng.normal(size=50)
    p = t + rng.normal(scale=0.5, size=50)
    out = correlations(p, t)
    assert set(out) == {"srcc", "plcc", "krcc", "rmse"}
    assert out["plcc"] == pytest.approx(scipy.stats.pearsonr(p, t)[0])
    assert set(correlations(p, t, logistic=True)) == {"srcc", "plcc", "krcc", "rmse", "plcc_logistic"}


def test_summarize_ignores_nan():
    s = summarize([0.9, float("nan"), 0.7, 0.8])
    assert s["median"] == pytest.approx(0.8) and s["mean"] == pytest.approx(0.8)
    assert s["std"] == pytest.approx(math.sqrt(0.02 / 3)) and s["n"] == 3
    assert summarize([0.5, 0.1, 0.9, 0.3])["median"] == pytest.approx(0.4)
    with pytest.warns(MetricWarning):
        empty = summarize([float("nan")])
    assert math.isnan(empty["median"]) and empty["n"] == 0
