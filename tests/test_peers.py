"""The peers' checkpoints (ARNIQA, CONTRIQUE, Re-IQA): tiny fakes written with each peer's key
layout load onto our ResNet and give the peer's features; wrong files are refused with the keys named."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.errors import CheckpointError
from dsmix_cli.models.encoders import load_encoder

SEQ = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


@pytest.fixture(scope="module")
def trunk():
    """A torchvision ResNet-18 with random weights and random BN statistics (the 'released' weights)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _trunk_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def _sequential(state, prefix):
    """torchvision names -> nn.Sequential(*children) names, as ARNIQA and CONTRIQUE save them."""
    out = {}
    for k, v in state.items():
        first, _, rest = k.partition(".")
        out[f"{prefix}{SEQ[first]}.{rest}"] = v
    return out


def arniqa_file(path, net, training=False):
    state = _sequential(_trunk_state(net), "model.")
    state.update({"projector.0.weight": torch.randn(512, 512), "projector.0.bias": torch.zeros(512),
                  "projector.2.weight": torch.randn(128, 512), "projector.2.bias": torch.zeros(128)})
    if training:  # the SimCLR training checkpoint wraps the encoder
        state = {f"encoder.{k}": v for k, v in state.items()}
    torch.save(state, path)
    return path


def contrique_file(path, net):
    state = _sequential(_trunk_state(net), "encoder.")
    bn = lambda p, n: {f"{p}.weight": torch.ones(n), f"{p}.bias": torch.zeros(n), f"{p}.running_mean": torch.zeros(n),  # noqa: E731
                       f"{p}.running_var": torch.ones(n), f"{p}.num_batches_tracked": torch.tensor(0)}
    state.update({"projector.0.weight": torch.randn(512, 512), **bn("projector.1", 512),
                  "projector.3.weight": torch.randn(128, 512), **bn("projector.4", 128)})
    torch.save(state, path)
    return path


def reiqa_file(path, net):
    model = {f"module.encoder.{k}": v for k, v in _trunk_state(net).items()}
    model.update({"module.head.0.weight": torch.randn(128, 512), "module.head.0.bias": torch.zeros(128)})
    torch.save({"model": model, "epoch": 40, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def _features(net, x, mean, std, l2):
    with torch.no_grad():
        f = torch.nn.Sequential(*list(net.children())[:-1])((x - torch.tensor(mean).view(1, 3, 1, 1))
                                                            / torch.tensor(std).view(1, 3, 1, 1)).flatten(1)
    return torch.nn.functional.normalize(f, dim=1) if l2 else f


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLAIN = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("kind,writer,stats,l2", [
    ("arniqa", arniqa_file, IMAGENET, True),
    ("contrique", contrique_file, PLAIN, True),
    ("reiqa-quality", reiqa_file, PLAIN, False),
    ("reiqa-content", reiqa_file, IMAGENET, False),
])
def test_each_peer_checkpoint_loads_and_gives_the_peers_features(tmp_path, trunk, kind, writer, stats, l2):
    path = writer(tmp_path / f"{kind}.pth", trunk)
    enc = load_encoder(f"{kind}:{path}", "cpu")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    want = _features(trunk, x.float() / 255, *stats, l2)
    assert enc.feature_dim == 512 and enc.spec == f"{kind}:{path.resolve()}"
    torch.testing.assert_close(enc.features(x), want, rtol=1e-4, atol=1e-5)
    assert all(not p.requires_grad for p in enc.module.parameters())


def test_bare_files_are_recognised_from_their_keys(tmp_path, trunk):
    for writer, kind in ((arniqa_file, "arniqa"), (contrique_file, "contrique")):
        enc = load_encoder(writer(tmp_path / f"{kind}.pth", trunk), "cpu")
        assert enc.spec.startswith(f"{kind}:")
    enc = load_encoder(arniqa_file(tmp_path / "simclr.pth", trunk, training=True), "cpu")
    assert enc.spec.startswith("arniqa:")
    with pytest.raises(CheckpointError, match="reiqa-quality:FILE or reiqa-content:FILE"):
        load_encoder(reiqa_file(tmp_path / "reiqa.pth", trunk), "cpu")


def test_reiqa_content_and_quality_concatenated(tmp_path, trunk):
    c = reiqa_file(tmp_path / "content.pth", trunk)
    torch.manual_seed(1)
    other = torchvision.models.resnet18(weights=None).eval()
    q = reiqa_file(tmp_path / "quality.pth", other)
    enc = load_encoder(f"reiqa:{c},{q}", "cpu")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    want = torch.cat([_features(trunk, x.float() / 255, *IMAGENET, False),
                      _features(other, x.float() / 255, *PLAIN, False)], dim=1)
    assert enc.feature_dim == 1024
    torch.testing.assert_close(enc.features(x), want, rtol=1e-4, atol=1e-5)
    # the bundle's spec rebuilds the same encoder
    assert torch.equal(load_encoder(enc.spec, "cpu").features(x), enc.features(x))


def test_wrong_files_are_refused_with_the_keys_named(tmp_path, trunk):
    state = torch.load(arniqa_file(tmp_path / "a.pth", trunk), weights_only=True)
    extra = dict(state, **{"model.7.1.bn2.extra": torch.zeros(1), "classifier.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys .*classifier\.weight"):
        load_encoder(f"arniqa:{tmp_path / 'extra.pth'}", "cpu")
    missing = {k: v for k, v in state.items() if k != "model.4.0.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing trunk keys \['layer1\.0\.conv1\.weight'\]"):
        load_encoder(f"arniqa:{tmp_path / 'missing.pth'}", "cpu")
    # a CONTRIQUE file named as ARNIQA: not its layout, and the file's keys are shown
    contrique = contrique_file(tmp_path / "c.pth", trunk)
    with pytest.raises(CheckpointError, match=r"is not an ARNIQA checkpoint.*encoder\.0\.weight"):
        load_encoder(f"arniqa:{contrique}", "cpu")
    torch.save({"conv.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"neither a dsmix qep checkpoint nor .*conv\.weight"):
        load_encoder(tmp_path / "other.pth", "cpu")


def test_a_file_that_needs_pickle_is_refused_in_one_line(tmp_path, trunk):
    torch.save({"model": _trunk_state(trunk), "opt": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="would need pickle") as info:
        load_encoder(f"reiqa-quality:{tmp_path / 'pickled.pth'}", "cpu")
    assert "\n" not in str(info.value)


def test_cli_refuses_a_wrong_peer_file_with_exit_2(tmp_path, trunk, monkeypatch):
    from test_probe import make_toy_set

    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    csv = make_toy_set(tmp_path / "data", refs=3, levels=2, size=(16, 16))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    res = CliRunner().invoke(app, ["probe", "--encoder", f"contrique:{tmp_path / 'bad.pth'}", "--dataset", "csv",
                                   "--csv", str(csv), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "bad.pth" in res.stderr and "is not a CONTRIQUE checkpoint" in res.stderr and "conv.weight" in res.stderr
    assert not (tmp_path / "run" / "results.json").exists()
