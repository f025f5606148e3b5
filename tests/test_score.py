"""Scoring and evaluation with a probed model: inputs, 5-crop scores by hand, bundle checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dsmix_cli.data.catalog import load_dataset
from dsmix_cli.engine.checkpoint import export_weights
from dsmix_cli.errors import CheckpointError
from dsmix_cli.evaluation.bundle import load_bundle
from dsmix_cli.evaluation.score import evaluate_model, expand_inputs, score_images, write_scores_csv
from dsmix_cli.models.resnet import ResNetBackbone
from dsmix_cli.stages.probe import run_probe
from test_probe import make_toy_set, toy_config


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One tiny probe run on a qep-style exported encoder (shared by the tests of this file)."""
    tmp = tmp_path_factory.mktemp("score")
    old = os.environ.get("DSMIX_HOME")
    os.environ["DSMIX_HOME"] = str(tmp / "home")
    try:
        torch.manual_seed(0)
        export_weights(tmp / "qep" / "encoder.safetensors", ResNetBackbone("resnet18").state_dict(),
                       {"kind": "qep-encoder", "arch": "resnet18", "image_size": 32,
                        "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225]})
        csv = make_toy_set(tmp / "data", refs=4, levels=4)
        run_probe(toy_config(tmp, csv, encoder=str(tmp / "qep"), splits=1, epochs=20, train_views=2))
    finally:
        if old is None:
            os.environ.pop("DSMIX_HOME", None)
        else:
            os.environ["DSMIX_HOME"] = old
    return tmp


def _by_hand(model, path):
    """The 5-crop score computed independently: PIL, torchvision five_crop, the module, the head."""
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    size = model.image_size
    h, w = img.shape[-2:]
    if min(h, w) < size:
        img = TF.resize(img, [size, round(w * size / h)] if h <= w else [round(h * size / w), size], antialias=True)
    crops = torch.stack(TF.five_crop(img, [size, size])).float() / 255
    x = TF.normalize(crops, model.encoder.mean, model.encoder.std)
    with torch.no_grad():
        feats = model.encoder.module(x)
        return float(model.head(feats).mean())


def test_scores_match_a_hand_computation(probed):
    model = load_bundle(probed / "run", "cpu")
    paths = sorted((probed / "data").rglob("*.png"))[:5]
    scored = score_images(model, paths, batch_size=2)
    assert [s.path for s in scored] == paths
    for s in scored:
        assert s.error == "" and s.score == pytest.approx(_by_hand(model, s.path), abs=2e-3)


def test_unreadable_images_are_named_and_the_rest_scored(probed, tmp_path):
    model = load_bundle(probed / "run", "cpu")
    good = sorted((probed / "data").rglob("*.png"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    scored = score_images(model, [good[0], bad, tmp_path / "gone.png", good[1]], batch_size=3)
    assert [s.path for s in scored] == [good[0], bad, tmp_path / "gone.png", good[1]]
    assert scored[0].score is not None and scored[3].score is not None
    assert scored[1].score is None and str(bad) in scored[1].error
    assert "file not found" in scored[2].error
    out = tmp_path / "s.csv"
    write_scores_csv(out, scored)
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,note" and len(lines) == 3
    assert lines[1].split(",")[0] == str(good[0])


def test_expand_inputs_files_folders_globs(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for rel in ("b/z.png", "b/a.jpg", "b/deep/m.bmp", "b/notes.txt", "c1.png", "c2.png"):
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = expand_inputs([tmp_path / "c2.png", tmp_path / "b", str(tmp_path / "c*.png"),
                           str(tmp_path / "q*.png"), tmp_path / "empty", tmp_path / "missing.png"])
    paths, problems = found.paths, found.problems
    assert paths == [tmp_path / "c2.png", tmp_path / "b" / "a.jpg", tmp_path / "b" / "deep" / "m.bmp",
                     tmp_path / "b" / "z.png", tmp_path / "c1.png", tmp_path / "c2.png", tmp_path / "missing.png"]
    assert len(problems) == 2 and "q*.png" in problems[0] and "empty" in problems[1]


def test_evaluate_correlations_agree_with_scipy(probed):
    model = load_bundle(probed / "run", "cpu")
    ds = load_dataset("csv", None, csv=probed / "data" / "labels.csv")
    res = evaluate_model(model, ds, batch_size=4)
    scores = np.array([s.score for s in score_images(model, ds.paths())])
    labels = ds.scores()
    assert res["n"] == len(labels) == 16
    assert res["srcc"] == pytest.approx(scipy.stats.spearmanr(scores, labels).statistic)
    assert res["plcc"] == pytest.approx(scipy.stats.pearsonr(scores, labels).statistic)
    assert res["krcc"] == pytest.approx(scipy.stats.kendalltau(scores, labels).statistic)
    assert res["same_dataset"] is True
    dmos = load_dataset("csv", None, csv=probed / "data" / "labels.csv", lower_better=True)
    flipped = evaluate_model(model, dmos)
    assert flipped["srcc"] == pytest.approx(-res["srcc"])  # correlations oriented higher = better


def test_bundle_refuses_an_encoder_that_changed(probed, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(probed / "run", run)
    # the same bundle, but its encoder file is overwritten with other weights
    model = load_bundle(run, "cpu")
    enc_file = model.meta["encoder"]
    backup = tmp_path / "enc.bak"
    shutil.copy(enc_file, backup)
    try:
        torch.manual_seed(99)
        export_weights(enc_file, ResNetBackbone("resnet18").state_dict(),
                       {"kind": "qep-encoder", "arch": "resnet18", "image_size": 32})
        with pytest.raises(CheckpointError, match="differ from those the head was trained on"):
            load_bundle(run, "cpu")
    finally:
        shutil.copy(backup, enc_file)
    with pytest.raises(CheckpointError, match="not a dsmix probe run"):
        load_bundle(tmp_path, "cpu")
