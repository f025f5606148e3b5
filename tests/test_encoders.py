"""Encoders for probing: qep exports and checkpoints, timm and random specs, exact keys, frozen."""

from __future__ import annotations

import pytest
import torch

from dsmix_cli.engine.checkpoint import export_weights, save_checkpoint
from dsmix_cli.errors import CheckpointError, DsmixError
from dsmix_cli.models.encoders import load_encoder, weights_digest
from dsmix_cli.models.resnet import ResNetBackbone

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _backbone(seed=3):
    torch.manual_seed(seed)
    return ResNetBackbone("resnet18")


def _qep_meta(**over):
    meta = {"kind": "qep-encoder", "arch": "resnet18", "image_size": 224,
            "input_mean": [0.4, 0.5, 0.6], "input_std": [0.2, 0.25, 0.3]}
    meta.update(over)
    return meta


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_resnet_is_frozen_eval_seeded_and_imagenet_normalised():
    enc = load_encoder("random:resnet18", "cpu", seed=5)
    assert enc.feature_dim == 512 and enc.spec == "random:resnet18"
    assert enc.mean == pytest.approx(IMAGENET_MEAN) and enc.std == pytest.approx(IMAGENET_STD)
    assert not enc.module.training
    assert all(not p.requires_grad for p in enc.module.parameters())
    assert load_encoder("random:resnet18", "cpu", seed=5).digest() == enc.digest()
    assert load_encoder("random:resnet18", "cpu", seed=6).digest() != enc.digest()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    f = enc.features(x)
    assert f.shape == (2, 512) and f.dtype == torch.float32


def test_random_timm_model_takes_its_stats_from_timm():
    enc = load_encoder("random:vit_tiny_patch16_224", "cpu")
    # timm's ViT augreg config uses 0.5/0.5, not the ImageNet values: never hard-code them
    assert enc.mean == pytest.approx((0.5, 0.5, 0.5)) and enc.std == pytest.approx((0.5, 0.5, 0.5))
    assert enc.feature_dim == 192 and enc.image_size == 224


def test_qep_export_loads_exactly_and_features_match_by_hand(tmp_path):
    net = _backbone()
    export_weights(tmp_path / "encoder.safetensors", net.state_dict(), _qep_meta())
    enc = load_encoder(tmp_path, "cpu")  # the run folder
    assert _same_weights(enc.module, net)
    assert enc.mean == pytest.approx((0.4, 0.5, 0.6)) and enc.std == pytest.approx((0.2, 0.25, 0.3))
    assert enc.spec == str((tmp_path / "encoder.safetensors").resolve())
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    manual = (x.float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.eval()(manual)
    assert torch.allclose(enc.features(x), expected, atol=1e-4, rtol=1e-4)


def test_qep_checkpoint_backbone_is_found_under_its_prefix(tmp_path):
    from dsmix_cli.models.heads import QualityEncoderNet

    net = QualityEncoderNet(_backbone())
    save_checkpoint(tmp_path / "last.pt", kind="qep", config={"arch": "resnet18", "image_size": 224},
                    step=1, model=net.state_dict())
    enc = load_encoder(tmp_path, "cpu")  # no encoder.safetensors: falls back to last.pt
    assert _same_weights(enc.module, net.backbone)


@pytest.mark.parametrize("change,what", [("drop", "missing keys"), ("extra", "unexpected keys")])
def test_wrong_keys_are_refused_naming_them(tmp_path, change, what):
    state = _backbone().state_dict()
    if change == "drop":
        state.pop("layer4.1.bn2.weight")
    else:
        state["fc.weight"] = torch.zeros(1000, 512)
    export_weights(tmp_path / "encoder.safetensors", state, _qep_meta())
    with pytest.raises(CheckpointError, match=what) as info:
        load_encoder(tmp_path / "encoder.safetensors", "cpu")
    assert ("layer4.1.bn2.weight" if change == "drop" else "fc.weight") in str(info.value)


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nope", "cpu")
    with pytest.raises(CheckpointError, match="not a dsmix qep run folder"):
        load_encoder(tmp_path, "cpu")
    export_weights(tmp_path / "other.safetensors", _backbone().state_dict(), _qep_meta(kind="dsm-model"))
    with pytest.raises(CheckpointError, match="expected 'qep-encoder'"):
        load_encoder(tmp_path / "other.safetensors", "cpu")
    export_weights(tmp_path / "arch.safetensors", _backbone().state_dict(), _qep_meta(arch="vgg16"))
    with pytest.raises(CheckpointError, match="arch"):
        load_encoder(tmp_path / "arch.safetensors", "cpu")
    with pytest.raises(DsmixError, match="no model"):
        load_encoder("timm:not_a_model_xyz", "cpu")


def test_timm_weights_offline_is_a_clear_error(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")
        raise AssertionError("unexpected")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(DsmixError) as info:
        load_encoder("timm:resnet50", "cpu")
    text = str(info.value)
    assert "timm:resnet50" in text and "Hugging Face" in text and "random:" in text


def test_timm_pretrained_path_uses_timm_stats(monkeypatch):
    import timm

    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        assert pretrained is True and kw.get("num_classes") == 0
        return real(name, pretrained=False, **kw)  # no download: same model, random weights

    monkeypatch.setattr(timm, "create_model", fake)
    monkeypatch.setattr("dsmix_cli.models.encoders.hub_unreachable", lambda hub_id: False)  # as if cached
    enc = load_encoder("timm:vit_tiny_patch16_224", "cpu")
    assert enc.spec == "timm:vit_tiny_patch16_224" and enc.mean == pytest.approx((0.5, 0.5, 0.5))
    assert not enc.module.training and all(not p.requires_grad for p in enc.module.parameters())


def test_timm_encoder_offline_fails_at_once(monkeypatch):
    import timm

    monkeypatch.setattr("dsmix_cli.models.encoders.hub_unreachable", lambda hub_id: True)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("no download may be attempted"))
    with pytest.raises(DsmixError, match="cannot be reached") as err:
        load_encoder("timm:resnet50", "cpu")
    assert "--encoder random:resnet50" in str(err.value) and "--encoder RUN" in str(err.value)


def test_torchvision_weights_offline_names_the_options(monkeypatch):
    """qep's student and teacher weights: the message names the options that replace the download."""
    from dsmix_cli.models import resnet

    class Offline:
        url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

        def get_state_dict(self, **kw):
            raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(resnet, "imagenet_weights", lambda arch: Offline())
    with pytest.raises(DsmixError) as err:
        resnet.build_resnet("resnet18", pretrained=True)
    text = str(err.value)
    assert all(opt in text for opt in ("--student-weights FILE", "--teacher-weights FILE", "--no-pretrained"))


def test_digest_sees_a_batchnorm_statistics_update():
    enc = load_encoder("random:resnet18", "cpu")
    before = enc.digest()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    enc.features(x)
    assert enc.digest() == before  # eval mode: nothing moves
    enc.module.train()
    with torch.no_grad():
        enc.module(enc.normalize(x))  # a train-mode pass updates BN running statistics
    assert enc.digest() != before
    assert weights_digest(enc.module) == enc.digest()
