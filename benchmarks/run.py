"""The dsmix benchmark suite: every figure of docs/performance.md, measured in one run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] --json results.json

Figures (each measured in this run, on this machine):

* `distortions_cpu` (and `distortions_cuda` on a GPU): images/s per distortion type at 384x512,
  level 3, batched (`bench_distortions.bench_distortions`), keyed by type number.
* `synthesize_images_per_cpu_s`: `dsmix synthesize` end to end in KADIS mode (every type, five
  levels per reference, BMP), images per CPU second of the process (`bench_distortions.bench_synthesize`,
  one torch thread and one worker). The full per-type record, with a public port side by side,
  is `python benchmarks/bench_distortions.py` (docs/performance.md).
* `dsmix_overhead_fraction`: DSMix (box sampling, pasting, `mix_weights`, soft targets) as a
  fraction of a whole QEP training step (`bench_dsmix.bench_dsmix_overhead`).
* `probe_cache_speedup`: `dsmix probe` with cached features vs `--fresh-crops` (re-encoding a new
  crop of every training image every epoch), same epochs, splits and crop size, on the same small
  scored set; both through `stages.probe.run_probe`, timed by the stage (`seconds.total`).
* `qep_gt_images_per_s`, `qep_model_images_per_s`, `pretrain_dsm_images_per_s`: the stage
  engines (`run_qep`, `run_pretrain_dsm`) run for a few steps on synthetic data; the rate is the
  engine's own `samples_per_s` (metrics.jsonl) after warm-up steps. QEP counts the student's
  images (B distorted + B references per step); `qep_*_distorted_per_s` is half of it.
* `score_images_per_s`: `evaluation.score.score_images` (decode, five test crops, encoder, head)
  with the bundle of the cached probe run.

On CPU the models and images are small (the settings are in the JSON); on CUDA the stages run the
paper's models at 224 px (ViT-B/8 and ResNet-50, random weights: speed does not depend on them).
Synthetic references are written to a temporary folder (`--work DIR` keeps them);
`$DSMIX_HOME` points there during the run, so no default model of the user is touched. On an
oversubscribed CPU (load average above the core count) torch runs on one thread unless
`--threads N` says otherwise (see `choose_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from bench_distortions import bench_distortions, bench_synthesize  # noqa: E402
from bench_dsmix import bench_dsmix_overhead  # noqa: E402
from machine import cpu_name  # noqa: E402

PARTS = ("distortions", "dsmix", "pretrain_dsm", "qep", "probe", "score")
FIGURES = ("distortions_cpu", "synthesize_images_per_cpu_s", "dsmix_overhead_fraction", "probe_cache_speedup",
           "qep_gt_images_per_s",
           "qep_model_images_per_s", "pretrain_dsm_images_per_s", "score_images_per_s")
THRESHOLDS = {"dsmix_overhead_fraction": ("<=", 0.05), "probe_cache_speedup": (">=", 10.0)}


@dataclass
class Settings:
    """What each part runs; `settings_for` gives the standard ones (recorded in the JSON)."""

    dist_size: tuple[int, int] = (384, 512)   # (H, W) of the distortion benchmark
    dist_batch: int = 8
    dist_repeats: int = 3
    dist_quick: bool = False                  # bench_distortions' smoke mode (batch 2, one call)
    synth_per_type: int = 2                   # synthesize: references per type (5 images each)
    dsmix_batch: int = 110
    dsmix_size: int = 224
    dsmix_arch: str = "resnet50"
    dsmix_quick: bool = False
    refs: int = 64                            # synthetic references (QEP crops, synthesize, pretrain-dsm)
    ref_hw: tuple[int, int] = (384, 512)
    pair_types: tuple[int, ...] = (1, 11, 16, 18)  # synthesized for pretrain-dsm (cheap types)
    pair_levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    qep_arch: str = "resnet50"
    qep_size: int = 224
    qep_batch: int = 110
    qep_warmup: int = 10                      # engine steps not counted
    qep_steps: int = 30                       # engine steps counted
    dsm_arch: str = "vit_base_patch8_224"
    dsm_depth: int | None = None              # None: the architecture's depth
    dsm_size: int = 224
    dsm_batch: int = 40
    dsm_warmup: int = 5
    dsm_steps: int = 20
    probe_images: int = 24                    # the scored set: CLIVE-sized JPEGs (500x500)
    probe_hw: tuple[int, int] = (500, 500)
    probe_arch: str = "resnet50"              # used when no QEP encoder was made in the run
    probe_size: int = 224
    probe_epochs: int = 100                   # the paper's for LIVE/CSIQ/CLIVE
    probe_splits: int = 10                    # the paper's (and `dsmix probe`'s default)
    probe_train_views: int = 4                # `dsmix probe`'s default
    probe_workers: int = 0                    # fresh crops build a new loader every epoch
    score_images: int = 1024
    score_batch: int = 64
    workers: int = 8
    channels_last: bool = True


def settings_for(device: torch.device, quick: bool) -> Settings:
    """The paper's models at 224 on CUDA; small models and images on CPU (quick: a few minutes)."""
    if device.type == "cuda":
        workers = max(1, min(8, (os.cpu_count() or 2) - 2))
        s = Settings(workers=workers)
        if quick:
            s = replace(s, qep_warmup=5, qep_steps=15, dsm_warmup=3, dsm_steps=10, score_images=512,
                        dist_repeats=2)
        return s
    s = Settings(dsmix_batch=32, dsmix_size=224, refs=16, ref_hw=(128, 160), pair_types=(1, 11),
                 pair_levels=(1, 3, 5), qep_arch="resnet18", qep_size=64, qep_batch=16, qep_warmup=2, qep_steps=6,
                 dsm_arch="vit_small_patch8_224", dsm_depth=4, dsm_size=64, dsm_batch=8, dsm_warmup=2,
                 dsm_steps=6, probe_images=16, probe_arch="resnet18", probe_size=64, score_images=64, score_batch=16,
                 workers=0, channels_last=False)
    if quick:
        s = replace(s, dist_quick=True, synth_per_type=1, dsmix_quick=True, refs=12, qep_batch=8, qep_steps=4,
                    dsm_depth=2, dsm_batch=4, dsm_steps=4, probe_images=8, score_images=32)
    return s


# ------------------------------------------------------------------------------------ data

def make_references(folder: Path, n: int, hw: tuple[int, int], seed: int = 0) -> list[Path]:
    """`n` smooth random colour images with some texture (PNG), like downscaled photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = hw
    paths = []
    for i in range(n):
        coarse = (rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"ref{i:04d}.png"
        Image.fromarray(img).save(path, compress_level=1)
        paths.append(path)
    return paths


def make_scored_set(folder: Path, n: int, hw: tuple[int, int], seed: int = 1) -> list[Path]:
    """`n` photo-like JPEG images (quality 90), the shape of a CLIVE image by default."""
    pngs = make_references(folder / "_png", n, hw, seed)
    paths = []
    for p in pngs:
        out = folder / (p.stem.replace("ref", "img") + ".jpg")
        Image.open(p).save(out, quality=90)
        p.unlink()
        paths.append(out)
    (folder / "_png").rmdir()
    return paths


def write_labels(csv: Path, paths: list[Path], seed: int = 0) -> Path:
    """A `name,score` CSV (names relative to the CSV's folder) with random scores in [0, 100]."""
    rng = np.random.default_rng(seed + 1)
    rows = ["name,score"] + [f"{p.relative_to(csv.parent).as_posix()},{rng.uniform(0, 100):.3f}" for p in paths]
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv


def engine_rate(run_dir: Path, warmup: int) -> dict:
    """Images/s of the steps after `warmup`, from the engine's metrics.jsonl (log_every=1)."""
    seconds = 0.0
    steps = 0
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("samples_per_s") and rec["step"] > warmup:
            # log_every=1: a record covers one step of a fixed batch, so the mean rate over the
            # timed steps is steps / sum(1 / rate) (total images over total time).
            seconds += 1.0 / float(rec["samples_per_s"])
            steps += 1
    if not steps:
        raise RuntimeError(f"no timed steps after {warmup} warm-up steps in {run_dir / 'metrics.jsonl'}")
    return {"steps": steps, "images_per_s": steps / seconds}


# ------------------------------------------------------------------------------------ parts

def part_pairs(work: Path, s: Settings, device: torch.device) -> dict:
    """Distorted pairs for pretrain-dsm, written by `dsmix synthesize`'s engine (BMP, as KADIS)."""
    from dsmix_cli.synthesize import SynthesizeConfig, synthesize

    cfg = SynthesizeConfig(refs=work / "refs", out=work / "pairs", types=list(s.pair_types),
                           levels=list(s.pair_levels), fmt="bmp", workers=max(1, s.workers),
                           device=str(device), batch_size=16)
    res = synthesize(cfg)
    return {"pairs": res.written, "seconds": res.seconds}


def part_pretrain_dsm(work: Path, s: Settings, device: torch.device) -> dict:
    from dsmix_cli.stages.pretrain_dsm import PretrainDSMConfig, run_pretrain_dsm

    out = work / "pretrain_dsm"
    total = s.dsm_warmup + s.dsm_steps
    cfg = PretrainDSMConfig(data=work / "pairs", out=out, arch=s.dsm_arch, image_size=s.dsm_size, pretrained=False,
                            depth=s.dsm_depth, epochs=1, batch_size=s.dsm_batch, val_fraction=0.0,
                            workers=s.workers, device=str(device), max_steps=total, log_every=1,
                            checkpoint_every=10**9, preview_images=1, channels_last=False)
    res = run_pretrain_dsm(cfg)
    if res.total_steps < total:
        raise RuntimeError(f"only {res.total_steps} steps per epoch: an epoch end would fall in the timed steps")
    rate = engine_rate(out, s.dsm_warmup)
    return {"images_per_s": rate["images_per_s"], "timed_steps": rate["steps"], "weights": res.weights}


def part_qep(work: Path, s: Settings, device: torch.device, dsm_source: str, dsm_model: Path | None) -> dict:
    from dsmix_cli.stages.qep import QEPConfig, run_qep

    out = work / f"qep_{dsm_source}"
    total = s.qep_warmup + s.qep_steps
    cfg = QEPConfig(out=out, refs=work / "refs", on_the_fly=True, epoch_size=s.qep_batch * (total + 1),
                    dsm_source=dsm_source, dsm_model=str(dsm_model) if dsm_source == "model" else None,
                    arch=s.qep_arch, pretrained=False, epochs=1, batch_size=s.qep_batch, image_size=s.qep_size,
                    workers=s.workers, channels_last=s.channels_last, device=str(device), max_steps=total,
                    log_every=1, checkpoint_every=10**9)
    run_qep(cfg)
    rate = engine_rate(out, s.qep_warmup)
    return {"images_per_s": rate["images_per_s"], "distorted_per_s": rate["images_per_s"] / 2,
            "timed_steps": rate["steps"], "run": out.name}


def part_probe(work: Path, s: Settings, device: torch.device, encoder: str) -> dict:
    """The same probe twice: cached features (the default) and `fresh_crops` (re-encode every epoch)."""
    from dsmix_cli.stages.probe import ProbeConfig, run_probe

    base = ProbeConfig(encoder=encoder, dataset="csv", csv=str(work / "labels.csv"), out="", splits=s.probe_splits,
                       epochs=s.probe_epochs, image_size=s.probe_size, train_views=s.probe_train_views,
                       device=str(device), workers=s.probe_workers, final_head=False, record=False,
                       feature_cache=False)  # in memory only: the fresh run must not read the cached run's crops
    times = {}
    for name, fresh in (("cached", False), ("fresh", True)):
        t0 = time.perf_counter()
        res = run_probe(replace(base, out=str(work / f"probe_{name}"), fresh_crops=fresh))
        times[name] = {"stage_seconds": res["seconds"]["total"], "wall_seconds": time.perf_counter() - t0}
    return {"speedup": times["fresh"]["stage_seconds"] / times["cached"]["stage_seconds"], **times,
            "encoder": encoder.replace(str(work), "<work>"), "bundle": work / "probe_cached"}


def part_score(work: Path, s: Settings, device: torch.device, bundle: Path, paths: list[Path]) -> dict:
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import score_images

    model = load_bundle(bundle, device)
    todo = [paths[i % len(paths)] for i in range(s.score_images)]
    score_images(model, todo[: s.score_batch], batch_size=s.score_batch, workers=s.workers)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    scored = score_images(model, todo, batch_size=s.score_batch, workers=s.workers)
    dt = time.perf_counter() - t0
    bad = [r for r in scored if r.error]
    if bad:
        raise RuntimeError(f"{len(bad)} images could not be scored: {bad[0].error}")
    return {"images_per_s": len(todo) / dt, "images": len(todo), "seconds": dt}


# ------------------------------------------------------------------------------------ suite

def environment(device: torch.device) -> dict:
    cpu = cpu_name()
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return env


def choose_threads(device: torch.device, threads: int | None) -> tuple[int, str]:
    """Torch's intra-op threads for the run, and why.

    By default torch's own choice, except on a CPU run of an oversubscribed machine (1-minute
    load average above the core count): there multi-threaded kernels wait on each other's
    descheduled threads and run many times slower than on one thread, so one thread is used.
    """
    if threads:
        return threads, "--threads"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if device.type == "cpu" and load > cores:
        return 1, f"machine oversubscribed (load average {load:.1f} > {cores} cores): one thread"
    return torch.get_num_threads(), "torch default"


def run_suite(device: str = "auto", quick: bool = False, settings: Settings | None = None,
              parts: tuple[str, ...] = PARTS, work: Path | None = None, threads: int | None = None,
              log=print) -> dict:
    """Run the chosen parts and return the result record (figures, details, settings, environment).

    A part that fails records its error under `errors` and the others still run.
    """
    from dsmix_cli.engine.runtime import resolve_device

    dev = resolve_device(device)
    s = settings or settings_for(dev, quick)
    old_threads = torch.get_num_threads()
    n_threads, why = choose_threads(dev, threads)
    torch.set_num_threads(n_threads)
    result: dict = {"device": str(dev), "quick": quick, "timestamp": datetime.now(timezone.utc).isoformat(),
                    "environment": {**environment(dev), "threads_reason": why}, "settings": asdict(s),
                    "details": {}, "errors": {}}
    log(f"device {dev}, {n_threads} torch thread(s) ({why})")
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="dsmix-bench-")
        work = Path(tmp.name)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    old_home = os.environ.get("DSMIX_HOME")
    os.environ["DSMIX_HOME"] = str(work / "home")  # the stages record defaults: keep them here
    t_start = time.perf_counter()

    def attempt(name: str, fn):
        log(f"[{time.perf_counter() - t_start:6.1f}s] {name} ...")
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - record it and go on with the other parts
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(traceback.format_exc(limit=3))
            return None

    try:
        if "distortions" in parts:
            def dist(d):
                rates = bench_distortions(d, size=tuple(s.dist_size), batch=s.dist_batch, repeats=s.dist_repeats,
                                          quick=s.dist_quick)
                return {int(t): float(r) for t, r in rates.items()}
            result["distortions_cpu"] = attempt("distortions_cpu", lambda: dist(torch.device("cpu")))
            r = attempt("synthesize", lambda: bench_synthesize(per_type=s.synth_per_type, size=tuple(s.dist_size),
                                                               work=work / "synthesize"))
            if r:
                result["synthesize_images_per_cpu_s"] = r["images_per_cpu_s"]
                result["details"]["synthesize"] = r
            if dev.type == "cuda":
                result["distortions_cuda"] = attempt("distortions_cuda", lambda: dist(dev))
        if "dsmix" in parts:
            r = attempt("dsmix_overhead", lambda: bench_dsmix_overhead(dev, batch=s.dsmix_batch, size=s.dsmix_size,
                                                                       arch=s.dsmix_arch, quick=s.dsmix_quick))
            if r:
                result["dsmix_overhead_fraction"] = r["dsmix_overhead_fraction"]
                result["details"]["dsmix_overhead"] = r
        if set(parts) & {"pretrain_dsm", "qep"}:
            make_references(work / "refs", s.refs, tuple(s.ref_hw))
        dsm_weights = None
        if "pretrain_dsm" in parts:
            if attempt("synthesize pairs", lambda: result["details"].setdefault("pairs", part_pairs(work, s, dev))):
                r = attempt("pretrain_dsm", lambda: part_pretrain_dsm(work, s, dev))
                if r:
                    result["pretrain_dsm_images_per_s"] = r["images_per_s"]
                    result["details"]["pretrain_dsm"] = r
                    dsm_weights = r.pop("weights")
        encoder = f"random:{s.probe_arch}"
        if "qep" in parts:
            for source in ("gt", "model"):
                if source == "model" and dsm_weights is None:
                    result["errors"].setdefault("qep_model", "skipped: needs the pretrain_dsm part's DSM network")
                    continue
                r = attempt(f"qep ({source} DSMs)", lambda: part_qep(work, s, dev, source, dsm_weights))
                if r:
                    result[f"qep_{source}_images_per_s"] = r["images_per_s"]
                    result[f"qep_{source}_distorted_per_s"] = r["distorted_per_s"]
                    result["details"][f"qep_{source}"] = r
            if (work / "qep_gt" / "encoder.safetensors").is_file():
                encoder = str(work / "qep_gt")
        bundle = None
        if "probe" in parts or "score" in parts:
            paths = make_scored_set(work / "scored", s.probe_images, tuple(s.probe_hw))
            write_labels(work / "labels.csv", paths)
            r = attempt("probe (cached vs fresh crops)", lambda: part_probe(work, s, dev, encoder))
            if r:
                result["probe_cache_speedup"] = r["speedup"]
                result["details"]["probe"] = r
                bundle = r.pop("bundle")
        if "score" in parts and bundle is not None:
            r = attempt("score", lambda: part_score(work, s, dev, bundle, paths))
            if r:
                result["score_images_per_s"] = r["images_per_s"]
                result["details"]["score"] = r
    finally:
        torch.set_num_threads(old_threads)
        if old_home is None:
            os.environ.pop("DSMIX_HOME", None)
        else:
            os.environ["DSMIX_HOME"] = old_home
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["thresholds"] = {k: {"rule": f"{op} {v}", "value": result.get(k),
                                "pass": (None if result.get(k) is None else
                                         (result[k] <= v if op == "<=" else result[k] >= v))}
                            for k, (op, v) in THRESHOLDS.items()}
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the figures (what `run.py` prints)."""
    lines = [f"dsmix benchmarks on {result['device']} ({'quick' if result['quick'] else 'full'}), "
             f"{result['environment'].get('gpu') or result['environment']['cpu']}, torch "
             f"{result['environment']['torch']}, {result['seconds']} s"]

    def row(name: str, value, unit: str = "") -> None:
        text = "-" if value is None else (f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}")
        lines.append(f"  {name:<34}{text:>12} {unit}")

    for key in ("distortions_cpu", "distortions_cuda"):
        rates = result.get(key)
        if rates:
            from dsmix_cli.distortions import TYPE_NAMES

            h, w = result["settings"]["dist_size"]
            lines.append(f"{key} (images/s at {w}x{h}):")
            for t, r in sorted(rates.items(), key=lambda kv: int(kv[0])):
                row(f"{int(t):>2} {TYPE_NAMES[int(t)]}", r, "img/s")
    for name, unit in (("synthesize_images_per_cpu_s", "img per CPU s (KADIS mode, BMP)"),
                       ("dsmix_overhead_fraction", "of a QEP step"), ("probe_cache_speedup", "x"),
                       ("qep_gt_images_per_s", "img/s (B dist + B ref)"),
                       ("qep_model_images_per_s", "img/s (B dist + B ref)"),
                       ("pretrain_dsm_images_per_s", "img/s"), ("score_images_per_s", "img/s (5 crops each)")):
        row(name, result.get(name), unit)
    for k, t in result["thresholds"].items():
        lines.append(f"  threshold {k} {t['rule']}: {'-' if t['pass'] is None else ('pass' if t['pass'] else 'FAIL')}")
    for k, e in result["errors"].items():
        lines.append(f"  error in {k}: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quick", action="store_true", help="small settings (a few minutes on 2 CPU cores)")
    parser.add_argument("--json", dest="json_path", help="write the result record here ('-' = stdout)")
    parser.add_argument("--only", help=f"comma-separated parts to run (of {','.join(PARTS)})")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's, or 1 on an oversubscribed machine)")
    parser.add_argument("--work", help="keep the synthetic data and runs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.only.split(",")) if args.only else PARTS
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    from dsmix_cli.engine.runtime import resolve_device
    from dsmix_cli.errors import DsmixError

    try:
        resolve_device(args.device)
    except DsmixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_suite(args.device, args.quick, parts=parts, work=Path(args.work) if args.work else None,
                       threads=args.threads or None, log=log)
    if args.json_path:
        from dsmix_cli.fileio import write_json

        write_json(args.json_path, result)
    print(format_table(result), file=sys.stderr if args.json_path == "-" else sys.stdout)
    return 1 if result["errors"] and any(not v.startswith("skipped") for v in result["errors"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
