"""The MLP quality head of the DSMix probe and its training on cached features.

`QualityHead` is `feature_dim -> hidden -> ReLU -> 1` on standardised features. `train_head`
trains one with the DSMix recipe: Smooth L1 (beta 1), AdamW (lr 7e-4, weight decay 0.01), batch
64, one cosine annealing over all the run's steps. Each epoch takes its training features from
a callback, so the same loop serves cached views (one of the cached random crops per image,
drawn from `(seed, key, epoch)`) and freshly encoded crops. The ridge head lives in
`evaluation.ridge`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from dsmix_cli.engine import schedules
from dsmix_cli.engine.runtime import derive_seed, generator
from dsmix_cli.errors import DsmixError, TrainingError
from dsmix_cli.evaluation.metrics import MetricWarning, correlations, srcc, summarize


class QualityHead(nn.Module):
    """The probe's regression head: feature_dim -> hidden -> ReLU -> 1 (the DSMix probe's MLP).

    The input is first standardised with per-dimension mean and std of the training features
    (buffers, fixed before training; identity until `set_feature_stats` is called), as the
    MAE/MoCo v3 linear probes do with a BatchNorm without affine parameters: frozen features of
    a random or semantic encoder sit in a narrow range, and the head then trains in far fewer
    steps. With `standardize=False` the buffers stay at 0/1.
    """

    def __init__(self, feature_dim: int, hidden: int = 1024):
        super().__init__()
        self.feature_dim, self.hidden = int(feature_dim), int(hidden)
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.mlp = nn.Sequential(nn.Linear(self.feature_dim, self.hidden), nn.ReLU(inplace=True),
                                 nn.Linear(self.hidden, 1))

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor, eps: float = 1e-5) -> None:
        """Standardise inputs with the mean and sqrt(var + eps) of `features` (n, feature_dim)."""
        f = features.reshape(-1, self.feature_dim).to(self.feature_mean.device, torch.float32)
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(torch.sqrt(f.var(0, unbiased=False) + eps))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., feature_dim) -> (...) predicted normalised quality."""
        return self.mlp((features - self.feature_mean) / self.feature_std).squeeze(-1)

    @torch.no_grad()
    def predict_views(self, features: torch.Tensor) -> torch.Tensor:
        """Average of the predictions over views: (B, V, feature_dim) -> (B,) (the 5-crop test)."""
        return self(features.to(next(self.parameters()).device, torch.float32)).mean(dim=1)


def correlation_row(pred: np.ndarray, target: np.ndarray) -> dict:
    """SRCC, raw PLCC, KRCC, RMSE and the logistic PLCC of predictions vs (normalised) labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # a degenerate split gives NaN, shown as such
        return correlations(pred, target, logistic=True)


def summary(rows: list[dict], keys=("srcc", "plcc", "krcc", "plcc_logistic", "rmse")) -> dict:
    """{"median": {...}, "mean": {...}, "std": {...}} of the split rows (NaN ignored, std ddof=0)."""
    out: dict = {"median": {}, "mean": {}, "std": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for k in keys:
            stats = summarize([r.get(k, math.nan) for r in rows])
            for part in out:
                out[part][k] = stats[part]
    return out


def cached_view_sampler(features: torch.Tensor, seed: int, *key) -> Callable[[int], torch.Tensor]:
    """Epoch -> one cached training view per image, (n, K, D) -> (n, D), drawn from (seed, key, epoch)."""
    n, k = features.shape[:2]

    def pick(epoch: int) -> torch.Tensor:
        choice = torch.randint(0, k, (n,), generator=generator(seed, *key, "view", epoch))
        return features[torch.arange(n, device=features.device), choice.to(features.device)]

    return pick


def val_srcc(features: torch.Tensor, target: np.ndarray) -> Callable[[QualityHead], float]:
    """head -> SRCC of its view-averaged predictions on validation features (model selection only)."""

    def score(head: QualityHead) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            return srcc(head.predict_views(features).cpu().numpy(), target)

    return score


_OUTER_THREADS: list[int] = []


@contextlib.contextmanager
def head_threads(device: torch.device):
    """One CPU thread for the head's small matrices: with 2+ threads, a busy machine makes each
    AdamW step 10-30x slower (threads waiting on each other), and one thread is as fast when idle."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    _OUTER_THREADS.append(before)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _OUTER_THREADS.pop()
        torch.set_num_threads(before)


@contextlib.contextmanager
def encoder_threads():
    """Inside head training, give the encoder back the threads it had outside (fresh crops)."""
    if not _OUTER_THREADS:
        yield
        return
    torch.set_num_threads(_OUTER_THREADS[-1])
    try:
        yield
    finally:
        torch.set_num_threads(1)


def train_head(epoch_features: Callable[[int], torch.Tensor], targets: torch.Tensor, *, feature_dim: int,
               epochs: int, batch_size: int = 64, lr: float = 7e-4, weight_decay: float = 0.01,
               hidden: int = 1024, seed: int = 0, key: tuple = (), device: torch.device | str = "cpu",
               validate: Callable[[QualityHead], float] | None = None,
               on_epoch: Callable[[dict], None] | None = None,
               standardize: bool = True) -> tuple[QualityHead, dict]:
    """Train one quality head on features (the DSMix probe, Eq. 9: Smooth L1, AdamW, cosine annealing).

    Args:
        epoch_features: `epoch -> (n, feature_dim)` training features of that epoch (a cached view
            per image, or freshly encoded crops), row i for `targets[i]`.
        targets: (n,) normalised labels, higher = better.
        epochs: passes over the training images; the cosine anneals once over all their steps.
        batch_size: images per step (the last, smaller batch of an epoch is kept).
        validate: optional `head -> validation SRCC`; the head of the best epoch is returned.
        on_epoch: called with `{"epoch", "loss", "lr", "step"[, "val_srcc"]}` after each epoch.
        standardize: standardise the head's input with the mean/std of the first epoch's
            training features (see `QualityHead`).

    Returns:
        (head in eval mode, {"epoch": the epoch returned (1-based), "loss": its mean loss[, "val_srcc"]}).
    """
    device = torch.device(device)
    n = int(targets.shape[0])
    if n < 2:
        raise DsmixError(f"a head needs at least 2 training images, got {n}")
    with head_threads(device):
        return _train_head(epoch_features, targets, feature_dim=feature_dim, epochs=epochs, batch_size=batch_size,
                           lr=lr, weight_decay=weight_decay, hidden=hidden, seed=seed, key=key, device=device,
                           validate=validate, on_epoch=on_epoch, standardize=standardize)


def _train_head(epoch_features, targets, *, feature_dim, epochs, batch_size, lr, weight_decay, hidden, seed, key,
                device, validate, on_epoch, standardize):
    n = int(targets.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head-init", *key))
        head = QualityHead(feature_dim, hidden).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay,
                                  fused=True if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules.cosine(epochs * steps_per_epoch))
    targets = targets.to(device, torch.float32)
    loss_fn = nn.SmoothL1Loss(beta=1.0)
    best: dict = {}
    best_state = None
    step = 0
    first = epoch_features(0).to(device, torch.float32)
    if standardize:
        head.set_feature_stats(first)
    for epoch in range(epochs):
        head.train()
        feats = first if epoch == 0 else epoch_features(epoch).to(device, torch.float32)
        order = torch.randperm(n, generator=generator(seed, *key, "order", epoch)).to(device)
        total, lr_now = 0.0, optimizer.param_groups[0]["lr"]
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(head(feats[idx]), targets[idx])
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite head loss at epoch {epoch + 1}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        record = {"epoch": epoch + 1, "loss": total / n, "lr": lr_now, "step": step}
        if validate is not None:
            head.eval()
            record["val_srcc"] = float(validate(head))
            if not best or (math.isfinite(record["val_srcc"]) and record["val_srcc"] > best.get("val_srcc", -2)):
                best = {"epoch": epoch + 1, "loss": record["loss"], "val_srcc": record["val_srcc"]}
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if on_epoch is not None:
            on_epoch(record)
        if validate is None:
            best = {"epoch": epoch + 1, "loss": record["loss"]}
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, best
