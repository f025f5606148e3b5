"""View sets and the feature cache: ARNIQA's half-scale crops, protocol resize, one encoder pass for
`--protocol all`, and the on-disk cache (hit, invalidation, a damaged file)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from dsmix_cli.evaluation import features as feats_mod
from dsmix_cli.evaluation.features import FeatureCache, extract_features
from dsmix_cli.evaluation.views import ViewDataset, downscale_half, five_crops, five_crops_padded, resize_exact
from dsmix_cli.models.encoders import load_encoder
from dsmix_cli.stages.probe import run_probe
from test_probe import make_toy_set, toy_config


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_half_scale_crops_are_arniqa_windows_with_zero_fill():
    img = torch.arange(1, 7 * 10 + 1, dtype=torch.int64).view(1, 7, 10)  # positive: zeros mark the padding
    crops = five_crops_padded(img, 4)
    assert torch.equal(crops[0], img[:, 0:4, 0:4]) and torch.equal(crops[3], img[:, 3:7, 6:10])
    assert torch.equal(crops[4], img[:, 7 // 2 - 2:7 // 2 + 2, 10 // 2 - 2:10 // 2 + 2])  # centre: H//2 - s//2
    small = torch.ones(1, 3, 5, dtype=torch.int64)
    crops = five_crops_padded(small, 4)  # taller than the image: zero rows where the window falls outside
    assert crops.shape == (5, 1, 4, 4)
    assert crops[0, 0, :3, :4].eq(1).all() and crops[0, 0, 3].eq(0).all()     # top-left: padding below
    assert crops[2, 0, 0].eq(0).all() and crops[2, 0, 1:].eq(1).all()          # bottom-left: padding above
    assert torch.equal(five_crops_padded(img, 4)[:4], five_crops(img, 4)[:4])  # corners agree with five_crops


def test_downscale_half_matches_pillow_bicubic():
    rng = np.random.default_rng(0)
    arr = (rng.random((41, 60, 3)) * 255).astype(np.uint8)
    ours = downscale_half(torch.from_numpy(arr).permute(2, 0, 1)).permute(1, 2, 0).numpy().astype(int)
    pil = np.asarray(Image.fromarray(arr).resize((30, 20), Image.BICUBIC)).astype(int)
    assert ours.shape == pil.shape == (20, 30, 3)
    assert np.abs(ours - pil)[2:-2, 2:-2].mean() < 3  # same filter family; borders differ in padding


def test_view_dataset_stacks_train_five_and_half_views_and_resizes(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(1).random((60, 80, 3)) * 255).astype(np.uint8)).save(path)
    ds = ViewDataset([path], 16, train_views=2, test_views=True, half_views=True, resize_to=(40, 30))
    _, stack, err = ds[0]
    assert not err and stack.shape == (12, 3, 16, 16) and ds.views_per_image == 12
    loaded = resize_exact(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1), (40, 30))
    assert loaded.shape == (3, 30, 40)
    assert torch.equal(stack[2:7], five_crops(loaded, 16))
    assert torch.equal(stack[7:], five_crops_padded(downscale_half(loaded), 16))


@pytest.mark.slow
def test_protocol_all_encodes_once_and_a_second_run_reads_the_cache(tmp_path, home, monkeypatch):
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3)
    calls = []
    real = feats_mod.encode_views

    def counting(encoder, dataset, **kw):
        calls.append(dataset.views_per_image)
        return real(encoder, dataset, **kw)

    monkeypatch.setattr(feats_mod, "encode_views", counting)
    res = run_probe(toy_config(tmp_path, csv, protocol="all", splits=2, epochs=2, train_views=2, record=False))
    assert calls == [2 + 5 + 5]  # one pass: 2 random views, the 5 crops shared by both view sets, 5 half-scale
    assert [r["protocol"] for r in res["table"]] == ["dsmix", "arniqa", "contrique"]
    assert set(res["protocols"]) == {"dsmix", "arniqa", "contrique"}
    assert res["protocol"]["name"] == "dsmix" and res["splits"] == res["protocols"]["dsmix"]["splits"]
    assert all("alpha" in s for s in res["protocols"]["arniqa"]["splits"])
    assert res["protocols"]["arniqa"]["splits"][0]["n_val"] > 0 and res["protocols"]["dsmix"]["splits"][0]["n_val"] == 0
    again = run_probe(toy_config(tmp_path, csv, protocol="arniqa", out=str(tmp_path / "again"), splits=2, record=False))
    assert calls == [12] and again["feature_cache"]["read"] == ["five", "half"] and not again["feature_cache"]["encoded"]
    assert [s["srcc"] for s in again["splits"]] == [s["srcc"] for s in res["protocols"]["arniqa"]["splits"]]


@pytest.mark.slow
def test_cache_is_keyed_on_weights_files_and_views(tmp_path, home):
    make_toy_set(tmp_path / "data", refs=2, levels=2, size=(24, 24))
    paths = sorted((tmp_path / "data").rglob("*.png"))
    enc = load_encoder("random:resnet18", "cpu")
    cache = FeatureCache(tmp_path / "cache")
    first = extract_features(enc, paths, {"five": 5}, image_size=16, seed=0, cache=cache)
    hit = extract_features(enc, paths, {"five": 5}, image_size=16, seed=0, cache=cache)
    assert first.encoded == ["five"] and hit.cached == ["five"] and torch.equal(first.parts["five"], hit.parts["five"])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    assert extract_features(enc, paths, {"five": 5}, image_size=24, seed=0, cache=cache).encoded == ["five"]
    other = load_encoder("random:resnet18", "cpu", seed=1)  # other weights
    assert extract_features(other, paths, {"five": 5}, image_size=16, seed=0, cache=cache).encoded == ["five"]
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file
    assert extract_features(enc, paths, {"five": 5}, image_size=16, seed=0, cache=cache).encoded == ["five"]
    for f in (tmp_path / "cache").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    said = []
    damaged = extract_features(enc, paths, {"five": 5}, image_size=16, seed=0,
                               cache=FeatureCache(tmp_path / "cache", on_info=said.append))
    assert damaged.encoded == ["five"] and any("unreadable" in m for m in said)
    assert torch.equal(damaged.parts["five"], first.parts["five"])


@pytest.mark.cuda
def test_protocol_all_on_cuda_matches_cpu(tmp_path, home):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3)
    cpu = run_probe(toy_config(tmp_path, csv, protocol="all", splits=2, epochs=2, record=False, feature_cache=False))
    gpu = run_probe(toy_config(tmp_path, csv, protocol="all", splits=2, epochs=2, record=False, feature_cache=False,
                               device="cuda", out=str(tmp_path / "gpu")))
    for name in ("arniqa", "contrique"):  # the ridge heads are float64 closed forms: the same up to rounding
        a = [s["srcc"] for s in cpu["protocols"][name]["splits"]]
        b = [s["srcc"] for s in gpu["protocols"][name]["splits"]]
        assert np.allclose(a, b, atol=0.05)
    assert gpu["encoder_unchanged"] and len(gpu["table"]) == 3
