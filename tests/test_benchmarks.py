"""The benchmark runner (`benchmarks/run.py`): every part runs with tiny settings and the record
has every figure with a sane value (no timing thresholds: the machine decides those)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmark_modules import benchmark_module


@pytest.fixture(scope="module")
def runner():
    with benchmark_module("run.py") as module:
        yield module


def tiny_settings(runner):
    return runner.Settings(
        dist_size=(16, 16), dist_quick=True, dsmix_batch=4, dsmix_size=32, dsmix_arch="resnet18", dsmix_quick=True,
        refs=4, ref_hw=(40, 48), pair_types=(11,), pair_levels=(1, 3), qep_arch="resnet18", qep_size=32, qep_batch=2,
        qep_warmup=1, qep_steps=1, dsm_arch="vit_small_patch8_224", dsm_depth=1, dsm_size=32, dsm_batch=2,
        dsm_warmup=1, dsm_steps=1, probe_images=5, probe_hw=(40, 48), probe_arch="resnet18", probe_size=32,
        probe_epochs=2, probe_splits=1, probe_train_views=1, score_images=5, score_batch=5, workers=0,
        channels_last=False)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_suite_writes_every_figure(runner, tmp_path, monkeypatch):
    home = tmp_path / "user-home"
    monkeypatch.setenv("DSMIX_HOME", str(home))
    threads = torch.get_num_threads()
    result = runner.run_suite("cpu", quick=True, settings=tiny_settings(runner), work=tmp_path / "work",
                              threads=1, log=lambda _m: None)
    assert torch.get_num_threads() == threads  # restored
    assert result["errors"] == {}
    for key in runner.FIGURES:
        assert key in result, key
    rates = result["distortions_cpu"]
    assert sorted(rates) == list(range(1, 26))
    assert all(_positive(r) for r in rates.values())
    assert "distortions_cuda" not in result  # CPU run
    assert 0 < result["dsmix_overhead_fraction"] < 1
    assert _positive(result["probe_cache_speedup"])
    for key in ("qep_gt_images_per_s", "qep_model_images_per_s", "pretrain_dsm_images_per_s", "score_images_per_s"):
        assert _positive(result[key]), key
    assert result["qep_gt_distorted_per_s"] == pytest.approx(result["qep_gt_images_per_s"] / 2)
    # The probe timed both protocols through the stage, with the same epochs and splits.
    probe = result["details"]["probe"]
    assert probe["speedup"] == pytest.approx(probe["fresh"]["stage_seconds"] / probe["cached"]["stage_seconds"])
    assert result["details"]["score"]["images"] == 5
    # The record is JSON and names the machine and the settings.
    record = json.loads(json.dumps(result))
    assert record["device"] == "cpu" and record["settings"]["qep_arch"] == "resnet18"
    assert record["environment"]["torch"] == torch.__version__
    assert set(record["thresholds"]) == {"dsmix_overhead_fraction", "probe_cache_speedup"}
    assert record["thresholds"]["dsmix_overhead_fraction"]["pass"] == (result["dsmix_overhead_fraction"] <= 0.05)
    # The user's DSMIX_HOME is untouched (the timed runs stop at --max-steps, so they record no
    # default at all; any record would go to the work folder).
    assert not home.exists()
    import os

    assert os.environ["DSMIX_HOME"] == str(home)
    table = runner.format_table(result)
    assert "probe_cache_speedup" in table and "gaussian_blur" in table


def test_cli_rejects_unknown_part(runner, capsys):
    with pytest.raises(SystemExit) as exc:
        runner.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown part" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_without_cuda_says_so(runner, capsys):
    assert runner.main(["--device", "cuda", "--only", "dsmix"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_suite_on_cuda(runner, tmp_path):
    s = runner.settings_for(torch.device("cuda"), quick=True)
    assert (s.qep_arch, s.qep_size, s.qep_batch) == ("resnet50", 224, 110)  # the paper's models
    assert (s.dsm_arch, s.dsm_depth, s.dsm_size, s.dsm_batch) == ("vit_base_patch8_224", None, 224, 40)
    result = runner.run_suite("cuda", quick=True, settings=tiny_settings(runner), work=tmp_path / "work",
                              log=lambda _m: None)
    assert result["errors"] == {}
    assert result["device"].startswith("cuda") and result["environment"]["gpu"]
    assert sorted(result["distortions_cuda"]) == list(range(1, 26))
    for key in runner.FIGURES:
        assert key in result, key
