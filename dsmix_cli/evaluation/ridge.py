"""Ridge regression on frozen features, in closed form, with its regulariser searched on validation.

The peers' probe (ARNIQA, CONTRIQUE, Re-IQA) is a ridge regressor with an intercept:
`min_w,b ||y - X w - b||^2 + alpha ||w||^2`, the objective of scikit-learn's `Ridge`. With the
training rows centred (`Xc = X - mean(X)`, `yc = y - mean(y)`, `b = mean(y) - mean(X) w`) the
solution is `w(alpha) = (Xc^T Xc + alpha I)^-1 Xc^T yc`. One eigendecomposition gives it for
every alpha at once:

* primal (d <= n): `Xc^T Xc = V diag(l) V^T`, so `w(alpha) = V diag(1 / (l + alpha)) V^T Xc^T yc`;
* dual (d > n): `Xc Xc^T = U diag(l) U^T`, so `w(alpha) = Xc^T U diag(1 / (l + alpha)) U^T yc`.

Both are `w(alpha) = B (r / (l + alpha))` for a basis `B` and a vector `r` computed once, so the
search over ARNIQA's 100 log-spaced alphas in [1e-3, 1e3] costs about one solve. The alpha kept
is the one with the highest validation SRCC (ties: the smallest alpha); validation rows never
enter the fit, and the test rows are never seen here at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

ALPHAS = np.geomspace(1e-3, 1e3, 100)  # ARNIQA's grid: 100 log-spaced values in [1e-3, 1e3]


@dataclass
class RidgePath:
    """The ridge solutions for every alpha: `w(alpha) = basis @ (proj / (eig + alpha))`."""

    x_mean: torch.Tensor  # (d,)
    y_mean: float
    basis: torch.Tensor   # (d, k)
    eig: torch.Tensor     # (k,), >= 0
    proj: torch.Tensor    # (k,)

    def coef(self, alpha: float) -> tuple[torch.Tensor, float]:
        """(w (d,), intercept b) for one alpha."""
        w = self.basis @ (self.proj / (self.eig + float(alpha)))
        return w, float(self.y_mean - self.x_mean @ w)

    def predict(self, x: torch.Tensor, alphas) -> torch.Tensor:
        """Predictions of rows `x` (m, d) for each alpha: (len(alphas), m)."""
        a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), device=self.eig.device)
        z = (x.to(self.basis.device, torch.float64) - self.x_mean) @ self.basis  # (m, k)
        scale = self.proj[:, None] / (self.eig[:, None] + a[None, :])             # (k, A)
        return (z @ scale).T + self.y_mean


def ridge_path(x: torch.Tensor, y) -> RidgePath:
    """Prepare the closed-form ridge solutions of rows `x` (n, d) and targets `y` (n,).

    Float64 throughout; the eigendecomposition runs on `x`'s device.
    """
    x = x.to(torch.float64)
    y = torch.as_tensor(np.asarray(y, dtype=np.float64), device=x.device)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"ridge_path: rows {tuple(x.shape)} and targets {tuple(y.shape)} do not match")
    x_mean, y_mean = x.mean(0), float(y.mean())
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if d <= n:
        eig, vecs = torch.linalg.eigh(xc.T @ xc)
        basis, proj = vecs, vecs.T @ (xc.T @ yc)
    else:
        eig, vecs = torch.linalg.eigh(xc @ xc.T)
        basis, proj = xc.T @ vecs, vecs.T @ yc
    return RidgePath(x_mean, y_mean, basis, eig.clamp_min(0.0), proj)


def srcc_rows(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of `pred` (A, m) with `target` (m,): (A,), NaN where undefined."""
    pred = np.asarray(pred, dtype=np.float64)
    t = scipy.stats.rankdata(np.asarray(target, dtype=np.float64))
    r = scipy.stats.rankdata(pred, axis=1)
    t = t - t.mean()
    r = r - r.mean(axis=1, keepdims=True)
    den = np.sqrt((r * r).sum(1) * (t * t).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (r @ t) / den
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass
class RidgeHead:
    """A fitted ridge regressor on per-view features; predictions are averaged over views."""

    weight: torch.Tensor  # (d,) float64
    bias: float
    alpha: float

    def predict_views(self, features: torch.Tensor) -> torch.Tensor:
        """(B, V, d) -> (B,): the average over views of the linear prediction (float64)."""
        f = features.to(self.weight.device, torch.float64)
        return (f @ self.weight + self.bias).mean(dim=1)


def training_rows(features: torch.Tensor, targets, rows: str) -> tuple[torch.Tensor, np.ndarray]:
    """The regression rows of training images `features` (n, V, d).

    `rows="views"`: one row per view with its image's target (ARNIQA: every crop is a sample);
    `rows="image"`: one row per image, the mean of its views (one feature vector per image, as
    CONTRIQUE and Re-IQA regress).
    """
    targets = np.asarray(targets, dtype=np.float64)
    n, v, d = features.shape
    if rows == "views":
        return features.reshape(n * v, d), np.repeat(targets, v)
    if rows == "image":
        return features.mean(dim=1), targets
    raise ValueError(f"unknown ridge rows {rows!r} (views or image)")


def fit_ridge(train: torch.Tensor, train_targets, val: torch.Tensor | None = None, val_targets=None, *,
              rows: str = "views", alphas=ALPHAS, alpha: float | None = None) -> tuple[RidgeHead, dict]:
    """Fit a ridge head on training features (n, V, d), choosing alpha on validation features.

    Args:
        train, train_targets: training images' view features and targets.
        val, val_targets: validation images (m, V, d) and targets; the alpha of the highest
            validation SRCC of the view-averaged predictions is kept (ties: the smallest).
        rows: "views" or "image" (see `training_rows`).
        alphas: the grid searched.
        alpha: a fixed alpha instead of the search (no validation needed).

    Returns:
        (head, {"alpha", "val_srcc", "alpha_searched": bool, "alpha_at_edge": bool}).
    """
    x, y = training_rows(train, train_targets, rows)
    path = ridge_path(x, y)
    info: dict = {"alpha_searched": alpha is None}
    if alpha is None:
        if val is None or len(val) < 2:
            raise ValueError("fit_ridge: the alpha search needs at least 2 validation images")
        grid = np.asarray(alphas, dtype=np.float64)
        pred = path.predict(val.mean(dim=1), grid).cpu().numpy()  # linear: mean over views first
        curve = srcc_rows(pred, val_targets)
        finite = np.isfinite(curve)
        best = int(np.argmax(np.where(finite, curve, -np.inf))) if finite.any() else int(np.argmin(np.abs(np.log(grid))))
        alpha = float(grid[best])
        info.update(val_srcc=float(curve[best]) if finite.any() else float("nan"),
                    alpha_at_edge=best in (0, len(grid) - 1))
    w, b = path.coef(alpha)
    info["alpha"] = float(alpha)
    return RidgeHead(w, b, float(alpha)), info
