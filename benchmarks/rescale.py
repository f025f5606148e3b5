"""How far an on-the-fly crop is from "distort the whole image, then crop", per rescale choice.

    python benchmarks/rescale.py --images 12 --json benchmarks/results/rescale-clive.json

The MATLAB dispatcher rescales whole images to [0, 1] before and after each distortion. A crop
distorted on the fly can be rescaled:

* `crop`: by its own range, before and after (`qep --rescale crop`, the earlier behaviour);
* `image`: before by the whole reference's range (type 22 thresholding the whole image's
  histogram), after by `crop_out_range` ([fn(0), fn(1)] for the pointwise tone types, [0, 1]
  for the others): `qep --rescale image`, the default;
* `image, crop range after`: the same first rescale, the second by the crop's own distorted range;
* `image, exact after`: the second rescale by the whole distorted image's range, which only
  distorting the whole image gives (a check: it must be ~0 away from the border).

For every deterministic type and level, crops of CLIVE images (offsets on the 16-pixel JPEG
grid, no flip) are compared with the same crop of the whole distorted image, `--margin` pixels
away from the crop border (the filters' reach). Also: the mean ground-truth DSM of a crop at
type 18 level 3 (the identity between the two rescales), the "distortion-free difference".
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from learning import CLIVE  # noqa: E402

CHOICES = ("crop", "image", "image, crop range after", "image, exact after")


def compare(paths: list[Path], size: int, margin: int, crops: int, seed: int = 0) -> dict:
    """Mean and 99th-percentile |difference| per (type, choice), and the identity level's GT DSM."""
    from dsmix_cli.distortions import RANDOM_TYPES, TYPES, crop_out_range, distort, mapmm, whole_image_context
    from dsmix_cli.dsm.gt import gt_dsm
    from dsmix_cli.imageio import load_rgb_tensor, to_float

    g = torch.Generator().manual_seed(seed)
    diffs: dict[int, dict[str, list[np.ndarray]]] = {}
    identity = {"whole image, then crop": [], "crop": [], "image": []}
    inner = (slice(None), slice(None), slice(margin, size - margin), slice(margin, size - margin))
    for p in paths:
        u8 = load_rgb_tensor(p)[None]
        x = to_float(u8)
        value_range, hist = whole_image_context(u8)
        h, w = x.shape[-2:]
        boxes = [(int(torch.randint((h - size) // 16 + 1, (1,), generator=g)) * 16,
                  int(torch.randint((w - size) // 16 + 1, (1,), generator=g)) * 16) for _ in range(crops)]
        for t, spec in TYPES.items():
            if t in RANDOM_TYPES:
                continue
            extra = {"histogram": hist} if spec.histogram else {}
            for lv in range(1, 6):
                whole = distort(x, t, lv)
                z_whole = spec.fn(mapmm(x, value_range), [spec.levels[lv - 1]], None, **extra)
                exact = torch.stack([z_whole.min(), z_whole.max()]).view(1, 2)
                for top, left in boxes:
                    c = x[..., top:top + size, left:left + size]
                    want = whole[..., top:top + size, left:left + size]
                    z = spec.fn(mapmm(c, value_range), [spec.levels[lv - 1]], None, **extra)
                    own = torch.stack([z.min(), z.max()]).view(1, 2)
                    got = {"crop": distort(c, t, lv),
                           "image": mapmm(z, crop_out_range([t], [lv])).clamp(0, 1),
                           "image, crop range after": mapmm(z, own).clamp(0, 1),
                           "image, exact after": mapmm(z, exact).clamp(0, 1)}
                    for k, v in got.items():
                        diffs.setdefault(t, {}).setdefault(k, []).append((v - want)[inner].abs().flatten().numpy())
                    if t == 18 and lv == 3:
                        ref = c
                        identity["whole image, then crop"].append(float(gt_dsm(want, ref).mean()))
                        identity["crop"].append(float(gt_dsm(got["crop"], ref).mean()))
                        identity["image"].append(float(gt_dsm(got["image"], ref).mean()))
    out = {}
    for t, per in diffs.items():
        out[t] = {"name": TYPES[t].name}
        for k, arrs in per.items():
            a = np.concatenate(arrs)
            out[t][k] = {"mean": float(a.mean()), "p99": float(np.percentile(a, 99)), "max": float(a.max())}
    return {"per_type": out, "identity_gt_dsm_mean": {k: float(np.mean(v)) for k, v in identity.items()}}


def format_table(res: dict) -> str:
    lines = ["| type | " + " | ".join(f"{c} (mean / p99)" for c in CHOICES) + " |", "|---" * (len(CHOICES) + 1) + "|"]
    for t, row in sorted(res["per_type"].items(), key=lambda kv: int(kv[0])):
        cells = [f"{row[c]['mean']:.4f} / {row[c]['p99']:.3f}" for c in CHOICES]
        lines.append(f"| {t} {row['name']} | " + " | ".join(cells) + " |")
    lines.append("GT DSM mean at type 18 level 3: " + ", ".join(
        f"{k} {v:.4f}" for k, v in res["identity_gt_dsm_mean"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clive", type=Path, default=CLIVE)
    ap.add_argument("--images", type=int, default=12, help="CLIVE images (the first by name)")
    ap.add_argument("--sizes", default="64,224", help="crop sizes")
    ap.add_argument("--margin", type=int, default=12, help="pixels left out at the crop border")
    ap.add_argument("--crops", type=int, default=2, help="crops per image, type and level")
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args(argv)
    images = Path(args.clive) / "ChallengeDB_release" / "Images"
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() == ".jpg")[:args.images]
    record = {"images": [p.name for p in paths], "margin": args.margin, "crops": args.crops, "sizes": {},
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for size in (int(s) for s in args.sizes.split(",")):
        res = compare(paths, size, args.margin, args.crops)
        record["sizes"][str(size)] = res
        print(f"crop {size}, {len(paths)} CLIVE images, {args.margin} px margin")
        print(format_table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
