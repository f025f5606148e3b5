"""Hostile weight files (pickle payloads, crafted safetensors headers, bad `dsmix` metadata) and
what a killed checkpoint write leaves behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from badinput import encoded, hostile_weights, photo
from dsmix_cli.cli import app
from dsmix_cli.engine import checkpoint
from dsmix_cli.engine.data import epoch_loader, steps_per_epoch
from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.errors import CheckpointError
from dsmix_cli.fileio import is_temporary, remove_stale_temporaries

runner = CliRunner()
LOADERS = {"load_weights": checkpoint.load_weights, "load_state_dict_file": checkpoint.load_state_dict_file,
           "load_checkpoint": checkpoint.load_checkpoint}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return hostile_weights(tmp_path_factory.mktemp("weights"))


def test_every_loader_refuses_hostile_files_in_one_line(weights):
    """Point 5: no traceback (JSONDecodeError, AttributeError, TypeError), no code run, one line."""
    files, marker = weights
    folder = marker.parent
    for name, word in files.items():
        path = folder / name
        # the loader meant for the file says what is wrong with it; the others refuse it too
        main = checkpoint.load_checkpoint if name.endswith(".pt") else checkpoint.load_weights
        with pytest.raises(CheckpointError) as err:
            main(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        assert word in str(err.value), (name, str(err.value))
        for loader in LOADERS.values():
            try:
                loader(path)
            except CheckpointError as exc:
                assert "\n" not in str(exc) and str(exc).startswith(f"{path}: "), (loader, name)
            else:  # a plain state-dict loader may take a safetensors file whose dsmix record is bad
                assert loader is checkpoint.load_state_dict_file and name.startswith("meta-"), name
    assert not marker.exists()  # no payload ran


def test_pickle_refusal_is_our_line_not_torchs_advice(weights):
    files, marker = weights
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_checkpoint(marker.parent / "torch-payload.pt")
    text = str(err.value)
    assert "posix.system" in text or "os.system" in text or "nt.system" in text
    assert "weights_only" not in text and "trusted source" not in text and "\n" not in text


def _invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    return res


def test_weights_options_refuse_hostile_files(weights, tmp_path, monkeypatch):
    """The options that take a weights file: exit 2, the file named, nothing executed."""
    files, marker = weights
    folder = marker.parent
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    img = tmp_path / "a.png"
    img.write_bytes(encoded(photo(1), "PNG"))
    for name in ("meta-not-json.safetensors", "meta-a-list.safetensors", "meta-string-version.safetensors",
                 "header-too-long.safetensors"):
        res = _invoke("score", img, "--model", folder / name, "--device", "cpu")
        assert res.exit_code == 2 and name in res.stderr, (name, res.output)
        assert len([x for x in res.stderr.splitlines() if x.startswith("error:")]) == 1
    res = _invoke("probe", "--encoder", folder / "torch-payload.pt", "--dataset", "csv", "--csv", tmp_path / "x.csv",
                  "--device", "cpu")
    assert res.exit_code == 2
    res = _invoke("contact-sheet", "--ref", img, "--out", tmp_path / "s.png", "--dncnn",
                  folder / "pickle-payload.pt", "--device", "cpu")
    assert res.exit_code == 2 and "pickle-payload.pt" in res.stderr and "run code" in res.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------ point 9: stale temporaries

def test_stale_temporaries_of_a_run_folder_are_removed_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    stale = [run / ".last.pt.k3j_9x0a.tmp", run / ".encoder.safetensors.abcdefgh.tmp",
             run / ".metrics.jsonl.12345678.tmp"]
    kept = [run / "notes.tmp", run / ".notes.tmp", run / ".last.pt.short.tmp", run / "last.pt",
            run / "sub" / ".x.pt.abcdefgh.tmp"]
    for p in stale + kept:
        p.write_bytes(b"\0" * 4096)
    assert all(is_temporary(p.name) for p in stale) and not any(is_temporary(p.name) for p in kept[:4])
    assert sorted(remove_stale_temporaries(run)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_a_killed_checkpoint_write_leaves_a_temporary_that_the_next_run_removes(tmp_path, monkeypatch):
    """A kill -9 during `torch.save` leaves the atomic write's temporary (`.last.pt.<8 random
    characters>.tmp`, here 10 MB of it); a new run and a --resume in that folder remove it."""
    run = tmp_path / "run"
    run.mkdir()
    orphan = run / ".last.pt.q0w9_e8r.tmp"
    orphan.write_bytes(b"\0" * 10_000_000)

    def train(resume: bool, steps: int):
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = [(torch.randn(2), torch.randn(1)) for _ in range(8)]

        class Data(torch.utils.data.Dataset):
            def __len__(self):
                return 8

            def __getitem__(self, key):
                return data[key[1]]

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        loop = LoopConfig(epochs=1, steps_per_epoch=steps_per_epoch(8, 2), max_steps=steps, seed=0)
        return fit(run_dir=run, kind="toy", config={}, model=model, optimizer=opt, scheduler=sched,
                   batches=lambda e, s: epoch_loader(Data(), batch_size=2, seed=0, epoch=e, skip_batches=s),
                   training_step=lambda m, b, g, st: StepOutput(loss=nn.functional.mse_loss(m(b[0]), b[1])),
                   loop=loop, device=torch.device("cpu"), resume=resume)

    train(False, 2)
    assert not orphan.exists() and [p for p in run.iterdir() if is_temporary(p.name)] == []
    again = run / ".best.pt.aaaabbbb.tmp"
    again.write_bytes(b"\0")
    train(True, 4)
    assert not again.exists()
