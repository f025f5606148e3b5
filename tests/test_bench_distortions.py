"""`benchmarks/bench_distortions.py`: the record it writes, the bars it applies, the previous
record's figures beside the new ones, and `synthesize` end to end on tiny references."""

from __future__ import annotations

import json

import pytest

from benchmark_modules import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_distortions.py") as module:
        yield module


def test_bars(bench):
    # twice the port, capped at 400 img/s; 50 without a counterpart; 30 for types 6 and 9
    assert bench.targets({"b1_1t": 100, "b8_1t": 150, "port_1t": 70}, 1)["need_b8_1t"] == 140
    assert bench.targets({"b1_1t": 100, "b8_1t": 150, "port_1t": 700}, 1)["need_b8_1t"] == 400
    assert not bench.targets({"b1_1t": 100, "b8_1t": 150, "port_1t": 700}, 1)["pass_rate"]
    assert bench.targets({"b1_1t": 60, "b8_1t": 55}, 13) == {
        "need_b8_1t": 50.0, "pass_rate": True, "b8_over_b1": 55 / 60, "pass_b8_vs_b1": False}
    assert bench.targets({"b1_1t": 40, "b8_1t": 39}, 9)["need_b8_1t"] == 30
    assert bench.targets({"b1_1t": 40, "b8_1t": 39}, 9)["pass_b8_vs_b1"]  # within 5 %


def test_quick_run_writes_a_record_and_shows_the_previous_one(bench, tmp_path, capsys):
    out = tmp_path / "record.json"
    assert bench.main(["--quick", "--types", "7,18", "--skip", "synthesize,severity", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert sorted(record["types"]) == ["18", "7"]
    for row in record["types"].values():
        assert row["b1_1t"] > 0 and row["b8_1t"] > 0 and "port_1t" not in row
        assert set(row["bar"]) == {"need_b8_1t", "pass_rate", "b8_over_b1", "pass_b8_vs_b1"}
    assert record["settings"]["level"] == 3 and record["settings"]["size"] == [384, 512]
    assert record["environment"]["load_average"] is not None
    capsys.readouterr()
    previous = json.loads(json.dumps(record))
    previous["types"]["7"]["b8_1t"] = 12345.0
    table = bench.format_table(record, previous)
    row7 = next(line for line in table.splitlines() if line.startswith("| 7 |"))
    assert "12345" in row7  # the previous figure beside the new one
    assert "| 18 | mean_shift |" in table


def test_synthesize_end_to_end_on_tiny_references(bench, tmp_path):
    r = bench.bench_synthesize(per_type=1, size=(24, 32), work=tmp_path)
    assert r["images"] == 125 and r["references"] == 25
    assert r["images_per_cpu_s"] > 0 and r["images_per_wall_s"] > 0
    assert len(list((tmp_path / "kadis" / "dist_imgs").glob("*.bmp"))) == 125
