"""`dsmix make-gt-dsm` and `dsmix pretrain-dsm`: the DSM stage's commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (AllowOutsideRootOpt, AmpOpt, DeviceOpt, MaxStepsOpt, OutOpt, ResumeOpt, SeedOpt,
                                  SkipBadOpt, WorkersOpt, default_run_dir, finish_with_skipped, handle_errors,
                                  resumed_config)
from dsmix_cli.errors import DsmixError

_DATA_HELP = ("Pairs folder: a `dsmix synthesize` output (dist_imgs.csv), KADIS-700k (ref_imgs/, "
              "dist_imgs/, kadis700k_ref_imgs.csv) or KADID-10k (dmos.csv).")
DataOpt = Annotated[Path, typer.Option("--data", metavar="DIR", help=_DATA_HELP)]
OptionalDataOpt = Annotated[Optional[Path], typer.Option(
    "--data", metavar="DIR", help=_DATA_HELP + " Required, except with --resume (the run's own).")]
SkipMissingOpt = Annotated[bool, typer.Option(
    "--skip-missing", help="Use the complete pairs when some image files are missing (else stop).")]


def make_gt_dsm_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Folder of the maps (<distorted-stem>.npy).")],
    pool: Annotated[int, typer.Option(
        "--pool", min=1, metavar="N", help="Pooling size p (the ViT patch size).")] = 8,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="float16 or float32.")] = "float16",
    workers: WorkersOpt = 2,
    skip_missing: SkipMissingOpt = False,
    dsm_model: Annotated[Optional[Path], typer.Option(
        "--dsm-model", metavar="RUN",
        help="Write this DSM network's predicted maps instead of the ground truth: a cache for "
             "`qep --dsm-source maps` (a pretrain-dsm run or its dsm.safetensors).")] = None,
    device: DeviceOpt = "auto",
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Ground-truth DSMs: one map per distorted image, channel mean of |dist - ref| pooled by --pool.

    Existing maps are kept, so a rerun resumes. With --dsm-model, the DSM network's predicted
    maps of the whole images instead (computed once, reused by `qep --dsm-source maps`). A pair
    that cannot be read (an undecodable image, sizes that differ) gets no map and is named on
    stderr; the others are written and the exit code is 1.

    \b
    Example: dsmix make-gt-dsm --data D/ --out maps/
    """
    from dsmix_cli.stages.make_gt_dsm import MakeGtConfig, make_gt_dsm

    cfg = MakeGtConfig(data=data, out=out, pool=pool, dtype=dtype, workers=workers, skip_missing=skip_missing,
                       dsm_model=dsm_model, device=device, allow_outside_root=allow_outside_root)
    with report.Bars({"make-gt-dsm": "img"}) as bars:
        result = make_gt_dsm(cfg, on_progress=lambda done, total: bars("make-gt-dsm", done, total))
    report.info(f"make-gt-dsm: {result.written} maps written, {result.skipped} already present, "
                f"{result.total} in all -> {result.out}")
    for line in result.failed:
        report.error(f"no map: {line}")
    if result.failed:
        report.error(f"{len(result.failed)} pair(s) could not be used and have no map; the other maps are "
                     "written (a rerun tries those pairs again)")
        raise typer.Exit(code=1)


def pretrain_dsm_command(
    ctx: typer.Context,
    data: OptionalDataOpt = None,
    out: OutOpt = None,
    arch: Annotated[str, typer.Option(
        "--arch", metavar="NAME", help="Any timm ViT (the paper: ViT-B/8).")] = "vit_base_patch8_224",
    image_size: Annotated[int, typer.Option(
        "--image-size", metavar="N", help="Crop size; a multiple of the patch size.")] = 224,
    decoder: Annotated[str, typer.Option(
        "--decoder", metavar="KIND", help="Per-token decoder: linear (D->1) or mlp (D->D->1).")]
    = "linear",
    pretrained: Annotated[bool, typer.Option(
        "--pretrained/--no-pretrained", help="Start from timm's ImageNet weights of --arch.")] = True,
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", metavar="FILE", help="Local timm weights file for --arch (offline machines: timm's "
                                          "model.safetensors of the model).")] = None,
    depth: Annotated[Optional[int], typer.Option(
        "--depth", min=1, metavar="N",
        help="Override the ViT depth (tiny models for tests; no pretrained weights then).")] = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", min=1, metavar="N", help="Epochs; the cosine schedule spans them.")] = 10,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, metavar="N", help="Global batch, over all processes (under torchrun each takes an "
                                                 "equal share; it must divide).")] = 40,
    lr: Annotated[float, typer.Option(
        "--lr", metavar="X", help="AdamP learning rate (fallback recipe: 5e-4).")] = 5e-3,
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", metavar="X", help="AdamP weight decay.")] = 1e-4,
    warmup_epochs: Annotated[float, typer.Option(
        "--warmup-epochs", min=0.0, metavar="X", help="Linear warm-up (fallback recipe: 1).")] = 0.0,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", metavar="X", help="Fraction of references held out for validation MSE.")] = 0.05,
    val_max_images: Annotated[int, typer.Option(
        "--val-max-images", metavar="N", help="Validate on at most this many held-out images (0: all).")] = 2000,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Shared random horizontal flip.")] = True,
    gt_maps: Annotated[Optional[Path], typer.Option(
        "--gt-maps", metavar="DIR", help="Read ground truth from `make-gt-dsm` maps instead of computing it.")] = None,
    skip_missing: SkipMissingOpt = False,
    skip_bad: SkipBadOpt = False,
    amp: AmpOpt = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="channels_last memory format.")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, metavar="N", help="Data-loading worker processes (default: min(4, CPU cores)).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Deterministic kernels (slower).")] = False,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    log_every: Annotated[int, typer.Option(
        "--log-every", min=1, metavar="N", help="Steps between metrics.jsonl lines.")] = 10,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", min=1, metavar="N", help="Steps between last.pt saves (also at each epoch end).")] = 500,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Train the DSM network (ViT without class token + per-token decoder) on distorted/reference pairs.

    `--resume --out RUN` alone continues a stopped run with its saved settings. Only a run that
    finishes its schedule becomes the default DSM model of `qep`.
    Multi-GPU: torchrun --nproc_per_node N -m dsmix_cli pretrain-dsm ...

    \b
    Example: dsmix pretrain-dsm --data D/ --out runs/dsm
    """
    from dsmix_cli.stages.pretrain_dsm import PretrainDSMConfig, run_pretrain_dsm

    if int(os.environ.get("RANK", "0")) != 0:
        report.set_quiet(True)  # under torchrun only rank 0 talks
    if out is None:
        if resume:
            raise DsmixError("--resume needs --out RUN (the run folder to continue)")
        out = default_run_dir("pretrain-dsm")
    cfg = PretrainDSMConfig(
        data=data, out=out, arch=arch, image_size=image_size, decoder=decoder, pretrained=pretrained or
        weights is not None, weights=weights, depth=depth, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, val_fraction=val_fraction,
        val_max_images=val_max_images, flip=flip, gt_maps=gt_maps, skip_missing=skip_missing, skip_bad=skip_bad,
        amp=amp,
        channels_last=channels_last, compile=compile_,
        workers=min(4, os.cpu_count() or 1) if workers is None else workers, seed=seed, device=device,
        deterministic=deterministic, max_steps=max_steps, resume=resume, log_every=log_every,
        checkpoint_every=checkpoint_every, allow_outside_root=allow_outside_root)
    if resume:
        cfg = resumed_config(ctx, cfg, rename={"compile_": "compile"})
    with report.Bars({"pretrain-dsm": "step"}) as bars:

        def on_start(plan: dict) -> None:
            report.info(f"pretrain-dsm: {plan['train_pairs']} training / {plan['val_pairs']} validation pairs, "
                        f"{plan['steps_per_epoch']} steps per epoch, {plan['total_steps']} in the schedule, "
                        f"device {plan['device']} x{plan['world_size']}, amp {plan['amp']} -> {plan['run_dir']}")

        def on_progress(p: dict) -> None:
            bars("pretrain-dsm", p["step"], p["total"], loss=p["loss"], lr=p["lr"], epoch=p["epoch"])

        result = run_pretrain_dsm(cfg, on_start=on_start, on_progress=on_progress)
    how = "finished the schedule" if result.finished else f"stopped at --max-steps ({result.step}/{result.total_steps})"
    val = f", best val MSE {result.best_val_mse:.4g}" if result.best_val_mse is not None else ""
    loss = f", last loss {result.last_loss:.4g}" if result.last_loss is not None else ""
    report.info(f"pretrain-dsm {how}: step {result.step}{loss}{val}; weights {result.weights}, preview "
                f"{result.preview}")
    if result.finished:
        report.info(f"recorded {result.run_dir} as the default DSM model for qep")
    else:
        report.info(f"not recorded as the default DSM model (the schedule did not finish): use it explicitly "
                    f"with `dsmix qep --dsm-model {result.run_dir}`, or finish it with "
                    f"`dsmix pretrain-dsm --resume --out {result.run_dir}`")
    finish_with_skipped(result.skipped)


def register(app: typer.Typer) -> None:
    """Add `make-gt-dsm` and `pretrain-dsm` to the app."""
    app.command("make-gt-dsm")(handle_errors(make_gt_dsm_command, images=True, out_dirs=("out",)))
    app.command("pretrain-dsm")(handle_errors(pretrain_dsm_command, images=True, out_dirs=("out",)))
