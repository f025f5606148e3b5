"""The DSM network: no class token, patch position embeddings, row-major token grid, weights I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dsmix_cli.dsm.network import build_dsm_net, load_dsm_model
from dsmix_cli.engine.checkpoint import export_weights
from dsmix_cli.errors import CheckpointError, DsmixError

TINY = dict(arch="vit_small_patch8_224", image_size=32, pretrained=False, depth=1)


def test_shapes_no_class_token_and_predict():
    net = build_dsm_net(**TINY)
    assert net.vit.cls_token is None and net.vit.num_prefix_tokens == 0
    assert net.vit.pos_embed.shape == (1, 16, 384)  # (32/8)^2 patch positions only
    assert net.patch_size == 8 and isinstance(net.decoder, nn.Linear)
    x = torch.rand(2, 3, 32, 48)  # another multiple of the patch: the grid follows the input
    out = net(x)
    assert out.shape == (2, 4, 6) and out.requires_grad
    pred = net.predict(x)
    assert not pred.requires_grad and (pred >= 0).all() and torch.equal(pred, out.detach().clamp(min=0))
    mlp = build_dsm_net(**{**TINY, "decoder": "mlp"})
    assert isinstance(mlp.decoder, nn.Sequential) and mlp(x).shape == (2, 4, 6)


def test_normalisation_comes_from_the_model_data_config():
    # ViT-B/8's default (augreg) weights use 0.5/0.5; ViT-S/8's (DINO) use the ImageNet statistics
    base = build_dsm_net("vit_base_patch8_224", 32, pretrained=False, depth=1)
    assert torch.allclose(base.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert torch.allclose(base.std.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    small = build_dsm_net(**TINY)
    assert torch.allclose(small.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_tokens_map_to_cells_row_major():
    """With identity blocks and a patch embedding that averages the red channel, the map must be
    the 8x8 average of red at each cell: token k goes to (k // W', k % W')."""
    net = build_dsm_net(**TINY)
    vit = net.vit
    with torch.no_grad():
        for blk in vit.blocks:  # residual branches off: each block is the identity
            blk.attn.proj.weight.zero_(); blk.attn.proj.bias.zero_()
            blk.mlp.fc2.weight.zero_(); blk.mlp.fc2.bias.zero_()
        vit.pos_embed.zero_()
        vit.norm = nn.Identity()
        vit.patch_embed.proj.weight.zero_(); vit.patch_embed.proj.bias.zero_()
        vit.patch_embed.proj.weight[0, 0] = 1.0 / 64
        net.decoder.weight.zero_(); net.decoder.weight[0, 0] = 1.0; net.decoder.bias.zero_()
        net.mean.zero_(); net.std.fill_(1.0)
    x = torch.rand(1, 3, 24, 40)
    red = x[0, 0].numpy()
    expected = red.reshape(3, 8, 5, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(net(x)[0].detach().numpy(), expected, atol=1e-5)


def test_pretrained_file_drops_the_class_token_position():
    import timm

    std = timm.create_model("vit_small_patch8_224", pretrained=False, depth=1)  # with class token
    torch.nn.init.normal_(std.pos_embed)
    path = "/nonexistent"
    with pytest.raises(CheckpointError, match="not found"):
        build_dsm_net("vit_small_patch8_224", 224, pretrained=path, depth=1)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vit.safetensors"
        save_file({k: v.contiguous() for k, v in std.state_dict().items()}, str(path))
        net = build_dsm_net("vit_small_patch8_224", 224, pretrained=path, depth=1)
    assert torch.equal(net.vit.pos_embed, std.pos_embed[:, 1:])  # E_pos of the 784 patches
    assert torch.equal(net.vit.blocks[0].mlp.fc1.weight, std.blocks[0].mlp.fc1.weight)
    assert torch.equal(net.vit.norm.weight, std.norm.weight)


def test_missing_pretrained_weights_say_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(DsmixError, match="--no-pretrained") as err:
        build_dsm_net("vit_small_patch8_224", 32, pretrained=True, depth=1)
    assert "--weights" in str(err.value) and "huggingface.co/timm/vit_small_patch8_224" in str(err.value)


def test_unreachable_hub_fails_at_once_without_trying_the_download(monkeypatch, tmp_path):
    """Offline (the hub's name does not resolve) and nothing cached: a clear error before timm
    starts its download retries."""
    import socket

    import huggingface_hub.constants as hf

    import dsmix_cli.dsm.network as network

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    looked_up = []

    def no_dns(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror("name resolution failed")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    real_create = network._create_vit

    def create(arch, pretrained, **kwargs):
        assert not pretrained, "the download must not be attempted"
        return real_create(arch, pretrained, **kwargs)

    monkeypatch.setattr(network, "_create_vit", create)
    with pytest.raises(DsmixError, match="cannot be reached") as err:
        build_dsm_net("vit_small_patch8_224", 32, pretrained=True, depth=1)
    assert looked_up == ["huggingface.co"] and "--no-pretrained" in str(err.value)


def test_bad_arch_and_size():
    with pytest.raises(DsmixError, match="not a timm VisionTransformer"):
        build_dsm_net("resnet18", 32, pretrained=False)
    with pytest.raises(DsmixError, match="not a timm model"):
        build_dsm_net("vit_nonexistent_model", 32, pretrained=False)
    with pytest.raises(DsmixError, match="multiple"):
        build_dsm_net(**{**TINY, "image_size": 36})


def test_load_dsm_model_round_trip(tmp_path):
    net = build_dsm_net(**{**TINY, "decoder": "mlp"})
    run = tmp_path / "run"
    export_weights(run / "dsm.safetensors", net.state_dict(), net.meta())
    x = torch.rand(2, 3, 32, 32)
    for source in (run, run / "dsm.safetensors"):
        loaded = load_dsm_model(source)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert loaded.decoder_name == "mlp" and len(loaded.vit.blocks) == 1
        assert torch.allclose(loaded.predict(x), net.predict(x))
    export_weights(tmp_path / "other.safetensors", net.state_dict(), {"kind": "encoder"})
    with pytest.raises(CheckpointError, match="expected 'dsm-net'"):
        load_dsm_model(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="no dsm.safetensors"):
        load_dsm_model(tmp_path)
