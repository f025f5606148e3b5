"""Ground-truth DSM: `gt_dsm` against independent numpy computations, and `dsmix make-gt-dsm`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dsm_fixtures import write_synth_folder
from dsmix_cli.cli import app
from dsmix_cli.data.pairs import load_pairs
from dsmix_cli.dsm.gt import dsm_map_path, gt_dsm, load_gt_map
from dsmix_cli.errors import DatasetError, DsmixError


def _numpy_gt(dist: np.ndarray, ref: np.ndarray, pool: int) -> np.ndarray:
    """HxWx3 uint8 pair -> (H//pool, W//pool) by explicit loops over the cells (docs/method.md section 1)."""
    d = np.abs(dist.astype(np.float64) / 255 - ref.astype(np.float64) / 255).mean(axis=2)
    h, w = d.shape[0] // pool, d.shape[1] // pool
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = d[i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].mean()
    return out


def test_hand_worked_case():
    # One channel of the top-left 8x8 cell differs by 1.0: that cell is 1/3, the rest 0.
    ref = torch.zeros(3, 16, 16)
    dist = ref.clone()
    dist[0, :8, :8] = 1.0
    # Half the pixels of the bottom-right cell differ by 0.5 in all channels: 0.25.
    dist[:, 8:12, 8:16] = 0.5
    expected = torch.tensor([[1 / 3, 0.0], [0.0, 0.25]])
    assert torch.allclose(gt_dsm(dist, ref, pool=8), expected)


def test_matches_numpy_on_random_batches_with_ragged_edges():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 256, (2, 21, 35, 3), dtype=np.uint8)  # 21x35: strips of 5 and 3 pixels dropped
    r = rng.integers(0, 256, (2, 21, 35, 3), dtype=np.uint8)
    td, tr = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (d, r))
    for pool in (4, 8):
        got = gt_dsm(td, tr, pool=pool)
        assert got.dtype == torch.float32 and got.shape == (2, 21 // pool, 35 // pool)
        for b in range(2):
            np.testing.assert_allclose(got[b].numpy(), _numpy_gt(d[b], r[b], pool), atol=1e-6)
    # float input in [0, 1] gives the same maps as uint8; unbatched input drops the batch axis
    assert torch.allclose(gt_dsm(td.float() / 255, tr.float() / 255), gt_dsm(td, tr))
    assert torch.allclose(gt_dsm(td[0], tr[0]), gt_dsm(td, tr)[0])


def test_bad_input_is_a_clear_error():
    with pytest.raises(DsmixError, match="differ in shape"):
        gt_dsm(torch.zeros(3, 16, 16), torch.zeros(3, 16, 8))
    with pytest.raises(DsmixError, match="pool"):
        gt_dsm(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), pool=8)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    g = torch.Generator().manual_seed(0)
    d = torch.randint(0, 256, (3, 3, 64, 48), dtype=torch.uint8, generator=g)
    r = torch.randint(0, 256, (3, 3, 64, 48), dtype=torch.uint8, generator=g)
    out = gt_dsm(d.cuda(), r.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), gt_dsm(d, r), atol=1e-6)


def test_make_gt_dsm_maps_match_numpy_and_resume(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 2, 4), levels=(2,))
    out = tmp_path / "maps"
    runner = CliRunner()
    res = runner.invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "6 maps written" in res.output
    for line in (data / "dist_imgs.csv").read_text().splitlines()[1:]:
        dist_rel, ref_rel, _, _ = line.split(",")
        d = np.asarray(Image.open(data / dist_rel).convert("RGB"))
        r = np.asarray(Image.open(data / ref_rel).convert("RGB"))
        stored = np.load(out / (dist_rel.split("/")[-1].rsplit(".", 1)[0] + ".npy"))
        assert stored.dtype == np.float16 and stored.shape == (64 // 8, 80 // 8)
        np.testing.assert_allclose(stored.astype(np.float64), _numpy_gt(d, r, 8), atol=2e-3)

    # resumable: a rerun skips the existing maps; a deleted map is remade
    pairs = load_pairs(data)
    victim = dsm_map_path(out, pairs[0].dist)
    victim.unlink()
    res = runner.invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0 and "1 maps written, 5 already present" in res.output, res.output
    assert victim.is_file()
    assert load_gt_map(out, pairs[0]).dtype == torch.float32


def test_make_gt_dsm_float32_pool4_and_errors(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=1, kinds=(3,), levels=(1,))
    runner = CliRunner()
    res = runner.invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(tmp_path / "m"),
                              "--pool", "4", "--dtype", "float32", "--workers", "0"])
    assert res.exit_code == 0, res.output
    (pair,) = load_pairs(data)
    arr = np.load(dsm_map_path(tmp_path / "m", pair.dist))
    assert arr.dtype == np.float32 and arr.shape == (16, 20)
    # brightness +20 on every pixel (a few clipped at 255): close to 20/255 everywhere
    assert abs(float(arr.mean()) - 20 / 255) < 5e-3

    res = runner.invoke(app, ["make-gt-dsm", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "dataset folder not found" in res.output
    res = runner.invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(tmp_path / "m"), "--dtype", "int8"])
    assert res.exit_code == 2 and "--dtype" in res.output
    with pytest.raises(DatasetError, match="make-gt-dsm"):
        load_gt_map(tmp_path / "empty", pair)


def test_make_gt_dsm_caches_the_dsm_networks_predicted_maps(tmp_path):
    """--dsm-model writes the network's map of each whole image (cropped to whole patches), and
    a maps folder never mixes ground-truth and predicted maps."""
    from dsmix_cli.dsm.network import WEIGHTS_FILE, build_dsm_net
    from dsmix_cli.engine.checkpoint import export_weights
    from dsmix_cli.imageio import load_rgb_tensor

    data = write_synth_folder(tmp_path / "D", n_refs=2, h=44, w=60)  # not multiples of the patch
    torch.manual_seed(0)
    net = build_dsm_net("vit_tiny_patch16_224", 32, pretrained=False, patch_size=8, depth=1, embed_dim=32,
                        num_heads=2)
    run = tmp_path / "dsm"
    export_weights(run / WEIGHTS_FILE, net.state_dict(), {**net.meta(), "step": 1, "config": {}})
    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(out), "--dsm-model", str(run),
                                   "--dtype", "float32", "--device", "cpu", "--workers", "0"])
    assert res.exit_code == 0, res.output
    net.eval()
    for pair in load_pairs(data):
        img = load_rgb_tensor(pair.dist)[:, :40, :56].float().div(255).unsqueeze(0)
        with torch.no_grad():
            expected = net(img)[0].clamp(min=0).numpy()
        got = np.load(dsm_map_path(out, pair.dist))
        assert got.shape == (5, 7)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert '"source": "model"' in (out / "maps.json").read_text()
    # the same folder refuses ground-truth maps
    res = CliRunner().invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 2 and "another kind" in res.output.replace("\n", " ")
