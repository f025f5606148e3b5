"""`probe --protocol all` against single protocols: one feature cache for three protocols.

    python benchmarks/bench_protocols.py --json benchmarks/results/protocols-cpu.json

Runs `stages.probe.run_probe` on a scored dataset (default: CLIVE from `--root`, else
`$DSMIX_DATA/clive`, with `--skip-missing` for a partial copy; a random ResNet-18 at 224, 10 splits,
the paper's 100 epochs) once per
protocol named in `--protocols` and once with `--protocol all`, each from an empty feature cache,
then `all` again on its warm cache (only the heads run). Figures, from the stage's own
`seconds.total` (features, heads, splits; not the dataset and encoder loading):

* `all_over_dsmix`: `all` / `dsmix` alone (the acceptance line: below 1.5);
* `all_over_slowest`: `all` / the slowest single protocol;
* `all_over_sum`: `all` / the sum of the single protocols (what three separate runs cost);
* `warm_all_over_cold_all`: the second `all` / the first (the heads' share);
* `cpu_all_over_dsmix`: the same as `all_over_dsmix` in the process's CPU seconds (dataset and
  encoder loading included), which other jobs on a shared machine disturb far less than wall time.

`$DSMIX_HOME` points into the work folder, so no default model of the user is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_protocols(*, dataset: str = "clive", root: Path | None = None, csv: Path | None = None,
                    encoder: str = "random:resnet18", image_size: int = 224, splits: int = 10,
                    epochs: int | None = None, protocols=("dsmix", "arniqa", "contrique"), device: str = "cpu",
                    work: Path | None = None, log=print) -> dict:
    """Time each protocol alone and `all`, each on a cold feature cache, then `all` warm."""
    from dsmix_cli.stages.probe import ProbeConfig, run_probe

    work = Path(work or tempfile.mkdtemp(prefix="dsmix-bench-protocols-"))
    old_home = os.environ.get("DSMIX_HOME")
    os.environ["DSMIX_HOME"] = str(work / "home")
    base = ProbeConfig(encoder=encoder, dataset=dataset, out="", root=str(root) if root else None,
                       csv=str(csv) if csv else None, splits=splits, epochs=epochs, image_size=image_size,
                       device=device, skip_missing=True, record=False)
    runs = {}
    try:
        for name in (*protocols, "all", "all-warm"):
            proto = "all" if name.startswith("all") else name
            cache = work / ("cache-all" if proto == "all" else f"cache-{name}")
            t0, c0 = time.perf_counter(), time.process_time()
            res = run_probe(replace(base, protocol=proto, out=str(work / name), cache_dir=str(cache)))
            runs[name] = {"stage_seconds": res["seconds"]["total"], "features_seconds": res["seconds"]["features"],
                          "wall_seconds": round(time.perf_counter() - t0, 2),
                          "cpu_seconds": round(time.process_time() - c0, 2),
                          "encoded": res["feature_cache"]["encoded"], "read": res["feature_cache"]["read"],
                          "median_srcc": ({r["protocol"]: r["srcc"] for r in res["table"]} if "table" in res
                                          else {name: res["median"]["srcc"]}),
                          "n_images": res["n_images"]}
            log(f"{name}: {runs[name]['stage_seconds']:.1f} s, cpu {runs[name]['cpu_seconds']:.1f} s (features {runs[name]['features_seconds']:.1f} s, "
                f"encoded {runs[name]['encoded']}, read {runs[name]['read']})")
    finally:
        if old_home is None:
            os.environ.pop("DSMIX_HOME", None)
        else:
            os.environ["DSMIX_HOME"] = old_home
    single = {p: runs[p]["stage_seconds"] for p in protocols}
    all_s = runs["all"]["stage_seconds"]
    figures = {"all_over_slowest": all_s / max(single.values()), "all_over_sum": all_s / sum(single.values()),
               "warm_all_over_cold_all": runs["all-warm"]["stage_seconds"] / all_s}
    if "dsmix" in single:
        figures["all_over_dsmix"] = all_s / single["dsmix"]
        # CPU seconds of the process: the same work measured apart from other jobs' load on a shared machine
        figures["cpu_all_over_dsmix"] = runs["all"]["cpu_seconds"] / runs["dsmix"]["cpu_seconds"]
    return {"figures": figures, "runs": runs,
            "settings": {"dataset": dataset, "root": str(root) if root else None, "encoder": encoder,
                         "image_size": image_size, "splits": splits, "epochs": epochs or "the paper's",
                         "device": device, "protocols": list(protocols)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="clive")
    ap.add_argument("--root", type=Path, default=None, help="dataset folder (default: $DSMIX_DATA/<name>)")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--encoder", default="random:resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--protocols", default="dsmix,arniqa,contrique")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    record = bench_protocols(dataset=args.dataset, root=args.root, csv=args.csv, encoder=args.encoder,
                             image_size=args.image_size, splits=args.splits, epochs=args.epochs,
                             protocols=tuple(p for p in args.protocols.split(",") if p), device=args.device,
                             work=args.work, log=lambda m: print(m, file=sys.stderr, flush=True))
    record["environment"] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                             "cpu_count": os.cpu_count(), "load_average_at_start": load,
                             "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    record["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = json.dumps(record, indent=2) + "\n"
    if args.json and args.json != "-":
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    else:
        sys.stdout.write(text)
    for k, v in record["figures"].items():
        print(f"{k}: {v:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
