"""Type 9 (JPEG2000): where its time goes, and what a faster encoding would do to its severity.

    python benchmarks/jpeg2000_options.py --json benchmarks/results/jpeg2000-options.json

Two measurements, one thread:

* time, per 512x384 image (the demo images of `bench_distortions.py`, level 3, ratio 45), of the
  pieces of `distort(x, 9, 3)`: OpenJPEG's encoding as type 9 calls it (through Pillow, 9/7
  wavelet, one quality layer per level ratio), the decoding of that level's layers, the whole
  distortion, and the same encoding with OpenJPEG's multiple-component (colour) transform on
  (`mct=1`), and with the other settings Pillow exposes (`SETTINGS`). The codec's own cost
  bounds what type 9 can reach per core.
* severity (mean PSNR to the reference per level, on `bench_severity.py`'s image sets): today's
  encoding, the colour-transform encoding at the same ratios, and, for each level, the ratio at
  which the colour-transform encoding would give today's PSNR on each set (log-interpolated over
  a grid of ratios). If the sets disagree by more than the tolerance, no ratio table keeps every
  level within `bench_severity.TOLERANCE_DB` on both sets.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_severity  # noqa: E402
from bench_distortions import demo_batch  # noqa: E402

from dsmix_cli.distortions import compression, distort, mapmm  # noqa: E402

LEVEL = 3
GRID = (16, 20, 24, 28, 32, 38, 45, 52, 60, 70, 80, 95, 110, 130, 150, 175, 200, 240, 280, 330, 400, 470,
        550, 650, 750, 900, 1100)


# other encoder settings Pillow exposes, timed beside type 9's (each changes the output a little)
SETTINGS = {
    "resolutions_5": {"num_resolutions": 5},
    "resolutions_4": {"num_resolutions": 4},
    "codeblock_32": {"codeblock_size": (32, 32)},
    "tiles_256x192": {"tile_size": (256, 192)},
    "codestream_only": {"no_jp2": True},
    "progression_rlcp": {"progression": "RLCP"},
}


def save(im: Image.Image, ratios: list[float], mct: int = 0, **options) -> bytes:
    """`compression._jpeg2000_save` with the colour transform and other encoder settings as choices
    (none given: type 9's encoding)."""
    if not mct and not options:
        return compression._jpeg2000_save(im, ratios)
    buf = io.BytesIO()
    im.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(r) for r in ratios],
            irreversible=True, mct=mct, **options)
    return buf.getvalue()


def _best_rate(fn, n: int, rounds: int) -> float:
    """Images per second of thread CPU time, best of `rounds` passes over `n` images."""
    best = math.inf
    for _ in range(rounds):
        start = time.thread_time()
        for i in range(n):
            fn(i)
        best = min(best, time.thread_time() - start)
    return n / best


def timing(rounds: int = 3) -> dict:
    x = demo_batch(8)
    ims = [compression._to_pil(x[i]) for i in range(x.shape[0])]
    ratio = compression.JPEG2000_RATIOS[LEVEL - 1]
    layers = compression._layer_ratios([ratio])
    k = layers.index(ratio) + 1
    data = [save(im, layers) for im in ims]
    parts = {
        "encode": lambda i: save(ims[i], layers),
        "decode": lambda i: compression._jpeg2000_open(data[i], k),
        "distort": lambda i: distort(x[i:i + 1], 9, LEVEL),
        "encode_single_layer": lambda i: save(ims[i], [ratio]),
        "encode_mct": lambda i: save(ims[i], layers, mct=1),
        **{f"encode_{name}": (lambda i, o=o: save(ims[i], layers, **o)) for name, o in SETTINGS.items()},
    }
    for fn in parts.values():  # warm-up
        fn(0)
    rates = {name: _best_rate(fn, len(ims), rounds) for name, fn in parts.items()}
    rates["encode_and_decode"] = 1 / (1 / rates["encode"] + 1 / rates["decode"])
    return {"images_per_s_1t": rates, "size": list(x.shape[-2:]), "level": LEVEL, "ratio": ratio,
            "layers": layers}


def _psnr_with(refs: list[torch.Tensor], ratio: float, mct: int) -> float:
    """Mean PSNR of the single-layer encoding at `ratio` (dispatcher's min-max rescale included)."""
    values = []
    for ref8 in refs:
        x = ref8.unsqueeze(0).float().div(255.0)
        y = compression._from_pil(compression._jpeg2000_open(save(compression._to_pil(x[0]), [ratio], mct)), x)
        values.append(bench_severity.psnr8(bench_severity._to8(mapmm(y.unsqueeze(0))[0]), ref8))
    return sum(values) / len(values)


def _ratio_for(target: float, curve: list[tuple[float, float]]) -> float | None:
    for (r0, p0), (r1, p1) in zip(curve, curve[1:]):
        if p0 >= target >= p1 and p0 > p1:
            f = (p0 - target) / (p0 - p1)
            return math.exp(math.log(r0) + f * (math.log(r1) - math.log(r0)))
    return None


def severity() -> dict:
    out = {}
    for name, paths in bench_severity.image_sets().items():
        refs = [bench_severity.load_rgb_tensor(p) for p in paths]
        today = bench_severity.measure(paths, types=(9,))["9"]["psnr"]
        same_ratio = [_psnr_with(refs, float(r), 1) for r in compression.JPEG2000_RATIOS]
        curve = [(float(r), _psnr_with(refs, float(r), 1)) for r in GRID]
        out[name] = {"images": len(paths), "today_db": today, "mct_same_ratio_db": same_ratio,
                     "mct_ratio_matching_today": [_ratio_for(p, curve) for p in today], "mct_curve": curve}
    names = list(out)
    if len(names) == 2:  # one table for both sets: each level at the geometric mean of their ratios
        a, b = (out[n]["mct_ratio_matching_today"] for n in names)
        table = [math.sqrt(x * y) if x and y else None for x, y in zip(a, b)]
        for n in names:
            curve = out[n]["mct_curve"]
            out[n]["mct_at_shared_table_db"] = [None if r is None else _interp(curve, r) for r in table]
            out[n]["shared_table_change_db"] = [None if v is None else v - t for v, t in
                                                zip(out[n]["mct_at_shared_table_db"], out[n]["today_db"])]
        out["shared_table"] = table
    return out


def _interp(curve: list[tuple[float, float]], ratio: float) -> float:
    for (r0, p0), (r1, p1) in zip(curve, curve[1:]):
        if r0 <= ratio <= r1:
            f = (math.log(ratio) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return p0 + f * (p1 - p0)
    return math.nan


def format_report(rec: dict) -> str:
    t = rec["timing"]["images_per_s_1t"]
    lines = [f"Type 9 at 512x384, level {LEVEL} (ratio {rec['timing']['ratio']:g}), one thread, images/s:",
             "| piece | img/s | ms |", "|---|---|---|"]
    for k in ("encode", "decode", "encode_and_decode", "distort", "encode_single_layer", "encode_mct",
              *(f"encode_{name}" for name in SETTINGS)):
        if k in t:
            lines.append(f"| {k} | {t[k]:.1f} | {1000 / t[k]:.1f} |")
    sev = rec.get("severity")
    if sev:
        lines += ["", "Severity (mean PSNR, dB) per level 1-5:", "| set | encoding | 1 | 2 | 3 | 4 | 5 |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in sev.items():
            if name == "shared_table":
                continue

            def row(label, vals, fmt="{:.2f}"):
                return f"| {name} ({s['images']}) | {label} | " + " | ".join(
                    "-" if v is None else fmt.format(v) for v in vals) + " |"
            lines.append(row("today (no colour transform)", s["today_db"]))
            lines.append(row("mct=1, same ratios", s["mct_same_ratio_db"]))
            lines.append(row("mct=1: ratio giving today's dB", s["mct_ratio_matching_today"], "{:.0f}"))
            if "shared_table_change_db" in s:
                lines.append(row("mct=1 at one shared table: change", s["shared_table_change_db"], "{:+.2f}"))
        if sev.get("shared_table"):
            lines.append("\nShared table (geometric mean of the two sets' ratios): "
                         + ", ".join("-" if r is None else f"{r:.0f}" for r in sev["shared_table"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the record here")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-severity", action="store_true", help="the timing only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rec = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "timing": timing(args.rounds)}
    if not args.skip_severity:
        rec["severity"] = severity()
    rec["seconds"] = round(time.perf_counter() - start, 1)
    print(format_report(rec))
    if args.json:
        from dsmix_cli.fileio import write_json

        write_json(args.json, rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
