"""The learning study (`benchmarks/learning.py`) end to end at a toy size on a fake CLIVE: the
split is disjoint, every row trains through `run_qep` and is probed through `run_probe` on the
same splits, and the summary pairs them (no figure is asserted: this checks the plumbing)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark_modules import benchmark_module
from fixtures_datasets import make_clive


@pytest.fixture(scope="module")
def study():
    with benchmark_module("learning.py") as module:
        yield module


@pytest.mark.slow
def test_toy_study_trains_probes_and_pairs(study, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    make_clive(tmp_path / "clive", n_test=18)
    s = study.Settings(steps=2, seeds=(0, 1), rows=("random", "dsmix", "plain", "qpt"), val_refs=1, probe_images=10,
                       probe_splits=2, probe_epochs=2, probe_size=32, probe_train_views=1)
    s = replace(s, headline={**s.headline, "image_size": 32, "batch_size": 2, "val_every": 1, "amp": "off",
                             "types": [1, 16], "levels": [1, 5]})
    # a qpt chain takes 3 distinct types by default
    monkeypatch.setitem(study.ROWS, "qpt", study.Row("qpt", {"pretext": "qpt", "types": [1, 16, 17]}))
    partial = []
    record = study.run_study(s, tmp_path / "clive", tmp_path / "work", log=lambda _m: None,
                             checkpoint=lambda r: partial.append({n: sorted(v["seeds"]) for n, v in r["rows"].items()}))
    # seed by seed: every row has its first seed before any row gets its second
    assert partial[3] == {"random": ["0"], "dsmix": ["0"], "plain": ["0"], "qpt": ["0"]} and len(partial) == 8
    assert record["split"]["counts"] == {"probe": 10, "val": 1, "train": 7}
    names = {p.name for part in ("train", "val") for p in (tmp_path / "work" / "refs" / part).iterdir()}
    assert len(names) == 8  # disjoint reference parts
    probe_names = {Path(line.split(",")[0]).name for line in (tmp_path / "work" / "probe.csv").read_text().splitlines()[1:]}
    assert not probe_names & names and len(probe_names) == 10
    run = record["rows"]["dsmix"]["seeds"]["1"]
    assert run["val"]["step"] == 2 and run["val"]["timing"]["steps_run"] == 2
    assert len(run["probe"]["splits_srcc"]) == 2
    record.update(study.summarize(record))
    sm = record["summary"]
    assert sm["dsmix"]["val_type_acc"]["n"] == 2 and sm["random"].get("val_type_acc") is None
    # qpt: no pretext accuracy, but probed on the same splits (its 2-step toy encoder may give NaN)
    assert sm["qpt"].get("val_type_acc") is None and sm["qpt"]["probe_vs_random"]["per_seed"].keys() == {"0", "1"}
    assert len(record["rows"]["qpt"]["seeds"]["0"]["probe"]["splits_srcc"]) == 2
    assert record["acceptance"]["study_seconds"] > 0
    pr = sm["dsmix"]["probe_vs_random"]
    # paired per seed over the same 2 splits (a toy encoder's SRCC on 2 test images may be NaN)
    assert set(pr["per_seed"]) == {"0", "1"} and pr["splits"] <= 4
    assert all(len(v["probe"]["splits_srcc"]) == 2 for r in record["rows"].values() for v in r["seeds"].values())
    assert math.isfinite(record["acceptance"]["figures"]["type_ratio_to_plain"]) or \
        record["summary"]["plain"]["val_type_acc"]["mean"] == 0
    table = study.format_table(record)
    assert "| dsmix |" in table and "probe_srcc_gain_over_random" in table
    pictures = study.write_pictures(record, tmp_path / "img")
    assert all(p.stat().st_size > 1000 for p in pictures)
    # --report prints a saved record's table again
    saved = tmp_path / "record.json"
    saved.write_text(json.dumps({k: v for k, v in record.items() if k not in ("summary", "acceptance")}))
    assert study.main(["--report", str(saved)]) == 0
    assert table in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:  # a missing record: one usage line, exit 2
        study.main(["--report", str(tmp_path / "none.json")])
    assert bad.value.code == 2 and "none.json: not a learning-study record" in capsys.readouterr().err
    # a second call reuses the finished runs and probes
    again = study.run_study(s, tmp_path / "clive", tmp_path / "work", log=lambda _m: None)
    assert json.dumps(again["rows"]["dsmix"]["seeds"]["0"]["probe"]) == \
        json.dumps(record["rows"]["dsmix"]["seeds"]["0"]["probe"])
    # a study cut short: --only-finished records what is done and trains nothing
    more = replace(s, seeds=(0, 1, 2))
    cut = study.run_study(more, tmp_path / "clive", tmp_path / "work", log=lambda _m: None, only_finished=True)
    assert {n: sorted(r["seeds"]) for n, r in cut["rows"].items()} == {n: ["0", "1"] for n in s.rows}
    assert not (tmp_path / "work" / "runs" / "dsmix-s2").exists()


def test_default_study_is_charged_apart_from_extra_rows(study):
    """A record with rows beyond the default study: the whole record's cost, and the default
    rows' own cost (what the study costs without --rows) with whether every seed is there."""
    def run(seconds, probe):
        return {"val": {"timing": {"seconds": seconds}},
                "probe": {"median_srcc": 0.5, "splits_srcc": [0.5, 0.6], "seconds": {"total": probe}}}

    ref = {"val": None, "probe": {"median_srcc": 0.4, "splits_srcc": [0.4, 0.4], "seconds": 30}}
    rows = {"random": {"label": "r", "seeds": {"0": ref, "1": ref}},
            "dsmix": {"label": "d", "seeds": {"0": run(400, 35), "1": run(410, 35)}},
            "qpt": {"label": "q", "seeds": {"0": run(500, 36)}}}
    settings = {"seeds": [0, 1], "default_rows": ["random", "dsmix"]}
    acc = study.summarize({"settings": settings, "rows": rows})["acceptance"]
    assert acc["study_seconds"] == pytest.approx(30 + 30 + 400 + 35 + 410 + 35 + 500 + 36)
    assert acc["default_study"] == {"rows": ["random", "dsmix"], "complete": True,
                                    "seconds": pytest.approx(30 + 30 + 400 + 35 + 410 + 35),
                                    "within_90_minutes": True}
    del rows["dsmix"]["seeds"]["1"]
    settings["default_rows"] = ["random", "dsmix", "qpt"]
    acc = study.summarize({"settings": settings, "rows": {**rows, "extra": rows["qpt"]}})["acceptance"]
    assert acc["default_study"]["complete"] is False  # dsmix and qpt have one seed of two
    assert "default study (random, dsmix, qpt; every seed there: False)" in study.format_table(
        {**study.summarize({"settings": settings, "rows": {**rows, "extra": rows["qpt"]}}), "rows": rows})


def test_level_head_pristine_answers_per_level(study):
    """The share of each level's distorted crops the level head calls pristine (column 0 of the
    level confusion), averaged over seeds, and the per-type table, from hand-made runs."""
    def val(conf, type_acc):
        per_type = {"1 gaussian_blur": {"type_acc": type_acc, "level_acc": 0.5, "n": 10}}
        zeros = [[0.0] * 5 for _ in range(25)]
        return {"val_type_acc": type_acc, "level_confusion": conf, "per_type": per_type,
                "per_type_level": {"type_acc": zeros, "level_acc": zeros}, "history": [], "timing": {}}

    conf_a = [[9, 1, 0, 0, 0, 0], [6, 4, 0, 0, 0, 0], [5, 0, 5, 0, 0, 0], [2, 0, 0, 8, 0, 0], [1, 0, 0, 0, 9, 0],
              [0, 0, 0, 0, 0, 10]]
    conf_b = [[10, 0, 0, 0, 0, 0], [8, 2, 0, 0, 0, 0], [3, 0, 7, 0, 0, 0], [2, 0, 0, 8, 0, 0], [3, 0, 0, 0, 7, 0],
              [4, 0, 0, 0, 0, 6]]
    probe = {"median_srcc": 0.5, "splits_srcc": [0.5]}
    rows = {"dsmix": {"label": "d", "seeds": {"0": {"val": val(conf_a, 0.2), "probe": probe},
                                              "1": {"val": val(conf_b, 0.4), "probe": probe}}}}
    record = {"settings": {"seeds": [0, 1]}, "rows": rows}
    record.update(study.summarize(record))
    by = record["summary"]["dsmix"]["level_head_pristine_by_level"]
    assert by == pytest.approx([(0.6 + 0.8) / 2, (0.5 + 0.3) / 2, 0.2, (0.1 + 0.3) / 2, (0.0 + 0.4) / 2])
    text = study.detail_tables(record)
    assert "| dsmix | 0.70 | 0.40 | 0.20 | 0.20 | 0.20 |" in text
    assert "| 1 gaussian_blur | 0.30 / 0.50 |" in text


def test_budgets_per_row_and_where_a_log_line_reaches_the_target(study, tmp_path, capsys):
    """Records of the same study at several --steps: each row's final accuracy per budget (mean over
    that record's seeds), a measured crossing of 0.3 where a budget reaches it, else where the line
    in log2(steps) through the budgets does (a hand-made case: +0.05 per doubling from 0.1 at 2,000
    steps reaches 0.3 at 2,000 x 2^4 = 32,000); a row in one record only is left out."""
    def rec(steps, dsmix, plain, seeds=("0",)):
        def row(type_acc, level_acc):
            zeros = [[0.0] * 5 for _ in range(25)]
            val = {"val_type_acc": type_acc, "val_level_acc": level_acc, "val_called_pristine": 0.5,
                   "per_type": {}, "per_type_level": {"type_acc": zeros, "level_acc": zeros}, "history": [],
                   "timing": {"seconds_per_step": 0.2}}
            return {"label": "x", "seeds": {s: {"val": val, "probe": {"median_srcc": 0.5, "splits_srcc": [0.5]}}
                                            for s in seeds}}
        rows = {"dsmix": row(*dsmix), "plain": row(*plain)}
        if steps == 2000:
            rows["area"] = row(0.1, 0.1)
        return {"settings": {"steps": steps, "seeds": [0]}, "rows": rows}

    records = [rec(8000, (0.2, 0.125), (0.5, 0.4)), rec(2000, (0.1, 0.1), (0.32, 0.35), seeds=("0", "1"))]
    budgets = study.budget_summary(records)
    assert set(budgets) == {"dsmix", "plain"}
    assert [b["steps"] for b in budgets["dsmix"]["budgets"]] == [2000, 8000]
    assert budgets["dsmix"]["budgets"][0]["seeds"] == ["0", "1"]
    assert budgets["dsmix"]["reached_val_type_acc"] is None
    assert budgets["dsmix"]["fit_val_type_acc"] == pytest.approx(32000)
    assert budgets["dsmix"]["fit_val_level_acc"] == pytest.approx(2000 * 2 ** (0.2 / 0.0125))
    assert budgets["plain"]["reached_val_type_acc"] == 2000
    assert study.log_fit_crossing([(2000, 0.3), (8000, 0.2)]) is None  # falling: never
    assert study.log_fit_crossing([(2000, 0.1)]) is None  # one budget: no line
    paths = []
    for i, r in enumerate(records):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    assert study.main(["--budgets", *map(str, paths), "--docs-img", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert "| dsmix | 8,000 | 0 | 0.200 | 0.125 |" in out and "type 0.3 at ~32,000 steps (fit" in out
    assert "plain: type 0.3 reached at 2,000 steps (measured)" in out
    assert (tmp_path / "img" / "learning-budgets.png").stat().st_size > 1000
    (tmp_path / "other.json").write_text(json.dumps({"rows": {}}))  # no settings.steps
    for bad in ("none.json", "other.json"):
        with pytest.raises(SystemExit) as stop:
            study.main(["--budgets", str(paths[0]), str(tmp_path / bad)])
        assert stop.value.code == 2 and f"{bad}: not a learning-study record" in capsys.readouterr().err
