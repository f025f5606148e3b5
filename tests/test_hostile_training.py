"""The training-side commands over bad input: make-gt-dsm, pretrain-dsm and qep meeting an
undecodable image (with and without loader workers, with and without --skip-bad), and their
outputs on a full disk. Helpers and the corpus: test_hostile_cli.py, badinput.py."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from badinput import encoded, photo
from dsm_fixtures import write_synth_folder
from dsmix_cli.imageio import MAX_PIXELS_ENV
from test_hostile_cli import _full_disk_after, cli, error_lines, leftovers


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL", MAX_PIXELS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------------- make-gt-dsm

def _break_pairs(data: Path) -> dict[str, str]:
    """Damage a synthesize-style folder: a truncated distorted image, a pair of different sizes,
    a 1x1 pair. Returns distorted file name -> a word its message must hold."""
    dist = sorted((data / "dist_imgs").glob("*.png"))
    raw = dist[0].read_bytes()
    dist[0].write_bytes(raw[: len(raw) // 2])
    Image.fromarray(photo(60, h=30, w=30)).save(dist[1])
    rows = list(csv.reader((data / "dist_imgs.csv").open()))
    Image.fromarray(photo(61, h=1, w=1)).save(data / "dist_imgs" / "one_01_01.png")
    Image.fromarray(photo(62, h=1, w=1)).save(data / "ref_imgs" / "one.png")
    rows.append(["dist_imgs/one_01_01.png", "ref_imgs/one.png", "1", "1"])
    with (data / "dist_imgs.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {dist[0].name: "truncated", dist[1].name: "but its reference", "one_01_01.png": "smaller than the pool"}


def test_make_gt_dsm_maps_the_good_pairs_and_names_the_others(tmp_path):
    """Points 4, 8 and 10: with loader workers, each bad pair is one line naming its file; the
    other maps are written; exit 1; a killed write's temporary is removed."""
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 2), levels=(1,), h=32, w=40)
    broken = _break_pairs(data)
    out = tmp_path / "maps"
    out.mkdir()
    stale = out / ".ref00_01_01.npy.ab12cd34.tmp"
    stale.write_bytes(b"\0" * 1000)
    res = cli("make-gt-dsm", "--data", data, "--out", out, "--workers", "2", "--device", "cpu")
    assert res.exit_code == 1, res.output
    for name, words in broken.items():
        line = [x for x in error_lines(res) if name in x]
        assert len(line) == 1 and words in line[0], (name, res.stderr)
    maps = sorted(p.name for p in out.glob("*.npy"))
    assert len(maps) == 4 + 1 - len(broken) and not stale.exists() and leftovers(tmp_path) == []
    assert "3 pair(s) could not be used" in res.stderr


# ---------------------------------------------------------------------------------- training

DSM_TINY = ["--arch", "vit_small_patch8_224", "--depth", "1", "--image-size", "32", "--batch-size", "4",
            "--no-pretrained", "--device", "cpu", "--seed", "3", "--log-every", "1", "--val-fraction", "0"]


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.fixture
def broken_pairs(tmp_path) -> tuple[Path, Path]:
    """A pairs folder (16 pairs, 4 steps of 4 per epoch) with one truncated distorted image."""
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 2, 3, 4), levels=(1, 2), h=48, w=48)
    bad = sorted((data / "dist_imgs").glob("*.png"))[5]
    _truncate(bad)
    return data, bad


def test_pretrain_dsm_stops_on_a_bad_image_in_one_line(broken_pairs, tmp_path):
    """Points 4 and 8: with 2 loader workers, an undecodable image met during training is one line
    naming it (no worker traceback) and exit 1, not 2 (that is for problems found before work)."""
    data, bad = broken_pairs
    res = cli("pretrain-dsm", "--data", data, "--out", tmp_path / "run", *DSM_TINY, "--workers", "2",
              "--max-steps", "4")
    assert res.exit_code == 1, res.output
    assert len(error_lines(res)) == 1 and str(bad) in res.stderr and "--skip-bad" in res.stderr
    assert "Original Traceback" not in res.stderr and "worker process" not in res.stderr


@pytest.mark.slow
def test_pretrain_dsm_skip_bad_is_deterministic_across_resume_and_workers(broken_pairs, tmp_path):
    """Point 8: --skip-bad replaces the bad sample by the same readable one every time, so a run
    resumed (here with another number of workers) repeats the uninterrupted one exactly."""
    data, bad = broken_pairs
    a, b = tmp_path / "A", tmp_path / "B"
    res = cli("pretrain-dsm", "--data", data, "--out", a, *DSM_TINY, "--workers", "0", "--max-steps", "8",
              "--skip-bad")
    assert res.exit_code == 1 and f"skipped: {bad}" in res.stderr and "1 unreadable input(s)" in res.stderr
    assert json.loads((a / "results.json").read_text())["skipped_inputs"][0].startswith(str(bad))
    cli("pretrain-dsm", "--data", data, "--out", b, *DSM_TINY, "--workers", "0", "--max-steps", "3", "--skip-bad")
    res = cli("pretrain-dsm", "--data", data, "--out", b, *DSM_TINY, "--workers", "2", "--max-steps", "8",
              "--skip-bad", "--resume")
    assert res.exit_code == 1, res.output
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == list(range(1, 9)) and la == lb


@pytest.mark.slow
def test_qep_on_the_fly_with_a_bad_reference(tmp_path):
    """Point 8 for `qep --on-the-fly`: stop in one line (exit 1), or --skip-bad and a count (exit 1)."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(4):
        (refs / f"r{i}.png").write_bytes(encoded(photo(70 + i, h=40, w=40), "PNG"))
    _truncate(refs / "r2.png")
    os.symlink(refs, refs / "loop")  # and a link loop, which the listing skips and names
    common = ["qep", "--refs", refs, "--on-the-fly", "--dsm-source", "gt", "--arch", "resnet18", "--no-pretrained",
              "--image-size", "32", "--batch-size", "4", "--max-steps", "1", "--device", "cpu", "--kd-alpha", "0",
              "--kd-beta", "0", "--types", "1,2", "--workers", "0"]
    res = cli(*common, "--out", tmp_path / "A")
    assert res.exit_code == 1 and len(error_lines(res)) == 1 and "r2.png" in res.stderr, res.output
    assert "loop: skipped: link loop" in res.output
    res = cli(*common, "--out", tmp_path / "B", "--skip-bad")
    assert res.exit_code == 1 and f"skipped: {refs / 'r2.png'}" in res.stderr, res.output
    assert (tmp_path / "B" / "encoder.safetensors").is_file()


def test_training_outputs_checked_first_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """Point 2 for a training --out: a file in the way is exit 2 before the work; a disk that
    fills during the run is one line naming the checkpoint, exit 1, with no partial file."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        (refs / f"r{i}.png").write_bytes(encoded(photo(80 + i, h=40, w=40), "PNG"))
    common = ["qep", "--refs", refs, "--on-the-fly", "--dsm-source", "gt", "--arch", "resnet18", "--no-pretrained",
              "--image-size", "32", "--batch-size", "2", "--max-steps", "1", "--device", "cpu", "--kd-alpha", "0",
              "--kd-beta", "0", "--types", "1", "--workers", "0", "--val-fraction", "0"]
    (tmp_path / "blocker").write_text("x")
    res = cli(*common, "--out", tmp_path / "blocker" / "run")
    assert res.exit_code == 2 and "is a file, not a folder" in res.stderr
    _full_disk_after(monkeypatch, 1)  # config.json is written, the first checkpoint is not
    res = cli(*common, "--out", tmp_path / "run")
    assert res.exit_code == 1, res.output
    assert error_lines(res) == [f"error: {tmp_path / 'run' / 'best.pt'}: cannot write (no space left on the "
                                "device); nothing was written under this name"]  # the epoch end's best first
    assert not (tmp_path / "run" / "best.pt").exists() and leftovers(tmp_path) == []
