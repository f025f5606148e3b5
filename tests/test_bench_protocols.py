"""The protocol benchmark (`benchmarks/bench_protocols.py`) runs end to end with tiny settings and
records every figure (no timing thresholds here: the machine decides those)."""

from __future__ import annotations

import math

import pytest

from benchmark_modules import benchmark_module
from test_probe import make_toy_set


@pytest.mark.slow
def test_bench_protocols_records_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "user-home"))
    with benchmark_module("bench_protocols.py") as module:
        csv = make_toy_set(tmp_path / "data", refs=6, levels=2, size=(24, 24))
        rec = module.bench_protocols(dataset="csv", csv=csv, root=None, image_size=16, splits=1, epochs=1,
                                     protocols=("dsmix",), work=tmp_path / "work", log=lambda _m: None)
    for key in ("all_over_dsmix", "cpu_all_over_dsmix", "all_over_slowest", "all_over_sum", "warm_all_over_cold_all"):
        assert math.isfinite(rec["figures"][key]) and rec["figures"][key] > 0, key
    assert rec["runs"]["all"]["encoded"] == ["train", "five", "half"]  # one pass for the three protocols
    assert rec["runs"]["all-warm"]["encoded"] == [] and rec["runs"]["all-warm"]["read"] == ["train", "five", "half"]
    assert set(rec["runs"]["all"]["median_srcc"]) == {"dsmix", "arniqa", "contrique"}
    assert not (tmp_path / "user-home").exists()  # the benchmark's home was its work folder
