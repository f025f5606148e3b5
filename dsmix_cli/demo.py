"""`dsmix demo`: the whole pipeline at toy scale, on CPU, on six small images shipped with the package.

What it runs, in order, each through its stage's engine (no subprocesses), all in `--out`:

1. cut the shipped images (`dsmix_cli/assets/demo/`, public domain / CC0, sources in its
   LICENSES.md) into 80x80 patches: half become the pre-training references, the other half are
   held out;
2. `synthesize` KADID-style distorted images of the pre-training references (4 types x 5 levels);
3. `make-gt-dsm` their ground-truth DSMs;
4. `pretrain-dsm` a one-block ViT-B/8 (random init) for a few steps on those maps;
5. `qep` a random-init ResNet-18 for two epochs with DSMix labels from that DSM network;
6. `synthesize` the held-out references the same way, and give each image the score
   `6 - level` (5 = the mildest distortion, 1 = the strongest): a synthetic "MOS";
7. `probe` the qep encoder on two thirds of the held-out references (3 splits, by reference);
8. `evaluate` the probed model on the last third (references neither qep nor the head saw);
9. `score` the six shipped images and two held-out distorted images.

The numbers are toy-scale: they show that the stages fit together, not what the method achieves.

The probe heads read the encoder's features as they are (`feature_norm=False`, the paper's plain
head). The toy encoder is a barely trained random network: some of its feature dimensions hardly
vary over the demo's 160 training images, and standardising them by that tiny spread turns
small differences on any other image into scores far outside the 0..1 label scale (-5 and
below were seen). Unstandardised, the scores stay within about 0.1..0.8 on the held-out and
shipped images.

Defaults: the stages record their runs as defaults (the chain of defaults: each stage becomes
the next one's default). The demo points `$DSMIX_HOME` at `OUT/home` while it runs and clears
`$DSMIX_DSM_MODEL`, `$DSMIX_ENCODER` and `$DSMIX_MODEL`, so the user's own recorded DSM model and
encoder are never touched. With `record_default=True` (the CLI's default: `dsmix score` uses the
model of the last `probe` or `demo`) it records its probed model as the user's default model
afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from dsmix_cli.errors import DsmixError
from dsmix_cli.fileio import atomic_open, write_json
from dsmix_cli.imageio import is_image_file, load_rgb_tensor, save_image_atomic

TOY_NOTICE = ("these numbers are TOY-SCALE: networks with random initialisation trained for a few dozen steps on "
              "a few dozen 80x80 patches of six images, with synthetic scores (6 - distortion level). They show "
              "that the pipeline runs end to end, not how well DSMix works; see docs/reproducing.md for the "
              "paper's protocol.")
_ENV_DEFAULTS = ("DSMIX_DSM_MODEL", "DSMIX_ENCODER", "DSMIX_MODEL")


@dataclass
class DemoConfig:
    """The demo's knobs (the defaults keep it to a few minutes on 2 CPU cores)."""

    out: str
    device: str = "cpu"
    record_default: bool = False
    seed: int = 0
    patch: int = 80
    patches_per_image: int = 4
    image_size: int = 64
    types: list[int] = field(default_factory=lambda: [1, 10, 11, 21])  # blur, JPEG, white noise, pixelate
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    dsm_steps: int = 8
    qep_epochs: int = 2
    batch_size: int = 16
    probe_epochs: int = 40
    probe_splits: int = 3
    probe_feature_norm: bool = False  # standardised features put a toy encoder's scores far off scale
    eval_fraction: float = 1 / 3


def demo_images() -> list[Path]:
    """The shipped demo images, sorted."""
    folder = Path(str(importlib.resources.files("dsmix_cli") / "assets" / "demo"))
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise DsmixError("the demo images are missing from the installed package", folder)
    return images


@contextlib.contextmanager
def private_home(home: Path) -> Iterator[None]:
    """Run with `$DSMIX_HOME=home` and without the default-overriding variables; restore after."""
    saved = {k: os.environ.get(k) for k in ("DSMIX_HOME", *_ENV_DEFAULTS)}
    os.environ["DSMIX_HOME"] = str(home)
    for k in _ENV_DEFAULTS:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cut_patches(images: list[Path], out_a: Path, out_b: Path, size: int, per_image: int) -> tuple[int, int]:
    """Cut up to `per_image` non-overlapping size x size patches from each image (row-major grid);
    even-numbered patches go to `out_a`, odd ones to `out_b`. Returns the two counts."""
    counts = [0, 0]
    for img_path in images:
        img = load_rgb_tensor(img_path)
        h, w = img.shape[-2:]
        k = 0
        for top in range(0, h - size + 1, size):
            for left in range(0, w - size + 1, size):
                if k >= per_image:
                    break
                dest = (out_a, out_b)[k % 2]
                save_image_atomic(img[:, top:top + size, left:left + size], dest / f"{img_path.stem}_p{k}.png")
                counts[k % 2] += 1
                k += 1
    return counts[0], counts[1]


def _labels(folder: Path, refs: set[str], dest: Path) -> int:
    """A `name,score,ref` CSV of the synthesized images of `refs`: score = 6 - level."""
    rows = []
    with (folder / "dist_imgs.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            ref = Path(r["ref_img"]).stem
            if ref in refs:
                rows.append((r["dist_img"], 6 - int(r["level"]), ref))
    with atomic_open(dest, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", "score", "ref"])
        w.writerows(rows)
    return len(rows)


def run_demo(cfg: DemoConfig, on_info: Callable[[str], None] | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run every stage at toy scale in `cfg.out`; returns the probe results, evaluation and scores.

    Raises:
        DsmixError: `cfg.out` exists and is not empty.
    """
    from dsmix_cli.defaults import record_default
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import evaluate_model, score_images
    from dsmix_cli.data.catalog import load_dataset
    from dsmix_cli.stages.make_gt_dsm import MakeGtConfig, make_gt_dsm
    from dsmix_cli.stages.pretrain_dsm import PretrainDSMConfig, run_pretrain_dsm
    from dsmix_cli.stages.probe import ProbeConfig, run_probe
    from dsmix_cli.stages.qep import QEPConfig, run_qep
    from dsmix_cli.synthesize import SynthesizeConfig, synthesize

    say = on_info or (lambda _m: None)
    tick = on_progress or (lambda *_a: None)
    out = Path(cfg.out).absolute()
    if out.exists() and any(out.iterdir()):
        raise DsmixError("--out must be a new or empty folder (the demo writes several runs into it)", out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def done(stage: str, start: float) -> None:
        timings[stage] = round(time.perf_counter() - start, 1)
        say(f"demo: {stage} done in {timings[stage]:.1f} s")

    with private_home(out / "home"):
        t = time.perf_counter()
        refs_qep, refs_held = out / "refs" / "pretrain", out / "refs" / "heldout"
        refs_qep.mkdir(parents=True)
        refs_held.mkdir(parents=True)
        n_qep, n_held = cut_patches(demo_images(), refs_qep, refs_held, cfg.patch, cfg.patches_per_image)
        say(f"demo: {n_qep} pre-training and {n_held} held-out {cfg.patch}x{cfg.patch} reference patches "
            f"from the {len(demo_images())} shipped images")
        syn = dict(types=list(cfg.types), levels=list(cfg.levels), workers=1, device=cfg.device, seed=cfg.seed)
        synthesize(SynthesizeConfig(refs=refs_qep, out=out / "pretrain-data", **syn))
        done("synthesize", t)

        t = time.perf_counter()
        make_gt_dsm(MakeGtConfig(data=out / "pretrain-data", out=out / "gt-dsm", pool=8))
        done("make-gt-dsm", t)

        t = time.perf_counter()
        run_pretrain_dsm(PretrainDSMConfig(
            data=out / "pretrain-data", out=out / "dsm", image_size=cfg.image_size, pretrained=False, depth=1,
            epochs=1, batch_size=cfg.batch_size, max_steps=cfg.dsm_steps, gt_maps=out / "gt-dsm", workers=0,
            device=cfg.device, seed=cfg.seed, val_max_images=32, preview_images=2, log_every=1),
            on_progress=lambda p: tick("pretrain-dsm", p["step"], p["total"]))
        done("pretrain-dsm", t)

        t = time.perf_counter()
        run_qep(QEPConfig(out=out / "qep", data=out / "pretrain-data", dsm_source="model", dsm_model=str(out / "dsm"),
                          arch="resnet18", pretrained=False, image_size=cfg.image_size, batch_size=cfg.batch_size,
                          epochs=cfg.qep_epochs, workers=0, device=cfg.device, seed=cfg.seed, log_every=1),
                on_progress=lambda p: tick("qep", p["step"], p["total"]))
        done("qep", t)

        t = time.perf_counter()
        synthesize(SynthesizeConfig(refs=refs_held, out=out / "heldout-data", **syn))
        held = sorted(p.stem for p in refs_held.iterdir())
        n_eval = max(1, round(len(held) * cfg.eval_fraction))
        probe_refs, eval_refs = set(held[n_eval:]), set(held[:n_eval])
        n_probe = _labels(out / "heldout-data", probe_refs, out / "heldout-data" / "probe.csv")
        n_evalimg = _labels(out / "heldout-data", eval_refs, out / "heldout-data" / "evaluate.csv")
        done("synthesize held-out", t)

        t = time.perf_counter()
        probe = run_probe(ProbeConfig(
            encoder=str(out / "qep"), dataset="csv", csv=str(out / "heldout-data" / "probe.csv"), out=str(out / "probe"),
            splits=cfg.probe_splits, epochs=cfg.probe_epochs, image_size=cfg.image_size, train_views=2,
            batch_size=cfg.batch_size, device=cfg.device, seed=cfg.seed, feature_norm=cfg.probe_feature_norm),
            on_progress=tick, on_info=say)
        done("probe", t)

        t = time.perf_counter()
        model = load_bundle(out / "probe", cfg.device)
        evaluation = evaluate_model(model, load_dataset("csv", None, csv=out / "heldout-data" / "evaluate.csv"))
        shown = demo_images() + sorted((out / "heldout-data" / "dist_imgs").glob(f"{held[0]}_*_01.png"))[:1] \
            + sorted((out / "heldout-data" / "dist_imgs").glob(f"{held[0]}_*_05.png"))[:1]
        scores = [{"path": str(s.path), "score": s.score} for s in score_images(model, shown)]
        done("evaluate and score", t)

    if cfg.record_default:
        record_default("model", out / "probe")
    summary_rows = [
        ("probe median SRCC / PLCC (held-out refs, 3 splits)",
         f"{probe['median']['srcc']:.3f} / {probe['median']['plcc']:.3f}"),
        (f"evaluate SRCC / PLCC ({evaluation['n']} images of {len(eval_refs)} unseen refs)",
         f"{evaluation['srcc']:.3f} / {evaluation['plcc']:.3f}"),
        ("score scale (the training labels')", "0 worst .. 1 best"),
        *((f"score {Path(s['path']).name}", f"{s['score']:.3f}") for s in scores),
        ("seconds", f"{time.perf_counter() - t0:.0f}"),
    ]
    result = {
        "out": str(out), "probe": probe, "evaluate": evaluation, "scores": scores, "timings_s": timings,
        "images": {"pretrain_refs": n_qep, "heldout_refs": n_held, "probe_images": n_probe,
                   "evaluate_images": n_evalimg},
        "score_rule": "held-out synthetic scores: 6 - distortion level (5 = mildest, 1 = strongest)",
        "model": str(out / "probe"), "recorded_default": cfg.record_default, "config": asdict(cfg),
        "toy_notice": TOY_NOTICE, "summary_rows": summary_rows,
    }
    write_json(out / "demo.json", result)
    return result
