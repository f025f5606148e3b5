"""Linear probing: head training recipe, cached views, the run's results, bundle and sanity checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from dsmix_cli.defaults import resolve_default
from dsmix_cli.errors import DatasetError, TrainingError
from dsmix_cli.stages import probe as probe_stage
from dsmix_cli.evaluation.heads import cached_view_sampler, train_head
from dsmix_cli.stages.probe import ProbeConfig, run_probe


def make_toy_set(folder: Path, refs: int = 6, levels: int = 5, size=(40, 52), lower_better: bool = False,
                 unreadable: int = 0) -> Path:
    """A tiny synthetic IQA set: smooth references with Gaussian noise of `levels` strengths.

    The label is 5 - level (higher = better), or the level itself when `lower_better` (a DMOS).
    Returns the `name,score,ref` CSV (names relative to `folder`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["name,score,ref"]
    h, w = size
    for r in range(refs):
        coarse = rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255
        base = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float64)
        for lvl in range(levels):
            img = np.clip(base + rng.normal(0, 14.0 * lvl, base.shape), 0, 255).astype(np.uint8)
            name = f"ref{r}/img_{lvl}.png"
            (folder / f"ref{r}").mkdir(exist_ok=True)
            Image.fromarray(img).save(folder / name)
            rows.append(f"{name},{lvl if lower_better else levels - lvl},ref{r}")
    for k in range(unreadable):
        (folder / f"broken{k}.png").write_bytes(b"\x89PNG broken")
        rows.append(f"broken{k}.png,3,refx{k}")
    csv = folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def toy_config(tmp_path: Path, csv: Path, **over) -> ProbeConfig:
    cfg = dict(encoder="random:resnet18", dataset="csv", csv=str(csv), out=str(tmp_path / "run"), splits=3,
               epochs=100, image_size=32, train_views=2, device="cpu", batch_size=8)
    cfg.update(over)
    return ProbeConfig(**cfg)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_head_learns_a_monotone_target_from_features():
    gen = torch.Generator().manual_seed(0)
    n, k, d = 240, 3, 16
    w = torch.randn(d, generator=gen)
    clean = torch.randn(n, d, generator=gen)
    views = clean[:, None, :] + 0.05 * torch.randn(n, k, d, generator=gen)
    target = torch.sigmoid(clean @ w / 2)
    train, test = slice(0, 180), slice(180, n)
    head, info = train_head(cached_view_sampler(views[train], 0, "t"), target[train], feature_dim=d, epochs=60,
                            batch_size=32, hidden=64, lr=3e-3)
    pred = head.predict_views(views[test]).numpy()
    assert scipy.stats.spearmanr(pred, target[test].numpy()).statistic > 0.9
    assert info["epoch"] == 60


def test_head_schedule_is_one_cosine_over_the_run():
    feats = torch.randn(50, 1, 4)
    records = []
    train_head(cached_view_sampler(feats, 0), torch.rand(50), feature_dim=4, epochs=6, batch_size=16,
               hidden=8, lr=1e-3, on_epoch=records.append)
    steps = math.ceil(50 / 16)  # the last smaller batch of an epoch is kept
    total = 6 * steps
    for e, rec in enumerate(records):
        expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * e * steps / total))
        assert rec["lr"] == pytest.approx(expected)  # LR at the first step of each epoch
        assert rec["step"] == (e + 1) * steps


def test_cached_sampler_draws_only_cached_views_and_varies_by_epoch():
    n, k = 64, 4
    feats = torch.arange(n * k, dtype=torch.float32).view(n, k, 1)
    pick = cached_view_sampler(feats, 0, "s")
    a, b = pick(0).squeeze(1), pick(1).squeeze(1)
    for chosen in (a, b):
        row = torch.div(chosen, k, rounding_mode="floor")
        assert torch.equal(row, torch.arange(n, dtype=torch.float32))  # row i is image i
    assert not torch.equal(a, b)
    assert torch.equal(pick(0), a.unsqueeze(1))  # a function of the epoch only
    assert len(set(torch.remainder(a, k).tolist())) == k  # every view gets used


def test_probe_run_results_bundle_and_default(tmp_path, home):
    csv = make_toy_set(tmp_path / "data")
    res = run_probe(toy_config(tmp_path, csv))
    run = tmp_path / "run"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["dataset"] == "csv" and on_disk["encoder"] == "random:resnet18"
    assert [s["split"] for s in on_disk["splits"]] == [0, 1, 2]
    for s in on_disk["splits"]:
        assert set(s) >= {"split", "srcc", "plcc", "krcc", "n_train", "n_test"}
        # synthetic (refs given): split by reference, 6 refs -> 5/1, 5 images each
        assert (s["n_train"], s["n_test"]) == (25, 5)
    assert set(on_disk["median"]) >= {"srcc", "plcc"}
    assert on_disk["median"]["srcc"] == pytest.approx(np.median([s["srcc"] for s in on_disk["splits"]]))
    assert on_disk["median"]["srcc"] > 0.6  # noise level is easy even for random features
    assert on_disk["train_views"] == 2 and on_disk["encoder_unchanged"] is True
    assert res["median"] == on_disk["median"]
    for name in ("config.json", "metrics.jsonl", "model.safetensors"):
        assert (run / name).is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r and "loss" in r for r in lines)
    assert resolve_default("model", None).value == str(run.resolve())


def test_probe_is_reproducible(tmp_path, home):
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3)
    a = run_probe(toy_config(tmp_path, csv, out=str(tmp_path / "a"), splits=2, epochs=3, record=False))
    b = run_probe(toy_config(tmp_path, csv, out=str(tmp_path / "b"), splits=2, epochs=3, record=False))
    assert [s["srcc"] for s in a["splits"]] == [s["srcc"] for s in b["splits"]]
    assert [s["plcc"] for s in a["splits"]] == [s["plcc"] for s in b["splits"]]


def test_lower_better_labels_give_positive_correlations(tmp_path, home):
    csv = make_toy_set(tmp_path / "data", refs=4, lower_better=True)
    res = run_probe(toy_config(tmp_path, csv, lower_better=True, splits=2, train_views=1))
    assert res["median"]["srcc"] > 0.5  # DMOS flipped: the prediction rises with quality


def test_validation_split_selects_an_epoch(tmp_path, home):
    csv = make_toy_set(tmp_path / "data", refs=8, levels=3)
    res = run_probe(toy_config(tmp_path, csv, splits=2, epochs=6, train_ratio=0.5, val_ratio=0.25,
                               train_views=1))
    assert res["selection"] == "best validation SRCC"
    for s in res["splits"]:
        assert s["n_val"] == 6 and s["n_train"] == 12 and s["n_test"] == 6
        assert 1 <= s["epoch"] <= 6 and "val_srcc" in s


def test_unreadable_images_refused_or_skipped(tmp_path, home):
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3, unreadable=1)
    with pytest.raises(DatasetError, match="cannot be read"):
        run_probe(toy_config(tmp_path, csv, splits=1, epochs=1, train_views=1))
    res = run_probe(toy_config(tmp_path, csv, splits=1, epochs=1, train_views=1, skip_missing=True))
    assert res["unreadable"] == 1 and res["n_images"] == 12


def test_encoder_weights_changing_during_probe_fails_loudly(tmp_path, home, monkeypatch):
    csv = make_toy_set(tmp_path / "data", refs=3, levels=3)
    real = probe_stage.load_encoder

    def sabotaged(spec, device, seed=0):
        enc = real(spec, device, seed=seed)
        bn = enc.module.bn1

        def hook(module, args, output):  # a buggy encoder that updates itself on every call
            bn.running_mean.add_(1.0)

        enc.module.register_forward_hook(hook)
        return enc

    monkeypatch.setattr(probe_stage, "load_encoder", sabotaged)
    with pytest.raises(TrainingError, match="weights changed"):
        run_probe(toy_config(tmp_path, csv, splits=1, epochs=1, train_views=1))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_head_input_is_standardised_with_training_feature_statistics():
    gen = torch.Generator().manual_seed(1)
    feats = 3.0 + 0.2 * torch.randn(40, 2, 6, generator=gen)
    head, _ = train_head(cached_view_sampler(feats, 0, "k"), torch.rand(40, generator=gen), feature_dim=6,
                         epochs=2, batch_size=8, hidden=8, key=("k",))
    first = cached_view_sampler(feats, 0, "k")(0).numpy().astype(np.float64)  # the first epoch's views
    assert np.allclose(head.feature_mean.numpy(), first.mean(0), atol=1e-5)
    assert np.allclose(head.feature_std.numpy(), np.sqrt(first.var(0) + 1e-5), atol=1e-5)
    plain, _ = train_head(cached_view_sampler(feats, 0), torch.rand(40), feature_dim=6, epochs=1, batch_size=8,
                          hidden=8, standardize=False)
    assert torch.equal(plain.feature_mean, torch.zeros(6)) and torch.equal(plain.feature_std, torch.ones(6))


@pytest.mark.cuda
def test_probe_on_cuda_matches_the_contract(tmp_path, home):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3)
    res = run_probe(toy_config(tmp_path, csv, device="cuda", splits=2, epochs=5))
    assert len(res["splits"]) == 2 and res["encoder_unchanged"] is True
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import score_images

    model = load_bundle(tmp_path / "run", "cuda")
    scored = score_images(model, sorted((tmp_path / "data").rglob("*.png"))[:3])
    assert all(s.score is not None for s in scored)
