"""`dsmix synthesize` and `dsmix contact-sheet` through the CLI, and the engine's planning."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.synthesize import SynthesizeConfig, plan_jobs, read_kadis_csv, synthesize

runner = CliRunner()
KADIS_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kadis700k" / "kadis700k_ref_imgs.csv"


def make_ref(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    low = rng.random((4, 5, 3))
    img = np.kron(low, np.ones((h // 4 + 1, w // 5 + 1, 1)))[:h, :w]
    img = np.clip(img + 0.1 * rng.standard_normal((h, w, 3)), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))


def test_kadid_mode_writes_125_images_per_reference(tmp_path):
    refs = tmp_path / "refs"
    make_ref(refs / "a.png", 32, 48)
    out = tmp_path / "D"
    res = runner.invoke(app, ["synthesize", "--refs", str(refs), "--out", str(out), "--types", "1-25",
                              "--levels", "1-5", "--format", "png", "--device", "cpu", "--workers", "2"])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (out / "dist_imgs").iterdir())
    assert len(files) == 125 and files[0] == "a_01_01.png" and files[-1] == "a_25_05.png"
    assert all(Image.open(out / "dist_imgs" / f).size == (48, 32) for f in files)
    table = rows(out / "dist_imgs.csv")
    assert list(table[0]) == ["dist_img", "ref_img", "type", "level"] and len(table) == 125
    assert table[0]["dist_img"] == "dist_imgs/a_01_01.png"
    assert Path(table[0]["ref_img"]) == (refs / "a.png").resolve()  # outside D: absolute
    assert {(int(r["type"]), int(r["level"])) for r in table} == {(t, lv) for t in range(1, 26) for lv in range(1, 6)}


def test_resume_skips_finished_files_and_batching_does_not_change_outputs(tmp_path):
    out = tmp_path / "D"
    make_ref(out / "ref_imgs" / "a.png", 32, 40, seed=1)
    make_ref(out / "ref_imgs" / "b.png", 32, 40, seed=2)
    cfg = SynthesizeConfig(refs=out / "ref_imgs", out=out, types=[3, 11, 20, 23], levels=[1, 5],
                           device="cpu", workers=1, batch_size=16)
    first = synthesize(cfg)
    assert first.written == 16 and not first.failed
    table = rows(out / "dist_imgs.csv")
    assert table[0]["ref_img"] == "ref_imgs/a.png"  # inside D: relative to D
    before = {p.name: p.read_bytes() for p in (out / "dist_imgs").iterdir()}
    (out / "dist_imgs" / "b_11_05.png").unlink()
    (out / "dist_imgs" / "a_20_01.png").unlink()
    cfg.batch_size = 1
    again = synthesize(cfg)
    assert again.written == 2 and again.skipped_existing == 14
    after = {p.name: p.read_bytes() for p in (out / "dist_imgs").iterdir()}
    assert after == before  # per-job generators: same images whatever the batch


def test_bad_reference_is_reported_and_the_others_written(tmp_path):
    refs = tmp_path / "refs"
    make_ref(refs / "good.png", 24, 24)
    (refs / "broken.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "D"
    res = runner.invoke(app, ["synthesize", "--refs", str(refs), "--out", str(out), "--types", "1,18",
                              "--levels", "1-5", "--device", "cpu"])
    assert res.exit_code == 1
    assert "broken.png" in res.output
    assert len(list((out / "dist_imgs").glob("good_*.png"))) == 10
    assert not list((out / "dist_imgs").glob("broken_*"))
    assert len(rows(out / "dist_imgs.csv")) == 10


def test_bad_usage_exits_2(tmp_path):
    res = runner.invoke(app, ["synthesize", "--refs", str(tmp_path / "nope"), "--out", str(tmp_path / "D")])
    assert res.exit_code == 2 and "nope" in res.output
    make_ref(tmp_path / "refs" / "a.png", 16, 16)
    res = runner.invoke(app, ["synthesize", "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "D"),
                              "--types", "0-3"])
    assert res.exit_code == 2 and "--types" in res.output
    res = runner.invoke(app, ["synthesize", "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "D"),
                              "--format", "tiff"])
    assert res.exit_code == 2


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(["ref_im,dist_type_1,dist_type_2"] + lines) + "\n")
    return path


def test_csv_mode_type_8_decision_and_missing_references(tmp_path):
    refs = tmp_path / "refs"
    make_ref(refs / "x.png", 20, 28)
    make_ref(refs / "y.png", 20, 28, seed=3)
    table = write_csv(tmp_path / "k.csv", ["x.png,7,8", "y.png,14,", "z.png,2,"])
    assert read_kadis_csv(table) == [("x.png", 8), ("y.png", 14), ("z.png", 2)]
    assert read_kadis_csv(table, official_type_8=True)[0] == ("x.png", 7)
    out = tmp_path / "D"
    base = ["synthesize", "--refs", str(refs), "--out", str(out), "--csv", str(table), "--device", "cpu"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "z.png" in res.output and "--skip-missing" in res.output
    res = runner.invoke(app, base + ["--skip-missing", "--format", "bmp"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (out / "dist_imgs").iterdir())
    assert names == [f"x_08_0{lv}.bmp" for lv in range(1, 6)] + [f"y_14_0{lv}.bmp" for lv in range(1, 6)]
    res = runner.invoke(app, base + ["--skip-missing", "--official-type-8", "--levels", "1"])
    assert res.exit_code == 0 and (out / "dist_imgs" / "x_07_01.png").is_file()


def test_malformed_csv_exits_2_naming_it(tmp_path):
    make_ref(tmp_path / "refs" / "x.png", 16, 16)
    bad = write_csv(tmp_path / "bad.csv", ["x.png,seven,"])
    res = runner.invoke(app, ["synthesize", "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "D"),
                              "--csv", str(bad)])
    assert res.exit_code == 2 and "bad.csv" in res.output and "line 2" in res.output
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,score\nx.png,3\n")
    res = runner.invoke(app, ["synthesize", "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "D"),
                              "--csv", str(wrong)])
    assert res.exit_code == 2 and "wrong.csv" in res.output


def test_real_kadis_csv_with_a_few_references(tmp_path):
    if not KADIS_CSV.is_file():
        pytest.skip("../shared/data/kadis700k is not available")
    pairs = read_kadis_csv(KADIS_CSV)
    assert len(pairs) == 140000
    counts = np.bincount([t for _, t in pairs], minlength=26)
    assert counts[8] == 5529 and counts[7] == 11103 - 5529
    assert np.bincount([t for _, t in read_kadis_csv(KADIS_CSV, official_type_8=True)], minlength=26)[8] == 0
    name, t = pairs[0]
    make_ref(tmp_path / "refs" / name, 24, 32)
    cfg = SynthesizeConfig(refs=tmp_path / "refs", out=tmp_path / "D", csv=KADIS_CSV, skip_missing=True,
                           device="cpu", workers=1)
    jobs, missing = plan_jobs(cfg)
    assert len(jobs) == 5 and len(missing) == 139999
    assert jobs[0].path.name == f"{Path(name).stem}_{t:02d}_01.png"


def test_contact_sheet(tmp_path, monkeypatch):
    from dsmix_cli.contact_sheet import render_contact_sheet

    ref = make_ref(tmp_path / "r.png", 60, 80)
    out = render_contact_sheet(ref, tmp_path / "sheet.png", types=[1, 18], levels=[1, 5], thumb=(16, 24))
    im = Image.open(out)
    assert im.size[1] > 2 * 16 and im.size[0] > 3 * 24
    seen = {}
    monkeypatch.setattr("dsmix_cli.contact_sheet.render_contact_sheet",
                        lambda ref, out, **kw: seen.update(ref=ref, out=out, **kw) or out)
    res = runner.invoke(app, ["contact-sheet", "--ref", str(ref), "--out", str(tmp_path / "s.png"),
                              "--device", "cpu", "--thumb", "48x64"])
    assert res.exit_code == 0, res.output
    assert seen["thumb"] == (48, 64) and seen["out"] == tmp_path / "s.png"
