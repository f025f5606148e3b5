"""Throughput of the 25 distortions and of `dsmix synthesize`, with a public port side by side.

    python benchmarks/bench_distortions.py --json benchmarks/results/distortions-cpu.json \\
        [--port /path/to/utils/distortions.py] [--quick]

What it measures (512x384 RGB images, level 3, unless said otherwise):

* per type, images/s at batch 1 and batch 8 on one torch thread, and on all threads. The images
  are the demo images shipped with the package (`dsmix_cli/assets/demo`), resized to 512x384,
  cycled to 8 distinct tensors. Batch 1 is 8 calls, one per image; batch 8 is one call on the 8;
  each image has its own generator (as `dsmix synthesize` gives them). One-thread rates are
  images per second of the calling thread's CPU time (`time.thread_time`), so a machine shared
  with other jobs slows them much less than wall time would; all-thread rates are wall time.
* with `--port FILE`: the same images through a public torch/kornia port of the distortions,
  one image per call on one thread, called in turn with ours in every round (both see the same
  load). `FILE` is the port's `distortions.py`, importable as `<its folder>.distortions` from the
  folder above it. Each of our types is mapped to its counterpart (`PORT_FUNCTIONS`) and both
  get the same parameter: our level 3 (MATLAB's table). Types without a working counterpart
  there are left out of the comparison.
* `synthesize`: `dsmix synthesize` end to end (decode PNG references, distort, encode BMP, write
  the files and the manifest) in KADIS mode, every type with the same number of references and
  5 levels each, one torch thread and one worker thread: images per second of the process's
  CPU time (per core), and per second of wall time.
* `severity`: `bench_severity.py`'s check of types 6 and 9 against the committed record.

The JSON keeps every figure, the settings and the machine (load average included), and the
table printed at the end shows the previous record's figures beside the new ones.
Import `bench_distortions(device, ...)` for the benchmark runner's per-type figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dsmix_cli.distortions import NUM_TYPES, TYPE_NAMES, distort_batch, level_value

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # also when loaded from a file path (the tests)
    sys.path.insert(0, str(_HERE))
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "distortions-cpu.json"
DEMO = ROOT / "dsmix_cli" / "assets" / "demo"
SIZE = (384, 512)  # (H, W)
LEVEL = 3

# Our type -> the port's function name. Types 6, 13, 15, 16 and 17 have no working counterpart
# in the port (absent, or failing on a 3-channel image).
PORT_FUNCTIONS = {
    1: "gaussian_blur", 2: "lens_blur", 3: "motion_blur", 4: "color_diffusion", 5: "color_shift",
    7: "color_saturation1", 8: "color_saturation2", 9: "jpeg2000", 10: "jpeg", 11: "white_noise",
    12: "white_noise_cc", 14: "multiplicative_noise", 18: "mean_shift", 19: "jitter",
    20: "non_eccentricity_patch", 21: "pixelate", 22: "quantization", 23: "color_block", 24: "high_sharpen",
    25: "linear_contrast_change",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_batch(n: int = 8, size: tuple[int, int] = SIZE) -> torch.Tensor:
    """`n` distinct (3, H, W) images in [0, 1]: the demo photographs resized, then flipped copies."""
    imgs = []
    for p in sorted(DEMO.glob("*.png")):
        im = Image.open(p).convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255))
    if not imgs:  # a checkout without the assets: smooth random images
        g = torch.Generator().manual_seed(0)
        low = torch.rand(n, 3, size[0] // 16, size[1] // 16, generator=g)
        return torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    out = [imgs[i % len(imgs)] if i < len(imgs) else imgs[i % len(imgs)].flip(-1) for i in range(n)]
    return torch.stack(out).contiguous()


def _gens(n: int, t: int, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(1000 * t + i) for i in range(n)]


def _clock(threads: int):
    return time.thread_time if threads == 1 else time.perf_counter


def _time_ours(x: torch.Tensor, t: int, batch: int, threads: int) -> float:
    """Seconds to distort all images of `x` with type t at level 3, `batch` images per call."""
    clock = _clock(threads)
    n = x.shape[0]
    device = x.device
    calls = [(x[i:i + batch], torch.full((min(batch, n - i),), t), torch.full((min(batch, n - i),), LEVEL))
             for i in range(0, n, batch)]
    gens = [_gens(len(c[1]), t, device) for c in calls]
    outputs = []  # kept, as a caller keeps them: batch 1 and batch 8 hold the same memory
    _sync(device)
    start = clock()
    for (xs, ts, ls), g in zip(calls, gens):
        outputs.append(distort_batch(xs, ts, ls, g))
    _sync(device)
    return clock() - start


def load_port(path: str | Path):
    """Import a port's `distortions.py` (its folder is a package next to its helpers)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    sys.path.insert(0, str(path.parent.parent))
    return importlib.import_module(f"{path.parent.name}.{path.stem}")


def _time_port(port, x: torch.Tensor, t: int) -> float | None:
    """Thread CPU seconds for the port to distort each image of x (one call per image)."""
    fn = getattr(port, PORT_FUNCTIONS[t])
    value = level_value(t, LEVEL)
    value = int(value) if float(value).is_integer() and t in (2, 3, 4, 5, 9, 10, 20, 22, 23, 24) else value
    inputs = [x[i].clone() for i in range(x.shape[0])]  # the port works in place on some types
    start = time.thread_time()
    for xi in inputs:
        fn(xi, value)
    return time.thread_time() - start


def bench_types(x: torch.Tensor, types: list[int], rounds: int, port=None, all_threads: bool = True,
                log=print) -> dict:
    """Per type: images/s at batch 1 and 8 (one thread, all threads) and the port's (one thread).

    Every round times ours at batch 1, ours at batch 8 and the port one after the other, on the
    same images; the best round of each counts (the least disturbed by other jobs).
    """
    n = x.shape[0]
    old = torch.get_num_threads()
    all_n = old
    rows = {}
    try:
        for t in types:
            torch.set_num_threads(1)
            _time_ours(x[:2], t, 1, 1)  # warm-up: kernels, caches
            _time_ours(x[:2], t, 2, 1)
            port_ok = port is not None and t in PORT_FUNCTIONS
            if port_ok:
                try:
                    _time_port(port, x[:1], t)
                except Exception as exc:  # noqa: BLE001 - a port type that fails is recorded, not fatal
                    log(f"  port {PORT_FUNCTIONS[t]} fails: {type(exc).__name__}: {exc}")
                    port_ok = False
            best = {"b1": math.inf, "b8": math.inf, "port": math.inf}
            for _ in range(rounds):
                best["b1"] = min(best["b1"], _time_ours(x, t, 1, 1))
                best["b8"] = min(best["b8"], _time_ours(x, t, n, 1))
                if port_ok:
                    best["port"] = min(best["port"], _time_port(port, x, t))
            row = {"b1_1t": n / best["b1"], "b8_1t": n / best["b8"]}
            if port_ok:
                row["port_1t"] = n / best["port"]
            if all_threads and all_n > 1:
                torch.set_num_threads(all_n)
                row["b1_all"] = n / min(_time_ours(x, t, 1, all_n) for _ in range(rounds))
                row["b8_all"] = n / min(_time_ours(x, t, n, all_n) for _ in range(rounds))
            rows[t] = row
            log(f"  {t:>2} {TYPE_NAMES[t]:<24} " + "  ".join(f"{k} {v:7.1f}" for k, v in row.items()))
    finally:
        torch.set_num_threads(old)
    return rows


def bench_levels(x: torch.Tensor, types: tuple[int, ...] = (6, 9), rounds: int = 3) -> dict:
    """Images/s (one thread) when each call holds the five levels of one image, as
    `dsmix synthesize` sends the CPU-only types: JPEG2000 then encodes each image once."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for t in types:
            levels = torch.arange(1, 6)
            best = math.inf
            for _ in range(rounds):
                start = time.thread_time()
                for i in range(x.shape[0]):
                    distort_batch(x[i:i + 1].expand(5, -1, -1, -1), torch.full((5,), t), levels)
                best = min(best, time.thread_time() - start)
            out[str(t)] = 5 * x.shape[0] / best
    finally:
        torch.set_num_threads(old)
    return out


def bench_distortions(device: str | torch.device, size: tuple[int, int] = SIZE, batch: int = 8,
                      repeats: int = 3, quick: bool = False) -> dict[int, float]:
    """Images per second for each type on `device` at `batch` images per call, level 3 (the
    benchmark runner's `distortions_*` figure; on the CPU with the runner's threads).

    Args:
        device: where the batch lives (the CPU-only types 6 and 9 go through the CPU anyway).
        size: (H, W) of the images.
        batch: images per call.
        repeats: timed calls per type (after one warm-up call); the best counts.
        quick: one timed call on a batch of 2 (a smoke run).

    Returns:
        {type number: images per second}.
    """
    device = torch.device(device)
    if quick:
        batch, repeats = 2, 1
    x = demo_batch(batch, size).to(device)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    rates: dict[int, float] = {}
    for t in range(1, NUM_TYPES + 1):
        _time_ours(x, t, batch, threads)  # warm-up
        rates[t] = batch / min(_time_ours(x, t, batch, threads) for _ in range(repeats))
    return rates


# ----------------------------------------------------------------------------------- synthesize


def write_kadis_refs(folder: Path, per_type: int, size: tuple[int, int] = SIZE) -> Path:
    """PNG references (the demo images and flipped/mirrored variants, resized to 512x384) and a
    `kadis700k_ref_imgs.csv` giving every type to `per_type` of them. Returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    base = demo_batch(6, size)
    variants = [base, base.flip(-1), base.flip(-2), base.flip(-1).flip(-2)]
    pool = torch.cat(variants)
    rows = ["ref_im,dist_type_1,dist_type_2"]
    k = 0
    for t in range(1, NUM_TYPES + 1):
        for _ in range(per_type):
            img = pool[k % len(pool)]
            name = f"ref{k:05d}.png"
            Image.fromarray(img.mul(255).round().byte().permute(1, 2, 0).numpy()).save(folder / name)
            rows.append(f"{name},{t},")
            k += 1
    csv_path = folder.parent / "kadis700k_ref_imgs.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv_path


def bench_synthesize(per_type: int = 2, batch_size: int = 16, work: Path | None = None,
                     size: tuple[int, int] = SIZE) -> dict:
    """`dsmix synthesize` end to end in KADIS mode (BMP), one torch thread and one worker."""
    from dsmix_cli.synthesize import SynthesizeConfig, synthesize

    old = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="dsmix-bench-synth-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        csv_path = write_kadis_refs(root / "ref_imgs", per_type, size)
        out = root / "kadis"
        cfg = SynthesizeConfig(refs=root / "ref_imgs", out=out, csv=csv_path, fmt="bmp", workers=1, device="cpu",
                               batch_size=batch_size)
        torch.set_num_threads(1)
        try:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            res = synthesize(cfg)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            torch.set_num_threads(old)
        written = res.written
    return {"images": written, "references": per_type * NUM_TYPES, "cpu_seconds": cpu, "wall_seconds": wall,
            "images_per_cpu_s": written / cpu, "images_per_wall_s": written / wall, "batch_size": batch_size,
            "workers": 1, "torch_threads": 1, "format": "bmp", "size": list(size)}


# ----------------------------------------------------------------------------------- record


def _environment() -> dict:
    cpu = cpu_name()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "commit": commit,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


NOISE = 0.05  # batch 8 counts as not slower than batch 1 within this fraction (timing noise)


def targets(row: dict, t: int) -> dict:
    """The bar for a type: 2x the port (one thread, batch 8) or 400 img/s where that is more;
    50 img/s for a type without a counterpart; 30 img/s for types 6 and 9; and batch 8 not
    slower per image than batch 1 (within `NOISE`: both run the same per-image code on the CPU,
    so they differ by timing noise only)."""
    if t in (6, 9):
        need = 30.0
    elif "port_1t" in row:
        need = min(2 * row["port_1t"], 400.0)
    else:
        need = 50.0
    return {"need_b8_1t": need, "pass_rate": row["b8_1t"] >= need,
            "b8_over_b1": row["b8_1t"] / row["b1_1t"], "pass_b8_vs_b1": row["b8_1t"] >= (1 - NOISE) * row["b1_1t"]}


def previous_record(path: Path, committed_only: bool = False) -> dict | None:
    """The record as last committed (else the file as it is), for the side-by-side table."""
    try:
        rel = path.resolve().relative_to(ROOT)
        text = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
        return json.loads(text)
    except (ValueError, OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        if committed_only:
            return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def format_table(result: dict, previous: dict | None) -> str:
    """The per-type table, with the previous record's batch-8 one-thread figure beside the new."""
    prev_types = (previous or {}).get("types", {})
    lines = ["| type | name | port img/s | b1 1t | b8 1t | previous b8 1t | ratio to port | b1 all | b8 all | bar |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"

    ratios = []
    for t, row in sorted(result["types"].items(), key=lambda kv: int(kv[0])):
        t = int(t)
        prev = prev_types.get(str(t), {}).get("b8_1t")
        port = row.get("port_1t")
        ratio = row["b8_1t"] / port if port else None
        if ratio:
            ratios.append(ratio)
        bar = row.get("bar", {})
        verdict = ("pass" if bar.get("pass_rate") and bar.get("pass_b8_vs_b1") else "FAIL") if bar else "-"
        lines.append(f"| {t} | {TYPE_NAMES[t]} | {f(port)} | {f(row['b1_1t'])} | {f(row['b8_1t'])} | {f(prev)} | "
                     f"{'-' if ratio is None else f'{ratio:.1f}x'} | {f(row.get('b1_all'))} | {f(row.get('b8_all'))} | "
                     f"{verdict} (>= {bar.get('need_b8_1t', 0):.0f}) |")
    if ratios:
        lines.append(f"\nGeometric mean of the ratios to the port: "
                     f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.1f}x over {len(ratios)} types.")
    five = result.get("five_levels_1t")
    if five:
        prev = (previous or {}).get("five_levels_1t", {})
        lines.append("\nThe five levels of one image per call (as `dsmix synthesize` sends them), one thread: " +
                     "; ".join(f"type {t} {v:.0f} img/s (previous "
                               f"{'-' if t not in prev else format(prev[t], '.0f')})" for t, v in five.items()) + ".")
    syn = result.get("synthesize")
    if syn:
        prev = (previous or {}).get("synthesize", {}).get("images_per_cpu_s")
        lines.append(f"\n`synthesize` end to end: {syn['images_per_cpu_s']:.1f} images per CPU second "
                     f"({syn['images_per_wall_s']:.1f}/s wall; previous record: "
                     f"{'-' if prev is None else f'{prev:.1f}'}); {syn['images']} BMP images from "
                     f"{syn['references']} references. KADIS-700k on 16 such cores: "
                     f"{700_000 / (16 * syn['images_per_cpu_s']) / 3600:.2f} h.")
    sev = result.get("severity")
    if sev:
        worst = max(sev["rows"], key=lambda r: abs(r["diff_db"]))
        lines.append(f"\nSeverity of types 6 and 9 against the record: "
                     f"{'pass' if sev['pass'] else 'FAIL'} (largest change {worst['diff_db']:+.2f} dB: set "
                     f"{worst['set']}, type {worst['type']}, level {worst['level']}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", help="a public port's distortions.py, to measure side by side")
    parser.add_argument("--json", dest="json_path", help="write the record here (the table still prints)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per type (the best counts)")
    parser.add_argument("--types", help="only these types, e.g. 1,2,10")
    parser.add_argument("--quick", action="store_true", help="one round, no all-thread figures, a small synthesize")
    parser.add_argument("--skip", default="", help="parts to leave out: synthesize,severity")
    parser.add_argument("--table", metavar="RECORD", help="only print the table of an existing record")
    args = parser.parse_args(argv)
    if args.table:
        record = json.loads(Path(args.table).read_text(encoding="utf-8"))
        for t, row in record["types"].items():
            row["bar"] = targets(row, int(t))
        previous = previous_record(Path(args.table), committed_only=True)
        if previous is not None and previous.get("timestamp") == record.get("timestamp"):
            previous = None  # the committed record is this one
        print(format_table(record, previous))
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    from dsmix_cli.distortions._memory import keep_freed_memory

    malloc_kept = keep_freed_memory()  # as `dsmix synthesize` does; ours and the port alike
    port = load_port(args.port) if args.port else None
    types = [int(t) for t in args.types.split(",")] if args.types else list(range(1, NUM_TYPES + 1))
    rounds = 1 if args.quick else args.rounds
    start = time.perf_counter()
    result: dict = {"timestamp": datetime.now(timezone.utc).isoformat(), "environment": _environment(),
                    "settings": {"size": list(SIZE), "level": LEVEL, "batch": 8, "rounds": rounds,
                                 "images": "dsmix_cli/assets/demo resized to 512x384 (8 distinct tensors)",
                                 "one_thread_clock": "time.thread_time", "all_threads_clock": "time.perf_counter",
                                 "malloc_keeps_freed_memory": malloc_kept,
                                 "port": None}}
    if port is not None:
        result["settings"]["port"] = {
            "file": Path(args.port).name, "functions": {str(t): n for t, n in PORT_FUNCTIONS.items()},
            "parameter": "our level 3 (MATLAB's table) for both",
            "how": "one image (3, H, W) per call, a fresh copy each, one torch thread, called in turn with ours "
                   "in every round"}
    x = demo_batch(8)
    log(f"per type, level {LEVEL}, 512x384, {rounds} round(s):")
    rows = bench_types(x, types, rounds, port, all_threads=not args.quick, log=log)
    for t, row in rows.items():
        row["bar"] = targets(row, t)
    result["types"] = {str(t): row for t, row in rows.items()}
    if {6, 9} & set(types):
        log("types 6 and 9, the five levels of one image per call ...")
        result["five_levels_1t"] = bench_levels(x[:4], tuple(t for t in (6, 9) if t in types), rounds)
    if "synthesize" not in skip:
        log("synthesize (KADIS mode, BMP, one thread + one worker) ...")
        result["synthesize"] = bench_synthesize(per_type=1 if args.quick else 2)
    if "severity" not in skip:
        log("severity of types 6 and 9 against the record ...")
        import bench_severity

        record = json.loads(bench_severity.RECORD.read_text(encoding="utf-8"))
        sev_rows = bench_severity.compare(bench_severity.measure_all(), record)
        result["severity"] = {"rows": sev_rows, "pass": bool(sev_rows) and all(r["pass"] for r in sev_rows),
                              "record_commit": record.get("commit")}
    result["environment"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = round(time.perf_counter() - start, 1)
    previous = previous_record(Path(args.json_path)) if args.json_path else previous_record(RECORD)
    table = format_table(result, previous)
    result["table"] = table
    if args.json_path:
        from dsmix_cli.fileio import write_json

        write_json(args.json_path, result)
    print(table)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
