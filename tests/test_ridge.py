"""Ridge head: the closed form against numpy, the alpha search on validation only (a planted
test-side signal that a leak would pick up), carved validation parts, the protocol presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from dsmix_cli.data.catalog import Dataset, Item
from dsmix_cli.data.splits import Split, carve_validation
from dsmix_cli.errors import DsmixError
from dsmix_cli.evaluation.features import ImageFeatures
from dsmix_cli.evaluation.protocols import PRESETS, MLPRecipe, Protocol, resolve_protocols, run_protocol
from dsmix_cli.evaluation.ridge import ALPHAS, fit_ridge, ridge_path, srcc_rows


def _numpy_ridge(x, y, alpha):
    """min ||y - x w - b||^2 + alpha ||w||^2, solved directly (sklearn's Ridge objective)."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return w, ym - xm @ w


@pytest.mark.parametrize("n,d", [(40, 6), (8, 30)])  # primal (d <= n) and dual (d > n) forms
def test_ridge_path_matches_a_direct_solve_for_every_alpha(n, d):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(n, d)) * 3 + 1, rng.normal(size=n) + 5
    z = rng.normal(size=(7, d))
    path = ridge_path(torch.tensor(x), y)
    alphas = [1e-3, 0.1, 1.0, 37.0, 1e3]
    preds = path.predict(torch.tensor(z), alphas).numpy()
    for k, a in enumerate(alphas):
        w, b = _numpy_ridge(x, y, a)
        got_w, got_b = path.coef(a)
        np.testing.assert_allclose(got_w.numpy(), w, rtol=1e-6, atol=1e-9)
        assert got_b == pytest.approx(b, rel=1e-7, abs=1e-9)
        np.testing.assert_allclose(preds[k], z @ w + b, rtol=1e-6, atol=1e-8)


def test_alpha_grid_is_arniqas():
    assert len(ALPHAS) == 100 and ALPHAS[0] == pytest.approx(1e-3) and ALPHAS[-1] == pytest.approx(1e3)
    assert np.allclose(np.diff(np.log(ALPHAS)), np.log(1e6) / 99)


def test_srcc_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 5, size=(4, 30)).astype(float)
    target = rng.integers(0, 7, size=30).astype(float)
    want = [scipy.stats.spearmanr(p, target).statistic for p in pred]
    np.testing.assert_allclose(srcc_rows(pred, target), want, rtol=1e-12)
    assert np.isnan(srcc_rows(np.ones((1, 30)), target)[0])


def _planted(seed=0, coef=100.0):
    """Unit-length features [10, s, p, noise] / norm with 5 near-identical views per image.

    Training labels depend on s and, weakly in feature scale, on p; validation labels on s only;
    test labels on p only. Validation therefore wants a large alpha (shrink p away), the test
    side a tiny one (keep p): a search that looks at the test side picks a different alpha.
    """
    rng = np.random.default_rng(seed)

    def part(n):
        s, p = rng.normal(size=n), rng.normal(size=n) * 0.02
        f = np.column_stack([np.full(n, 10.0), s, p, rng.normal(size=(n, 6)) * 0.05])
        v = f[:, None, :] + rng.normal(size=(n, 5, f.shape[1])) * 0.002
        return v / np.linalg.norm(v, axis=-1, keepdims=True), s, p

    (ftr, s1, p1), (fva, s2, _), (fte, _, p3) = part(120), part(40), part(40)
    labels = np.concatenate([s1 + coef * p1, s2, p3])
    return torch.tensor(np.concatenate([ftr, fva, fte])), labels


def _val_curve_by_hand(feats, labels, train, val):
    x = feats[train].reshape(-1, feats.shape[-1]).numpy()
    y = np.repeat(labels[train], feats.shape[1])
    out = []
    for a in ALPHAS:
        w, b = _numpy_ridge(x, y, a)
        out.append(scipy.stats.spearmanr(feats[val].numpy().mean(1) @ w + b, labels[val]).statistic)
    return np.array(out)


def test_alpha_is_chosen_on_validation_never_on_the_test_side():
    feats, labels = _planted()
    n = len(labels)
    items = [Item(Path(f"/d/{i}.png"), float(labels[i]), None, f"{i}.png") for i in range(n)]
    dataset = Dataset("toy", Path("/d"), items, False, (0.0, 1.0), False, [], [], None)
    train, val, test = list(range(120)), list(range(120, 160)), list(range(160, 200))
    image_feats = ImageFeatures({"train": feats, "five": feats}, [""] * n, [], ["train", "five"])
    protocol = Protocol("leak-check", "ridge", "paper", 0.6, 0.2)
    result = run_protocol(protocol, image_feats, dataset, [Split(0, train, val, test)], MLPRecipe(epochs=1))
    row = result.rows[0]

    # the alpha recorded is the argmax of validation SRCC, computed independently
    val_curve = _val_curve_by_hand(feats, labels, train, val)
    assert row["alpha"] == pytest.approx(ALPHAS[int(np.nanargmax(val_curve))])
    assert row["val_srcc"] == pytest.approx(np.nanmax(val_curve), abs=1e-9)
    assert row["n_train"] == 120 and row["n_val"] == 40 and row["n_test"] == 40
    assert result.stats["alpha"]["per_split"] == [row["alpha"]]

    # a search on the test side would have picked another alpha and picked up the planted signal
    test_curve = _val_curve_by_hand(feats, labels, train, test)
    leak = int(np.nanargmax(test_curve))
    assert abs(np.log10(ALPHAS[leak]) - np.log10(row["alpha"])) > 2
    assert test_curve[leak] > 0.6 and row["srcc"] < 0.35


def _dataset(n_refs=None, n=40):
    if n_refs:
        items = [Item(Path(f"/d/{i}.png"), float(i), f"r{i % n_refs}", f"{i}.png") for i in range(n)]
        return Dataset("syn", Path("/d"), items, False, (0.0, 1.0), True, [], [], n_refs)
    items = [Item(Path(f"/d/{i}.png"), float(i), None, f"{i}.png") for i in range(n)]
    return Dataset("auth", Path("/d"), items, False, (0.0, 1.0), False, [], [], None)


@pytest.mark.parametrize("n_refs", [None, 8])
def test_carved_validation_comes_from_the_training_side(n_refs):
    ds = _dataset(n_refs)
    split = Split(3, list(range(0, 32)), [], list(range(32, 40)))
    carved = carve_validation(ds, split, seed=5)
    assert carved.test == split.test
    assert set(carved.val) | set(carved.train) == set(split.train) and not set(carved.val) & set(carved.train)
    assert len(carved.val) >= 2 and not set(carved.val) & set(split.test)
    if n_refs:  # by reference: no reference on both sides of the fit/validation cut
        assert not {ds.items[i].ref for i in carved.val} & {ds.items[i].ref for i in carved.train}
    assert carve_validation(ds, split, seed=5) == carved  # seeded
    given = Split(0, [0, 1, 2], [3, 4], [5])
    assert carve_validation(ds, given) is given


def test_presets_and_overrides():
    names = [p.name for p in resolve_protocols("all")]
    assert names == ["dsmix", "arniqa", "contrique"]
    assert PRESETS["dsmix"] == resolve_protocols("dsmix")[0]
    assert (PRESETS["dsmix"].head, PRESETS["dsmix"].views, PRESETS["dsmix"].train_ratio) == ("mlp", "paper", 0.8)
    assert (PRESETS["arniqa"].head, PRESETS["arniqa"].views, PRESETS["arniqa"].val_ratio) == ("ridge", "arniqa", 0.1)
    assert PRESETS["contrique"].ridge_rows == "image" and PRESETS["arniqa"].ridge_rows == "views"
    custom = resolve_protocols("dsmix", head="ridge")[0]
    assert custom.name == "dsmix*" and custom.head == "ridge" and custom.based_on == "dsmix"
    with pytest.raises(DsmixError, match="--head"):
        resolve_protocols("all", head="ridge")
    for bad in ({"head": "svm"}, {"views": "whole"}):
        with pytest.raises(DsmixError):
            resolve_protocols("dsmix", **bad)
    with pytest.raises(DsmixError, match="unknown protocol"):
        resolve_protocols("liqe")


def test_fit_ridge_rows_views_and_image():
    rng = np.random.default_rng(3)
    f = torch.tensor(rng.normal(size=(30, 5, 4)))
    y = rng.normal(size=30)
    per_view, _ = fit_ridge(f, y, alpha=0.5, rows="views")
    per_image, _ = fit_ridge(f, y, alpha=0.5, rows="image")
    w, b = _numpy_ridge(f.numpy().reshape(150, 4), np.repeat(y, 5), 0.5)
    np.testing.assert_allclose(per_view.weight.numpy(), w, rtol=1e-8)
    w, b = _numpy_ridge(f.numpy().mean(1), y, 0.5)
    np.testing.assert_allclose(per_image.weight.numpy(), w, rtol=1e-8)
    # predictions average the views
    np.testing.assert_allclose(per_image.predict_views(f).numpy(), (f.numpy() @ w + b).mean(1), rtol=1e-8)
