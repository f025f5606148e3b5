"""Every command that reads images, run over the bad-input corpus (tests/badinput.py).

What must hold, command by command: the exit code of the contract (0 all fine, 1 finished but
some inputs failed, 2 bad input found before the work), no Python traceback, every bad file
named on stderr, the good inputs processed, and no partial file under a final name. The
numbered comments refer to the points of the reliability review these tests pin down.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from badinput import NON_UTF8_NAME, bad_label_files, encoded, image_corpus, photo
from dsmix_cli.cli import app
from dsmix_cli.fileio import is_temporary
from dsmix_cli.imageio import MAX_PIXELS_ENV
from dsmix_cli.paths import path_text, text_path
from test_probe import make_toy_set, toy_config

runner = CliRunner()


def cli(*args):
    """Run a command in this process; it must end with an exit code, never a traceback."""
    res = runner.invoke(app, [str(a) if isinstance(a, Path) else a for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and "Caught " not in res.output, res.output
    return res


def error_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def leftovers(folder: Path) -> list[Path]:
    """Temporaries of atomic writes left anywhere under `folder` (there must be none)."""
    return [p for p in folder.rglob("*") if is_temporary(p.name)]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL", MAX_PIXELS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny probe run (random ResNet-18, 32-pixel crops): the model `score` uses."""
    from dsmix_cli.stages.probe import run_probe

    tmp = tmp_path_factory.mktemp("model")
    old = os.environ.get("DSMIX_HOME")
    os.environ["DSMIX_HOME"] = str(tmp / "home")
    try:
        csv_file = make_toy_set(tmp / "data", refs=3, levels=3)
        run_probe(toy_config(tmp, csv_file, splits=1, epochs=3, train_views=1))
    finally:
        if old is None:
            os.environ.pop("DSMIX_HOME", None)
        else:
            os.environ["DSMIX_HOME"] = old
    return tmp / "run"


# ---------------------------------------------------------------------------------- score

def test_score_over_the_corpus(tmp_path, model):
    """Points 1 (names that are not UTF-8 round-trip), 3 (no link followed out or in a loop),
    7 (the bomb refused), and the counts of stdout, stderr, CSV and JSON agree."""
    c = image_corpus(tmp_path)
    res = cli("score", c.root, "--model", model, "--csv", "S.csv", "--json", "S.json")
    assert res.exit_code == 1
    walked_bad = [p for p in c.bad if p.name not in ("folder.png", "fifo.png")]  # a walk enters the
    for path in walked_bad:                                                    # folder, skips the FIFO
        assert f"cannot score {path_text(path)}: " in res.stderr, path
    for link in c.skipped_links + [c.root / "fifo.png"]:
        assert f"{path_text(link)}: skipped" in res.stderr, link
    raw = (tmp_path / "S.csv").read_bytes()
    rows = list(csv.reader(raw.decode("utf-8").splitlines()))  # valid UTF-8 throughout
    assert rows[0] == ["path", "score", "note"]
    got = [text_path(r[0]) for r in rows[1:]]
    assert sorted(got, key=str) == sorted(c.good, key=str)  # every good image once, nothing else
    assert (c.root / NON_UTF8_NAME) in got  # the name comes back exactly
    assert not any("secret" in str(p) for p in got)
    text = (tmp_path / "S.json").read_text(encoding="utf-8")
    assert not re.search(r"\\ud[89a-f]", text)  # no lone surrogates: strict JSON
    record = json.loads(text)
    assert record["scored"] == len(c.good) and record["unreadable"] == len(walked_bad)
    assert len([line for line in error_lines(res) if "cannot score" in line]) == record["unreadable"]
    assert f"{record['unreadable']} image(s) could not be read; {len(c.good)} image(s) scored" in res.stderr
    assert f"wrote S.csv ({len(c.good)} rows)" in res.stdout and "score" in res.stdout  # and the table
    assert {text_path(i["path"]) for i in record["images"]} == set(c.good) | set(walked_bad)
    assert leftovers(tmp_path) == []


def test_score_globs_visit_each_file_once(tmp_path, model):
    c = image_corpus(tmp_path)
    res = cli("score", f"{c.root}/**/*.png", "--model", model, "--csv", "-")
    assert res.exit_code == 1
    rows = [r for r in csv.reader(res.stdout.splitlines())][1:]
    names = [text_path(r[0]) for r in rows]
    assert len(names) == len(set(names))  # the self-loop and sub/loop add nothing
    assert sorted(names, key=str) == sorted((p for p in c.good if p.suffix == ".png"), key=str)
    assert f"{path_text(c.root / 'elsewhere')}: skipped: link to a folder out of" in res.stderr


def test_score_checks_its_outputs_before_scoring(tmp_path, model, monkeypatch):
    """Point 2: a --csv/--json that cannot be written is exit 2 before any work."""
    import dsmix_cli.evaluation.score as score_mod

    monkeypatch.setattr(score_mod, "score_images", lambda *a, **k: pytest.fail("scored before the check"))
    img = tmp_path / "a.png"
    img.write_bytes(encoded(photo(1), "PNG"))
    (tmp_path / "a_file").write_text("x")
    for option, target, words in (("--csv", tmp_path, "names a folder"),
                                  ("--csv", tmp_path / "a_file" / "s.csv", "is a file, not a folder"),
                                  ("--json", tmp_path / "a_file" / "x" / "s.json", "is a file, not a folder")):
        res = cli("score", img, "--model", model, option, target)
        assert res.exit_code == 2 and words in res.stderr and str(target) in res.stderr
        assert len(error_lines(res)) == 1


def _full_disk_after(monkeypatch, n_ok: int) -> list[int]:
    """Make every write after the first `n_ok` fail as a full disk does (at the fsync)."""
    calls = [0]
    real = os.fsync

    def fsync(fd):
        calls[0] += 1
        if calls[0] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_score_on_a_full_disk_keeps_the_old_file_and_shows_the_scores(tmp_path, model, monkeypatch):
    """Point 2: an OSError while writing is one line naming the file, exit 1; the previous
    file is untouched and the scores are on the screen."""
    img = Path("a.png")  # relative: a short name the table shows whole
    img.write_bytes(encoded(photo(1), "PNG"))
    (tmp_path / "S.csv").write_text("old\n")
    _full_disk_after(monkeypatch, 0)
    res = cli("score", img, "--model", model, "--csv", "S.csv")
    assert res.exit_code == 1
    assert error_lines(res) == ["error: S.csv: cannot write (no space left on the device); its previous "
                                "content is unchanged"]
    assert (tmp_path / "S.csv").read_text() == "old\n" and leftovers(tmp_path) == []
    assert "a.png" in res.stdout  # the table came first


def test_out_of_range_scores_are_marked(tmp_path, model, monkeypatch):
    """Scores below 0 or above 1 on the model's scale are kept and flagged, with why."""
    from dsmix_cli.evaluation import bundle

    values = iter([-0.25, 0.5, 1.25])
    monkeypatch.setattr(bundle.ProbedModel, "score_features",
                        lambda self, f: torch.tensor([next(values) for _ in range(len(f))]))
    for i in range(3):
        (tmp_path / f"i{i}.png").write_bytes(encoded(photo(i), "PNG"))
    res = cli("score", *(f"i{i}.png" for i in range(3)), "--model", model, "--csv", "S.csv",
              "--json", "S.json", "--batch-size", "1")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "S.csv").open(encoding="utf-8")))
    assert [r["note"].split(" (")[0] for r in rows] == ["below the training labels' range", "",
                                                        "above the training labels' range"]
    assert [float(r["score"]) for r in rows] == [-0.25, 0.5, 1.25]  # kept, not clipped
    record = json.loads((tmp_path / "S.json").read_text())
    assert record["out_of_range"] == 2 and [i["in_range"] for i in record["images"]] == [False, True, False]
    assert "2 of 3 scores lie outside the training labels' range" in res.stderr
    assert "note" in res.stdout and "below the training labels' range" in res.stdout


@pytest.mark.slow
def test_score_has_no_warning_or_traceback_in_a_real_process(tmp_path, model):
    """The corpus through the installed entry point, 2 loader workers: stderr holds our lines only."""
    c = image_corpus(tmp_path, with_links=False)
    env = {**os.environ, "DSMIX_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "dsmix_cli", "score", str(c.root), "--model", str(model),
                           "--workers", "2", "--csv", "-"], capture_output=True, env=env, timeout=300)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith(("error:", "warning:", "model:")) for line in lines), err
    assert len([line for line in lines if line.startswith("error: cannot score")]) == len(c.bad) - 2
    assert "fifo.png: skipped: not a regular file" in err
    assert len(proc.stdout.decode("utf-8").splitlines()) == 1 + len(c.good)


# ---------------------------------------------------------------------------------- synthesize

def _refs_with_bad(folder: Path) -> tuple[list[Path], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(3):
        (folder / f"r{i}.png").write_bytes(encoded(photo(40 + i), "PNG"))
        good.append(folder / f"r{i}.png")
    png = encoded(photo(50), "PNG")
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    return good, [folder / "cut.png", folder / "zero.jpg"]


SYNTH = ["--types", "1", "--levels", "1,2", "--workers", "1", "--device", "cpu", "--batch-size", "2"]


def test_synthesize_names_bad_references_and_survives_a_full_disk(tmp_path, monkeypatch):
    """Point 2 and the corpus: unreadable references are named (exit 1), a full disk is one line
    (exit 1) with only whole images left, and running the command again completes the folder."""
    good, bad = _refs_with_bad(tmp_path / "refs")
    (tmp_path / "blocker").write_text("x")
    res = cli("synthesize", "--refs", tmp_path / "refs", "--out", tmp_path / "blocker" / "D", *SYNTH)
    assert res.exit_code == 2 and "is a file, not a folder" in res.stderr  # before any work

    out = tmp_path / "D"
    calls = _full_disk_after(monkeypatch, 3)
    res = cli("synthesize", "--refs", tmp_path / "refs", "--out", out, *SYNTH)
    assert res.exit_code == 1 and calls[0] > 3
    assert "cannot write (no space left on the device)" in res.stderr and len(error_lines(res)) == 1
    written = sorted((out / "dist_imgs").glob("*.png"))
    assert 0 < len(written) <= 3 and leftovers(out) == []
    for p in written:
        Image.open(p).load()  # every file under a final name is whole
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    res = cli("synthesize", "--refs", tmp_path / "refs", "--out", out, *SYNTH)
    assert res.exit_code == 1  # the unreadable references remain
    for p in bad:
        assert p.name in res.stderr and "its images were not written" in res.stderr
    assert len(list((out / "dist_imgs").glob("*.png"))) == 2 * len(good)
    rows = list(csv.DictReader((out / "dist_imgs.csv").open()))
    assert len(rows) == 2 * len(good)


def test_contact_sheet_checks_its_output_before_rendering(tmp_path, monkeypatch):
    """Point 10: a bad --out is refused at once, not after the rendering."""
    import dsmix_cli.contact_sheet as sheet

    (tmp_path / "notes.png").write_text("not an image")
    for bad_ref in (tmp_path / "none.png", tmp_path / "notes.png"):  # read first, before any rendering
        res = cli("contact-sheet", "--ref", bad_ref, "--out", tmp_path / "s.png", "--device", "cpu")
        assert res.exit_code == 2 and str(bad_ref) in res.stderr and len(error_lines(res)) == 1
    monkeypatch.setattr(sheet, "render_contact_sheet", lambda *a, **k: pytest.fail("rendered first"))
    ref = tmp_path / "r.png"
    ref.write_bytes(encoded(photo(1), "PNG"))
    for out, words in ((tmp_path / "sheet.txt", "not an image format"), (tmp_path, "names a folder")):
        res = cli("contact-sheet", "--ref", ref, "--out", out, "--device", "cpu")
        assert res.exit_code == 2 and words in res.stderr and len(error_lines(res)) == 1


# ---------------------------------------------------------------------------------- label files

def test_bad_label_files_are_refused_in_one_line(tmp_path, model):
    """The label-reading commands refuse a bad label file before any work: exit 2, the file named."""
    (tmp_path / "a.png").write_bytes(encoded(photo(1), "PNG"))
    files = bad_label_files(tmp_path, "a.png")
    for name, word in files.items():
        res = cli("data", "check", "csv", "--csv", tmp_path / name, "--no-decode")
        named = "not-there.png" if name == "missing-image.csv" else str(tmp_path / name)  # the missing image
        assert res.exit_code == 2 and named in res.stderr and word in res.stderr, (name, res.stderr)
        assert len(error_lines(res)) == 1
    for name in ("text-score.csv", "huge-field.csv", "latin1.csv"):
        res = cli("evaluate", "--dataset", "csv", "--csv", tmp_path / name, "--model", model, "--device", "cpu")
        assert res.exit_code == 2 and name in res.stderr
    # point 10: a label file that does not exist is named, not its folder
    res = cli("data", "check", "csv", "--csv", "/nonexistent/x.csv")
    assert res.exit_code == 2 and "/nonexistent/x.csv: label file not found" in res.stderr


def _labels_for(c, folder: Path) -> Path:
    names = [p for p in c.all_images() if p.name != NON_UTF8_NAME]  # the CSV itself is UTF-8 text
    rows = ["name,score"] + [f"{p.relative_to(folder)},{1 + i % 5}" for i, p in enumerate(names)]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_data_check_and_evaluate_over_the_corpus(tmp_path, model):
    """Every bad image named, the good ones counted and used, exit 1."""
    c = image_corpus(tmp_path, with_links=False)
    labels = _labels_for(c, c.root)
    good = [p for p in c.good if p.name != NON_UTF8_NAME]
    res = cli("data", "check", "csv", "--csv", labels, "--json", "C.json", "--workers", "2")
    assert res.exit_code == 1, res.output
    for path in c.bad:
        assert f"unreadable: {path.relative_to(c.root)}: " in res.stderr, path
    record = json.loads((tmp_path / "C.json").read_text())
    assert record["images"] == len(good) and record["unreadable"] == len(c.bad)
    res = cli("evaluate", "--dataset", "csv", "--csv", labels, "--model", model, "--device", "cpu",
              "--json", "E.json")
    assert res.exit_code == 1, res.output
    for path in c.bad:
        assert f"cannot score {path}: " in res.stderr, path
    assert json.loads((tmp_path / "E.json").read_text())["n"] == len(good)


def test_probe_over_the_corpus_has_no_traceback(tmp_path):
    c = image_corpus(tmp_path, with_links=False)
    labels = _labels_for(c, c.root)
    res = cli("probe", "--encoder", "random:resnet18", "--dataset", "csv", "--csv", labels, "--out", "P",
              "--splits", "1", "--epochs", "1", "--image-size", "32", "--device", "cpu", "--train-views", "1")
    assert res.exit_code == 2 and "cannot be read" in res.stderr and "--skip-missing" in res.stderr
