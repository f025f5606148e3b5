"""Correlation metrics between predicted and subjective scores, and summaries over splits.

Plain functions over 1-D arrays, returning a Python float. SRCC, PLCC and KRCC come from scipy
(so ties are handled as scipy does: average ranks for SRCC, tau-b for KRCC). PLCC is raw
Pearson correlation, as the DSMix evaluation computes it (docs/probing.md);
`plcc_logistic` is the VQEG 4-parameter logistic fit followed by PLCC, and is always reported
under that name. Undefined cases (constant input, fewer than 2 points, non-finite values)
give NaN with a `MetricWarning`, never an exception, so one degenerate split does not end a
ten-split run.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.optimize
import scipy.stats


class MetricWarning(UserWarning):
    """A metric was undefined for its input and returned NaN."""


def _pair(pred, target, what: str, min_points: int = 2, need_spread: bool = True):
    """Both inputs as float64 1-D arrays, or None (after a warning) when `what` is undefined."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"{what}: pred has {p.size} values, target {t.size}")
    if p.size < min_points:
        warnings.warn(f"{what} needs at least {min_points} points, got {p.size}: NaN", MetricWarning, stacklevel=3)
        return None
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        warnings.warn(f"{what}: non-finite values in the input: NaN", MetricWarning, stacklevel=3)
        return None
    if need_spread and (np.ptp(p) == 0 or np.ptp(t) == 0):
        side = "pred" if np.ptp(p) == 0 else "target"
        warnings.warn(f"{what}: {side} is constant, the correlation is undefined: NaN", MetricWarning, stacklevel=3)
        return None
    return p, t


def srcc(pred, target) -> float:
    """Spearman rank-order correlation (average ranks for ties)."""
    pair = _pair(pred, target, "SRCC")
    if pair is None:
        return float("nan")
    return float(scipy.stats.spearmanr(*pair).statistic)


def plcc(pred, target) -> float:
    """Pearson linear correlation on the raw predictions (no logistic mapping)."""
    pair = _pair(pred, target, "PLCC")
    if pair is None:
        return float("nan")
    return float(scipy.stats.pearsonr(*pair).statistic)


def krcc(pred, target) -> float:
    """Kendall rank correlation, tau-b (accounts for ties)."""
    pair = _pair(pred, target, "KRCC")
    if pair is None:
        return float("nan")
    return float(scipy.stats.kendalltau(*pair).statistic)


def rmse(pred, target) -> float:
    """Root mean squared error between predictions and targets (same scale assumed)."""
    pair = _pair(pred, target, "RMSE", min_points=1, need_spread=False)
    if pair is None:
        return float("nan")
    p, t = pair
    return float(np.sqrt(np.mean((p - t) ** 2)))


def logistic4(x, b1: float, b2: float, b3: float, b4: float):
    """VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(x - b3) / (np.abs(b4) + 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def plcc_logistic(pred, target) -> float:
    """PLCC after fitting the 4-parameter logistic (VQEG) from predictions to targets.

    The fit runs on standardised predictions (same curve family, better conditioned). The
    result is the Pearson correlation between the fitted curve's output and the targets; it
    is NaN with a `MetricWarning` when the fit does not converge.
    """
    pair = _pair(pred, target, "PLCC (logistic)", min_points=4)
    if pair is None:
        return float("nan")
    p, t = pair
    x = (p - p.mean()) / p.std()
    hi, lo = float(t.max()), float(t.min())
    if scipy.stats.pearsonr(x, t).statistic < 0:
        hi, lo = lo, hi
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            params, _ = scipy.optimize.curve_fit(logistic4, x, t, p0=[hi, lo, 0.0, 1.0], maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        warnings.warn(f"PLCC (logistic): the 4-parameter fit failed ({exc}): NaN", MetricWarning, stacklevel=2)
        return float("nan")
    fitted = logistic4(x, *params)
    pair = _pair(fitted, t, "PLCC (logistic)")
    if pair is None:
        return float("nan")
    return float(scipy.stats.pearsonr(*pair).statistic)


def correlations(pred, target, logistic: bool = False) -> dict:
    """{"srcc", "plcc", "krcc", "rmse"} (and "plcc_logistic" when asked) as floats."""
    out = {"srcc": srcc(pred, target), "plcc": plcc(pred, target),
           "krcc": krcc(pred, target), "rmse": rmse(pred, target)}
    if logistic:
        out["plcc_logistic"] = plcc_logistic(pred, target)
    return out


def summarize(values) -> dict:
    """{"median", "mean", "std", "n"} of per-split values, ignoring NaN (std with ddof=0).

    All-NaN (or empty) input gives NaN statistics, n = 0, and a `MetricWarning`.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        warnings.warn("summary of no finite values: NaN", MetricWarning, stacklevel=2)
        nan = float("nan")
        return {"median": nan, "mean": nan, "std": nan, "n": 0}
    return {"median": float(np.median(v)), "mean": float(np.mean(v)), "std": float(np.std(v)), "n": int(v.size)}
