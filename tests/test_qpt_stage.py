"""`dsmix qep --pretext qpt`: the tiny CPU run, exact resume, the probe of its encoder, the data
path (chains split between the loader workers and the device), and the option checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.distortions import distort
from dsmix_cli.engine.checkpoint import load_checkpoint, load_weights
from dsmix_cli.imageio import save_image_atomic, to_float
from dsmix_cli.models.resnet import build_resnet
from dsmix_cli.qpt import crop_patches
from dsmix_cli.stages.qpt import QPTDataset, collate_qpt, degrade_and_cut
from test_probe import make_toy_set
from test_qep import _image

runner = CliRunner()
TINY = ["--pretext", "qpt", "--on-the-fly", "--arch", "resnet18", "--no-pretrained", "--image-size", "32",
        "--batch-size", "4", "--device", "cpu", "--workers", "0", "--log-every", "1", "--qpt-queue", "40"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_DSM_MODEL", "DSMIX_ENCODER", "DSMIX_MODEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def refs(tmp_path):
    folder = tmp_path / "refs"
    for i in range(6):
        save_image_atomic(_image(i, size=56), folder / f"r{i}.png")
    return folder


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_trains_and_its_encoder_goes_through_probe(refs, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["qep", "--refs", str(refs), *TINY, "--max-steps", "3", "--seed", "1", "--out", str(run),
                              "--dsm-source", "gt"])
    assert res.exit_code == 0, res.output
    assert "ignored with --pretext qpt (DSMix options): --dsm-source gt" in res.output
    assert "QPT degradation space: 1,740,126 chains" in res.output  # 25 types, 5 levels, up to 3 steps
    recs = _log(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    last = recs[-1]
    for key in ("nce", "kd_fr", "kd_cosd", "sim_pos", "sim_deg", "sim_content", "sim_queue", "acc"):
        assert math.isfinite(last[key]), key
    assert last["loss"] == pytest.approx(last["nce"] + last["kd_fr"] + last["kd_cosd"], rel=1e-5)
    config = json.loads((run / "config.json").read_text())
    assert config["pretext"] == "qpt" and config["qpt_space"] == 1_740_126
    assert config["qpt"] == {"steps": 3, "skip": 0.5, "region": 48, "temperature": 0.2, "queue": 40,
                             "momentum": 0.999, "dim": 128, "hidden": 512}
    ckpt = load_checkpoint(run / "last.pt", kind="qep")
    assert int(ckpt["model"]["queue_ptr"]) == (3 * 4 * 4) % 40  # 16 keys a step
    state, meta = load_weights(run / "encoder.safetensors", kind="qep-encoder")
    assert set(state) == set(build_resnet("resnet18").state_dict())
    assert all(torch.equal(state[k], ckpt["model"]["encoder." + k]) for k in state)
    assert meta["config"]["pretext"] == "qpt"
    # stopped by --max-steps: not the default encoder (only finished runs are), but named it
    # goes through the probe like a DSMix one
    assert "not recorded as the default encoder" in res.output
    assert not (tmp_path / "home" / "defaults.json").exists()
    csv = make_toy_set(tmp_path / "toy", refs=4, levels=3)
    res = runner.invoke(app, ["probe", "--encoder", str(run), "--dataset", "csv", "--csv", str(csv), "--out", str(tmp_path / "probe"),
                              "--splits", "2", "--epochs", "3", "--image-size", "32", "--device", "cpu",
                              "--train-views", "1", "--batch-size", "8", "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["encoder"] == str((run / "encoder.safetensors").resolve()) and len(out["splits"]) == 2


def test_resume_is_bit_identical(refs, tmp_path):
    """2 steps, kill, resume to 5 (2 steps an epoch: the resumed part crosses epoch ends): the model
    (query and key encoders, heads, queue and pointer) and the optimizer state equal those of an
    uninterrupted 5-step run exactly. JPEG2000 (9) is among the types, so some chains start in
    the loader."""
    common = ["--refs", str(refs), *TINY, "--types", "1,9,11,16,19", "--kd-alpha", "0", "--kd-beta", "0",
              "--epoch-size", "8", "--seed", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, ["qep", *common, "--out", str(a), "--max-steps", "5"]).exit_code == 0
    res = runner.invoke(app, ["qep", *common, "--out", str(b), "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["qep", *common, "--out", str(b), "--max-steps", "5", "--resume"])
    assert res.exit_code == 0, res.output
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["step"] == cb["step"] == 5
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert [r["loss"] for r in _log(a)] == [r["loss"] for r in _log(b)]
    assert int(ca["model"]["queue_ptr"]) == (5 * 16) % 40
    # the key encoder is not the query encoder (it lags behind by the momentum)
    assert not torch.equal(ca["model"]["encoder.conv1.weight"], ca["model"]["momentum_encoder.conv1.weight"])


def test_chains_split_between_the_loader_and_the_device(refs):
    """Deterministic types only: each degraded region equals its chain applied step by step,
    whether a step ran in the loader (JPEG2000, type 9) or on the device; the patches are the
    crops at the drawn positions, and the KD input is the reference at the first position."""
    types = [1, 9, 16, 24]
    ds = QPTDataset(sorted(refs.glob("*.png")), region=40, patch=24, seed=0, types=types, levels=[1, 3, 5],
                    steps=3, skip=0.3, epoch_size=6, cpu_types=frozenset({9}))
    items = [ds[(0, i)] for i in range(6)]
    chains_with_9 = [(i, c) for i, it in enumerate(items) for c in range(2) if 9 in it["types"][c].tolist()]
    assert chains_with_9, "the seed should give at least one chain with JPEG2000"
    for i, c in chains_with_9:
        step9 = items[i]["types"][c].tolist().index(9)
        assert int(items[i]["start"][c]) == step9 + 1
    assert all(int(it["start"][c]) == 0 for it in items for c in range(2) if 9 not in it["types"][c].tolist())
    batch = collate_qpt(items)
    assert batch["dist"].shape[0] == len(chains_with_9)
    patches, ref_patches = degrade_and_cut(batch, torch.device("cpu"), 24, _distort_batch_exact, None)
    assert patches.shape == (24, 3, 24, 24) and ref_patches.shape == (6, 3, 24, 24)
    for i, it in enumerate(items):
        ref = to_float(it["ref"])[None]
        for c in range(2):
            x = ref
            for s, (t, lv) in enumerate(zip(it["types"][c].tolist(), it["levels"][c].tolist())):
                if t:
                    x = distort(x, t, lv)
                    if s + 1 == int(it["start"][c]):
                        x = to_float((x * 255).round().to(torch.uint8))  # the loader hands over 8 bits
            expected = crop_patches(x, it["offsets"][c][None], 24)
            assert torch.allclose(patches[4 * i + 2 * c:4 * i + 2 * c + 2], expected, atol=1e-5), (i, c)
        assert torch.equal(ref_patches[i:i + 1], crop_patches(ref, it["offsets"][0, :1][None], 24))


def _distort_batch_exact(x, types, levels, generator=None):
    """One image at a time (the reference the batched path must match)."""
    return torch.cat([distort(x[j:j + 1], int(t), int(lv)) for j, (t, lv) in enumerate(zip(types, levels))])


@pytest.mark.parametrize("extra,message", [
    (["--pretext", "simclr"], "--pretext 'simclr'"),
    (["--mix", "2"], "--mix is an option of the DSMix pretext"),
    (["--dsm-model", "runs/dsm"], "--dsm-model is an option of the DSMix pretext"),
    (["--mix-partners", "same"], "--mix-partners is an option of the DSMix pretext"),
    (["--qpt-skip", "1"], "--qpt-skip must lie in [0, 1)"),
    (["--qpt-steps", "4", "--types", "1-3"], "--qpt-steps 4 must lie in 1..3"),
    (["--qpt-region", "32"], "--qpt-region 32 must exceed --image-size 32"),
    (["--types", "1", "--levels", "2", "--qpt-skip", "0", "--qpt-steps", "1"], "a single chain"),
    (["--qpt-temperature", "0"], "--qpt-temperature must be > 0"),
])
def test_bad_options_exit_2_before_any_work(extra, message, refs, tmp_path):
    run = tmp_path / "bad"
    res = runner.invoke(app, ["qep", "--refs", str(refs), *TINY, *extra, "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not run.exists()


def test_qpt_needs_references_and_resume_keeps_the_pretext(refs, tmp_path):
    res = runner.invoke(app, ["qep", "--data", str(refs), "--pretext", "qpt", "--device", "cpu"])
    assert res.exit_code == 2 and "--refs DIR --on-the-fly" in res.output
    run = tmp_path / "run"
    assert runner.invoke(app, ["qep", "--refs", str(refs), *TINY, "--kd-alpha", "0", "--kd-beta", "0", "--max-steps",
                               "1", "--out", str(run)]).exit_code == 0
    dsmix = [a for a in TINY if a not in ("--pretext", "qpt", "--qpt-queue", "40")]
    res = runner.invoke(app, ["qep", "--refs", str(refs), *dsmix, "--pretext", "dsmix", "--dsm-source", "gt",
                              "--out", str(run), "--resume", "--max-steps", "2"])
    assert res.exit_code == 2 and "trained with --pretext qpt, not dsmix" in res.output
    res = runner.invoke(app, ["qep", "--refs", str(refs), *TINY, "--kd-alpha", "0", "--kd-beta", "0", "--qpt-steps",
                              "2", "--out", str(run), "--resume", "--max-steps", "2"])
    assert res.exit_code == 2 and "qpt was {" in res.output and "'steps': 3" in res.output
    # --resume alone restores every option, the nested --qpt-* ones too (queue 40 is not the default)
    res = runner.invoke(app, ["qep", "--out", str(run), "--resume", "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in _log(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["qpt"]["queue"] == 40


@pytest.mark.slow
def test_qpt_benchmark_reports_its_figures():
    """benchmarks/bench_qpt.py runs at a tiny size and returns positive figures (no timing thresholds)."""
    from benchmark_modules import benchmark_module

    with benchmark_module("bench_qpt.py") as module:
        rec = module.bench_qpt_step("cpu", batch=2, size=32, arch="resnet18", queue=16, quick=True)
    for key in ("chains_ms", "step_ms", "loader_ms_per_region"):
        assert math.isfinite(rec[key]) and rec[key] > 0, key
    assert 0 < rec["chains_fraction"] < 1 and rec["region"] == 48


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chains_and_step_on_cuda_match_the_cpu(refs, tmp_path):
    """The device side of the chains on CUDA gives the CPU's regions (deterministic types), and
    a bf16 run with channels_last trains and exports its encoder."""
    ds = QPTDataset(sorted(refs.glob("*.png")), region=40, patch=24, seed=0, types=[1, 9, 16, 24],
                    levels=[1, 3, 5], steps=3, skip=0.3, epoch_size=6, cpu_types=frozenset({9}))
    batch = collate_qpt([ds[(0, i)] for i in range(6)])
    cpu, ref_cpu = degrade_and_cut(batch, torch.device("cpu"), 24, _distort_batch_exact, None)
    gpu, ref_gpu = degrade_and_cut(batch, torch.device("cuda"), 24, _distort_batch_exact, None)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=2e-3)
    assert torch.equal(ref_gpu.cpu(), ref_cpu)
    run = tmp_path / "cuda"
    args = [a if a != "cpu" else "cuda" for a in TINY]
    res = runner.invoke(app, ["qep", "--refs", str(refs), *args, "--amp", "bf16", "--channels-last", "--max-steps",
                              "3", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert all(math.isfinite(r["loss"]) for r in _log(run))
    state, _ = load_weights(run / "encoder.safetensors", kind="qep-encoder")
    assert set(state) == set(build_resnet("resnet18").state_dict())
