"""Import a script of `benchmarks/` in a test: one helper instead of a loader per test file."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(filename: str):
    """`benchmarks/FILENAME` as a module while the block runs (the test is skipped when the
    checkout has no such file). `benchmarks/` is on sys.path meanwhile, so the script's own
    imports of its neighbours work, and the module is registered under a private name (dataclasses
    need that); both are undone afterwards."""
    path = BENCHMARKS / filename
    if not path.is_file():
        pytest.skip(f"benchmarks/{filename} is not in this checkout")
    name = f"dsmix_benchmark_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    added = str(BENCHMARKS) not in sys.path
    if added:
        sys.path.insert(0, str(BENCHMARKS))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        if added:
            sys.path.remove(str(BENCHMARKS))
