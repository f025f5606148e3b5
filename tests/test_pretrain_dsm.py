"""`dsmix pretrain-dsm` end to end on a tiny ViT: exact resume, outputs, defaults, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dsm_fixtures import write_synth_folder
from dsmix_cli import defaults
from dsmix_cli.cli import app
from dsmix_cli.dsm.network import load_dsm_model
from dsmix_cli.engine.checkpoint import load_checkpoint
from dsmix_cli.errors import DsmixError

TINY = ["--arch", "vit_small_patch8_224", "--depth", "1", "--image-size", "32", "--batch-size", "4",
        "--no-pretrained", "--device", "cpu", "--seed", "3", "--workers", "0"]


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    return write_synth_folder(tmp_path / "D", n_refs=4)  # 32 pairs: 24 train (6 steps/epoch), 8 held out


def _run(*args: str):
    res = CliRunner().invoke(app, ["pretrain-dsm", *args])
    return res


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_resume_gives_the_same_step_10_loss(data, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    res = _run("--data", str(data), "--out", str(a), *TINY, "--max-steps", "10", "--log-every", "1")
    assert res.exit_code == 0, res.output
    assert "stopped at --max-steps (10/60)" in res.output
    res = _run("--data", str(data), "--out", str(b), *TINY, "--max-steps", "6", "--log-every", "1")
    assert res.exit_code == 0, res.output
    res = _run("--data", str(data), "--out", str(b), *TINY, "--resume", "--max-steps", "10", "--log-every", "1")
    assert res.exit_code == 0, res.output
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 11))
    assert math.isfinite(la[10]) and la == lb  # exactly the same, step by step
    wa, wb = load_dsm_model(a), load_dsm_model(b)
    for (k, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), k

    # the schedule comes from --epochs (10 x 6 steps), not from --max-steps
    lr10 = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if '"step": 10,' in x][0]["lr"]
    assert lr10 == pytest.approx(5e-3 * 0.5 * (1 + math.cos(math.pi * 9 / 60)))
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["lr"] == 5e-3 and cfg["weight_decay"] == 1e-4 and cfg["total_steps"] == 60
    assert cfg["train_pairs"] == 24 and cfg["val_pairs"] == 8 and "cls_token" in cfg["method"]
    assert load_checkpoint(a / "last.pt", kind="pretrain-dsm")["config"]["arch"] == "vit_small_patch8_224"
    results = json.loads((a / "results.json").read_text())
    assert results["step"] == 10 and results["finished"] is False and math.isfinite(results["best_val_mse"])
    assert any("val_mse" in line for line in (a / "metrics.jsonl").read_text().splitlines())
    with Image.open(a / "dsm_preview.png") as im:
        assert im.width >= 4 * 32 and im.height > 4 * 32
    # neither run finished its schedule: neither is the DSM model behind qep's label weights
    assert not (tmp_path / "home" / "defaults.json").exists()
    assert f"--dsm-model {b}" in res.output.replace("\n", "")


@pytest.mark.slow
def test_only_a_finished_run_becomes_the_default_and_resume_alone_finishes_it(data, tmp_path):
    run = tmp_path / "R"
    res = _run("--data", str(data), "--out", str(run), *TINY, "--epochs", "2", "--max-steps", "5")
    assert res.exit_code == 0, res.output
    assert "not recorded as the default DSM model" in res.output
    assert f"--dsm-model {run}" in res.output.replace("\n", "")
    with pytest.raises(DsmixError, match="none recorded yet"):
        defaults.resolve_default("dsm_model", None)
    res = _run("--resume", "--out", str(run))  # every other option from RUN/config.json
    assert res.exit_code == 0, res.output
    assert "finished the schedule" in res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["arch"] == "vit_small_patch8_224" and cfg["seed"] == 3 and cfg["depth"] == 1
    assert cfg["max_steps"] is None and cfg["total_steps"] == 12  # 2 epochs x 6 steps: the saved schedule
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] is True and results["step"] == 12 and max(_losses(run)) == 12
    assert defaults.resolve_default("dsm_model", None).value == str(run.resolve())


def test_refuses_to_overwrite_or_change_a_run(data, tmp_path):
    run = tmp_path / "R"
    assert _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "1").exit_code == 0
    res = _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "2")
    assert res.exit_code == 2 and "--resume" in res.output
    config_before = (run / "config.json").read_text()
    res = _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "2", "--resume", "--lr", "1e-3",
               "--epochs", "3", "--no-flip")
    assert res.exit_code == 2, res.output
    text = res.output.replace("\n", " ")
    assert "lr was 0.005, now 0.001" in text and "epochs was 10, now 3" in text and "flip was True, now False" in text
    assert (run / "config.json").read_text() == config_before  # nothing rewritten
    # run-control options may change; the same --data reached through a link is the same folder
    (tmp_path / "link").symlink_to(data)
    res = _run("--data", str(tmp_path / "link"), "--out", str(run), *TINY, "--max-steps", "2", "--resume",
               "--workers", "1", "--log-every", "2")
    assert res.exit_code == 0, res.output
    # a run saved before an option existed (no "flip" key) resumes with that option at its default
    config = json.loads((run / "config.json").read_text())
    del config["flip"]
    (run / "config.json").write_text(json.dumps(config))
    res = _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "3", "--resume", "--no-flip")
    assert res.exit_code == 2 and "flip was (not recorded), now False" in res.output.replace("\n", " ")
    res = _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "3", "--resume")
    assert res.exit_code == 0, res.output
    res = _run("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "X"), *TINY)
    assert res.exit_code == 2 and "dataset folder not found" in res.output
    res = _run("--data", str(data), "--out", str(tmp_path / "Y"), *TINY, "--batch-size", "64")
    assert res.exit_code == 2 and "fewer than one batch" in res.output


def test_full_schedule_from_stored_maps_into_the_default_folder(data, tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    assert CliRunner().invoke(app, ["make-gt-dsm", "--data", str(data), "--out", str(maps),
                                    "--workers", "0"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    res = _run("--data", str(data), *TINY, "--epochs", "1", "--gt-maps", str(maps), "--decoder", "mlp")
    assert res.exit_code == 0, res.output
    assert "finished the schedule" in res.output
    (run,) = (tmp_path / "runs" / "pretrain-dsm").iterdir()
    assert (run / "best.pt").is_file() and (run / "dsm_preview.png").is_file()
    assert json.loads((run / "results.json").read_text())["finished"] is True
    assert load_dsm_model(run).decoder_name == "mlp"
    assert defaults.resolve_default("dsm_model", None).value == str(run.resolve())


def test_compile_flag_compiles_the_dsm_network_in_place(data, tmp_path, monkeypatch):
    """--compile calls nn.Module.compile() on the DSM network (in place: exported keys stay plain);
    the compilation itself is recorded, not run (minutes on CPU)."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    run = tmp_path / "C"
    res = _run("--data", str(data), "--out", str(run), *TINY, "--max-steps", "1", "--compile")
    assert res.exit_code == 0, res.output
    assert compiled == ["DSMNet"]
    assert json.loads((run / "config.json").read_text())["compile"] is True
    assert load_dsm_model(run) is not None  # the exported weights load into a plain module
