"""Severity of the CPU-only distortions (6, colour quantization; 9, JPEG2000) per level, and a
check against a committed record.

The severity of a level is the PSNR (dB, 8-bit) of `distort(x, t, level)` to the reference `x`,
averaged over a fixed image set: a subset of the CLIVE images (every `CLIVE_STEP`-th file of
`ChallengeDB_release/Images`, sorted by name, at their own 500x500 size) and the demo images
shipped in `dsmix_cli/assets/demo`. Type 6 also records how many distinct colours each output has
(`distort(..., mapmm=False)`, so that the dispatcher's final rescale cannot merge any) and, for
records made since, how many distinct colours its palette has (MATLAB's `rgb2ind` colormap):
exactly n. Floyd-Steinberg dithering need not use every palette colour, so the output may have
fewer; the count of outputs with exactly n is reported beside the record's.

    python benchmarks/bench_severity.py --record benchmarks/results/severity-baseline.json  # write
    python benchmarks/bench_severity.py                                                   # compare

A faster implementation of these two types may move each level's mean PSNR by at most
`TOLERANCE_DB` from the record, and type 6's palette must have exactly n colours.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from dsmix_cli.distortions import NUM_LEVELS, distort, level_value
from dsmix_cli.imageio import load_rgb_tensor

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGES = ROOT / "dsmix_cli" / "assets" / "demo"
RECORD = ROOT / "benchmarks" / "results" / "severity-baseline.json"
CLIVE_STEP = 10
TYPES = (6, 9)
TOLERANCE_DB = 0.3


def find_clive() -> Path | None:
    """The shared CLIVE subset's image folder next to this checkout or one of its parents, if any."""
    for parent in ROOT.parents:
        folder = parent / "shared" / "data" / "clive-subset" / "ChallengeDB_release" / "Images"
        if folder.is_dir():
            return folder
    return None


def image_sets(clive: Path | None = None, step: int = CLIVE_STEP) -> dict[str, list[Path]]:
    """The image sets: `demo` always, `clive` when a CLIVE image folder is given or found."""
    clive = find_clive() if clive is None else clive
    sets = {"demo": sorted(DEMO_IMAGES.glob("*.png"))}
    if clive is not None and Path(clive).is_dir():
        files = sorted(p for p in Path(clive).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        sets["clive"] = files[::step]
    return sets


def psnr8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two uint8 images."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _to8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def palette_size(x: torch.Tensor, level: int) -> int:
    """Distinct colours in type 6's palette for x (1, 3, H, W) at a level (after the first mapmm)."""
    from PIL import Image

    from dsmix_cli.distortions import compression, mapmm

    x8 = _to8(mapmm(x)[0]).permute(1, 2, 0).numpy()
    pal = compression.median_cut_palette(Image.fromarray(x8.copy()), int(level_value(6, level)))
    rgb = torch.tensor(pal.getpalette()).view(-1, 3)  # Pillow keeps the palette at the colours it made
    return int(torch.unique(rgb, dim=0).shape[0])


def measure(paths: list[Path], types: tuple[int, ...] = TYPES) -> dict:
    """Per type and level: mean PSNR to the reference, and (type 6) the distinct-colour counts.

    Returns:
        {"<type>": {"psnr": [level 1..5 mean dB], "psnr_per_image": [[...5] per image],
        "colours": [[...5] per image] (type 6 only)}, "images": [names], "seconds": s}.
    """
    start = time.perf_counter()
    refs = [load_rgb_tensor(p) for p in paths]
    out: dict = {"images": [p.name for p in paths]}
    for t in types:
        per_image, colours, palettes = [], [], []
        for ref8 in refs:
            x = ref8.unsqueeze(0).float().div(255.0)
            row, crow, prow = [], [], []
            for lv in range(1, NUM_LEVELS + 1):
                row.append(psnr8(_to8(distort(x, t, lv)[0]), ref8))
                if t == 6:
                    y8 = _to8(distort(x, t, lv, mapmm=False)[0])
                    crow.append(int(torch.unique(y8.reshape(3, -1), dim=1).shape[1]))
                    prow.append(palette_size(x, lv))
            per_image.append(row)
            if t == 6:
                colours.append(crow)
                palettes.append(prow)
        entry = {"psnr": [sum(r[lv] for r in per_image) / len(per_image) for lv in range(NUM_LEVELS)],
                 "psnr_per_image": per_image}
        if t == 6:
            entry["colours"] = colours
            entry["palette_colours"] = palettes
            entry["colours_requested"] = [int(level_value(6, lv)) for lv in range(1, NUM_LEVELS + 1)]
        out[str(t)] = entry
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def measure_all(sets: dict[str, list[Path]] | None = None, clive: Path | None = None) -> dict:
    """`measure` on every image set, keyed by set name."""
    sets = image_sets(clive) if sets is None else sets
    return {name: measure(paths) for name, paths in sets.items() if paths}


def compare(new: dict, record: dict, tolerance: float = TOLERANCE_DB) -> list[dict]:
    """One row per (set, type, level) present in both: the recorded and new mean PSNR, the
    difference, and whether it holds (|difference| <= tolerance; type 6 also: exactly n colours
    in every output where the record had exactly n)."""
    rows = []
    for name, sets in new.items():
        old = record.get("sets", {}).get(name)
        if old is None or old.get("images") != sets.get("images"):
            continue
        for t in TYPES:
            a, b = old.get(str(t)), sets.get(str(t))
            if a is None or b is None:
                continue
            for lv in range(NUM_LEVELS):
                diff = b["psnr"][lv] - a["psnr"][lv]
                ok = abs(diff) <= tolerance
                row = {"set": name, "type": t, "level": lv + 1, "record_db": a["psnr"][lv], "new_db": b["psnr"][lv],
                       "diff_db": diff, "pass": ok}
                if t == 6:
                    n = a["colours_requested"][lv]
                    exact_before = sum(c[lv] == n for c in a["colours"])
                    exact_now = sum(c[lv] == n for c in b["colours"])
                    pal_exact = sum(c[lv] == n for c in b.get("palette_colours", []))
                    row.update(exactly_n_record=exact_before, exactly_n_new=exact_now, images=len(b["colours"]),
                               palette_exactly_n=pal_exact, at_most_n=all(c[lv] <= n for c in b["colours"]))
                    row["pass"] = ok and pal_exact == len(b["colours"]) and row["at_most_n"]
                rows.append(row)
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", help="write a new record here instead of comparing")
    parser.add_argument("--against", default=str(RECORD), help="the record to compare with")
    parser.add_argument("--clive", help="CLIVE's ChallengeDB_release/Images folder (default: found next to "
                                        "the checkout when there)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure_all(clive=Path(args.clive) if args.clive else None)
    if args.record:
        from dsmix_cli.fileio import write_json

        write_json(args.record, {"commit": _commit(), "clive_step": CLIVE_STEP, "sets": result})
        for name, sets in result.items():
            for t in TYPES:
                print(name, t, " ".join(f"{v:.2f}" for v in sets[str(t)]["psnr"]))
        return 0
    rows = compare(result, json.loads(Path(args.against).read_text(encoding="utf-8")))
    for r in rows:
        extra = f"  palette of n colours: {r['palette_exactly_n']}/{r['images']}; outputs with exactly n: " \
                f"{r['exactly_n_new']}/{r['images']} (record {r['exactly_n_record']})" if r["type"] == 6 else ""
        print(f"{r['set']:<6}{r['type']:>3}{r['level']:>3}  {r['record_db']:7.2f} -> {r['new_db']:7.2f} dB "
              f"({r['diff_db']:+.2f}) {'ok' if r['pass'] else 'FAIL'}{extra}")
    return 0 if rows and all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
