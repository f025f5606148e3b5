"""The resume rule (engine.resume): which fields may change, how differences are named, how
`--resume` alone rebuilds the options, and `fit`'s own check against the checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.engine.resume import (RUN_CONTROL, check_resume_config, config_differences, read_run_config,
                                     restore_options)
from dsmix_cli.errors import CheckpointError


def test_every_field_but_run_control_counts():
    saved = {"lr": 0.01, "kd_alpha": 1.0, "types": [1, 2, 3], "workers": 4, "max_steps": 10, "device": "cuda",
             "steps_per_epoch": 50, "method": {"loss": "mse"}}
    new = {"lr": 0.01, "kd_alpha": 0.1, "types": [1, 2], "workers": 0, "max_steps": None, "device": "cpu",
           "steps_per_epoch": 49, "method": {"loss": "mse"}}
    diff = {d.field: (d.saved, d.new) for d in config_differences(saved, new)}
    assert diff == {"kd_alpha": (1.0, 0.1), "types": ([1, 2, 3], [1, 2]), "steps_per_epoch": (50, 49)}
    with pytest.raises(CheckpointError) as err:
        check_resume_config(saved, new, "RUN")
    text = str(err.value)
    assert text.startswith("RUN: ") and "kd_alpha was 1.0, now 0.1" in text and "steps_per_epoch was 50, now 49" in text
    assert "workers" not in text.split(".")[0]
    run_control = {"out", "workers", "log_every", "checkpoint_every", "device", "amp", "max_steps", "resume"}
    assert run_control <= set(RUN_CONTROL)


def test_a_run_stopped_by_a_bad_image_may_continue_with_skip_bad():
    # The stop message of an unreadable image says "pass --skip-bad ... with --resume": allowed.
    assert config_differences({"lr": 0.01, "skip_bad": False}, {"lr": 0.01, "skip_bad": True}) == []


def test_a_field_on_one_side_only_differs_and_keys_restrict_the_comparison():
    diff = config_differences({"lr": 1.0}, {"lr": 1.0, "pristine_share": 0.5})
    assert [str(d) for d in diff] == ["pristine_share was (not recorded), now 0.5"]
    assert config_differences({"lr": 1.0, "total_steps": 9}, {"lr": 1.0}, keys=["lr"]) == []


def test_an_option_newer_than_the_run_may_stay_at_its_default():
    """A run saved by a version without an option behaved as its default: resuming with the
    default is no difference, resuming with another value is (and so is a key only the old run has)."""
    defaults = {"mix_partners": "batch", "lr": 0.01}
    assert config_differences({"lr": 1.0}, {"lr": 1.0, "mix_partners": "batch"}, defaults=defaults) == []
    diff = config_differences({"lr": 1.0}, {"lr": 1.0, "mix_partners": "same"}, defaults=defaults)
    assert [str(d) for d in diff] == ["mix_partners was (not recorded), now 'same'"]
    assert [d.field for d in config_differences({"lr": 1.0, "old": 1}, {"lr": 1.0}, defaults=defaults)] == ["old"]


def test_field_defaults_of_a_dataclass():
    from dsmix_cli.engine.resume import field_defaults
    from dsmix_cli.stages.qep import QEPConfig

    d = field_defaults(QEPConfig)
    assert d["mix_partners"] == "batch" and d["mix"] == 3 and d["types"] == list(range(1, 26))
    assert isinstance(d["qpt"], dict) and d["qpt"]["temperature"] == 0.2 and "out" not in d


def test_paths_compare_by_the_place_they_name(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert config_differences({"data": str(tmp_path / "data")}, {"data": "data"}) == []
    assert config_differences({"data": str(tmp_path / "data")}, {"data": str(tmp_path / "link")}) == []
    assert len(config_differences({"data": str(tmp_path / "data")}, {"data": str(tmp_path / "other")})) == 1
    assert len(config_differences({"arch": "resnet50"}, {"arch": "resnet18"})) == 1


@dataclass
class _Opts:
    out: Path
    data: Path | None = None
    lr: float = 0.1
    epochs: int = 10
    max_steps: int | None = None
    resume: bool = False


def test_restore_takes_what_was_not_typed_from_the_saved_config():
    saved = {"out": "/elsewhere", "data": "/d", "lr": 0.5, "epochs": 3, "max_steps": 7, "resume": False}
    got = restore_options(_Opts(out=Path("/run"), lr=0.2, resume=True), saved, given={"lr"})
    assert got == _Opts(out=Path("/run"), data=Path("/d"), lr=0.2, epochs=3, max_steps=None, resume=True)
    assert isinstance(got.data, Path)


def test_read_run_config_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"lr": 1}))
    assert read_run_config(tmp_path) == {"lr": 1}


def _fit(run_dir: Path, config: dict, max_steps: int, resume: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.ones(4, 2)

    def step(m, batch, gen, s):
        return StepOutput(loss=(m(batch) ** 2).mean(), samples=4)

    return fit(run_dir=run_dir, kind="toy", config=config, model=model, optimizer=opt, scheduler=sched,
               batches=lambda epoch, skip: [x] * (3 - skip), training_step=step,
               loop=LoopConfig(epochs=2, steps_per_epoch=3, max_steps=max_steps), device=torch.device("cpu"),
               resume=resume)


def test_fit_checks_the_checkpoint_config_whatever_the_stage_did(tmp_path):
    assert not _fit(tmp_path, {"lr": 0.1, "workers": 2}, max_steps=2, resume=False).finished
    with pytest.raises(CheckpointError, match="lr was 0.1, now 0.2"):
        _fit(tmp_path, {"lr": 0.2, "workers": 2}, max_steps=4, resume=True)
    res = _fit(tmp_path, {"lr": 0.1, "workers": 0}, max_steps=None, resume=True)  # run control may change
    assert res.finished and res.step == 6
