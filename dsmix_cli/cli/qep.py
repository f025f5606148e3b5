"""`dsmix qep`: quality-encoder pre-training with DSMix and semantic distillation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (AllowOutsideRootOpt, AmpOpt, DeviceOpt, MaxStepsOpt, OutOpt, ResumeOpt, SeedOpt,
                                  SkipBadOpt, WorkersOpt, default_run_dir, finish_with_skipped, handle_errors,
                                  parse_int_list, resumed_config)
from dsmix_cli.cli import qpt as Q


def qep(
    ctx: typer.Context,
    pretext: Q.PretextOpt = "dsmix",
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Pre-generated pairs: a `dsmix synthesize` folder, KADID-10k or KADIS-700k.")] = None,
    refs: Annotated[Optional[Path], typer.Option(
        "--refs", help="Reference images, distorted during training (with --on-the-fly).")] = None,
    on_the_fly: Annotated[bool, typer.Option(
        "--on-the-fly", help="Distort the --refs crops on the training device, type and level uniform.")] = False,
    epoch_size: Annotated[Optional[int], typer.Option(
        "--epoch-size", help="On the fly: samples per epoch (default: the number of references).")] = None,
    types: Annotated[str, typer.Option("--types", help="On the fly: distortion types to draw from.")] = "1-25",
    levels: Annotated[str, typer.Option("--levels", help="On the fly: levels to draw from.")] = "1-5",
    rescale: Annotated[str, typer.Option(
        "--rescale", help="On the fly: min-max rescale each crop as its whole image (image: the whole "
                          "reference's range and histogram, as the MATLAB code rescales whole images) or by its "
                          "own range (crop).")] = "image",
    ref_resize: Annotated[Optional[int], typer.Option(
        "--ref-resize", min=8, help="On the fly: resize every reference so that its shorter side is N pixels "
                                    "before cropping (default: as they are).")] = None,
    cache_refs: Annotated[bool, typer.Option(
        "--cache-refs", help="On the fly: decode every reference once and keep it in memory.")] = False,
    val_refs: Annotated[Optional[Path], typer.Option(
        "--val-refs", help="Held-out references for the pretext validation (default: a seeded --val-fraction "
                           "of the training references, which training then leaves out).")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of the references held out for validation (0: none).")] = 0.05,
    val_every: Annotated[Optional[int], typer.Option(
        "--val-every", min=1, help="Steps between validations (default: each epoch end); also at the end.")] = None,
    val_max_images: Annotated[int, typer.Option(
        "--val-max-images", min=1, help="Distorted validation crops at most.")] = 2000,
    dsm_source: Annotated[str, typer.Option(
        "--dsm-source", help="DSMs for the label weights: model (the frozen DSM network, the paper's choice), "
                             "gt (from the pair) or maps (make-gt-dsm output).")] = "model",
    dsm_model: Annotated[Optional[str], typer.Option(
        "--dsm-model", help="A pretrain-dsm run (default: the last finished one, or $DSMIX_DSM_MODEL).")] = None,
    dsm_maps: Annotated[Optional[Path], typer.Option("--dsm-maps", help="make-gt-dsm maps, with --dsm-source maps.")] = None,
    dsm_pool: Annotated[int, typer.Option("--dsm-pool", help="GT DSM pooling size p.")] = 8,
    arch: Annotated[str, typer.Option("--arch", help="Student: resnet18, resnet34, resnet50, ...")] = "resnet50",
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="Frozen KD teacher architecture (default: the student's).")] = None,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained/--no-pretrained", help="ImageNet-V1 student and teacher (--no-pretrained: random both).")] = True,
    student_weights: Annotated[Optional[str], typer.Option(
        "--student-weights", help="Local torchvision-format ImageNet weights for the student.")] = None,
    teacher_weights: Annotated[Optional[str], typer.Option(
        "--teacher-weights", help="Local torchvision-format weights for the teacher.")] = None,
    mix: Annotated[int, typer.Option("--mix", help="Images per DSMix sample (1 = no mixing).")] = 3,
    paste_prob: Annotated[float, typer.Option("--paste-prob", help="Probability of each paste.")] = 1.0,
    mix_refs: Annotated[bool, typer.Option(
        "--mix-refs/--no-mix-refs", help="Cut-and-mix the references among themselves too (their label stays "
                                         "pristine), so that box seams do not tell distorted from pristine.")] = False,
    mix_partners: Annotated[str, typer.Option(
        "--mix-partners", help="Where the pasted boxes come from: batch (other crops of the batch, CutMix's "
                               "convention) or same (other distortions of the sample's own crop, type and "
                               "level uniform: no content seams; needs --on-the-fly).")] = "batch",
    label_mode: Annotated[str, typer.Option(
        "--label-mode", help="normalized, absolute, area (plain CutMix) or one-sided (--mix 2).")] = "normalized",
    pristine_share: Annotated[float, typer.Option(
        "--pristine-share", help="Share of the cross-entropy on the pristine references (0.5: the mean over "
                                 "the 2B images; 0 with KD off: no references at all).")] = 0.5,
    joint_head: Annotated[bool, typer.Option("--joint-head", help="Add the 126-way joint head.")] = False,
    head_hidden: Annotated[int, typer.Option("--head-hidden", help="Hidden width of the MLP heads.")] = 1024,
    kd_alpha: Annotated[float, typer.Option("--kd-alpha", help="Weight of the feature-MAE KD term.")] = 1.0,
    kd_beta: Annotated[float, typer.Option("--kd-beta", help="Weight of the cosine-distance KD term.")] = 1.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs (defines the LR schedule).")] = 120,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Distorted crops per step over all processes (+ their references).")] = 110,
    image_size: Annotated[int, typer.Option("--image-size", help="Crop size.")] = 224,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate (x0.9 every 5 epochs).")] = 0.01,
    lr_step_epochs: Annotated[int, typer.Option("--lr-step-epochs", help="Epochs between LR decays.")] = 5,
    lr_gamma: Annotated[float, typer.Option("--lr-gamma", help="LR decay factor.")] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = 1e-4,
    optimizer: Annotated[str, typer.Option(
        "--optimizer", help="sgd (with momentum 0.9, the paper's) or adamw.")] = "sgd",
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="step (x --lr-gamma every --lr-step-epochs, the paper's) or cosine (over all "
                              "steps).")] = "step",
    warmup_steps: Annotated[int, typer.Option(
        "--warmup-steps", min=0, help="Linear LR warm-up steps (the paper: 0).")] = 0,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    skip_bad: SkipBadOpt = False,
    workers: WorkersOpt = min(4, os.cpu_count() or 1),
    amp: AmpOpt = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="channels_last memory format.")] = False,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the student (pays a compile time at the start; for long GPU runs).")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Steps between metrics.jsonl lines.")] = 10,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 500,
    out: OutOpt = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    qpt_steps: Q.StepsOpt = Q.DEFAULTS["steps"],
    qpt_skip: Q.SkipOpt = Q.DEFAULTS["skip"],
    qpt_region: Q.RegionOpt = Q.DEFAULTS["region"],
    qpt_temperature: Q.TemperatureOpt = Q.DEFAULTS["temperature"],
    qpt_queue: Q.QueueOpt = Q.DEFAULTS["queue"],
    qpt_momentum: Q.MomentumOpt = Q.DEFAULTS["momentum"],
    qpt_dim: Q.DimOpt = Q.DEFAULTS["dim"],
    qpt_hidden: Q.HiddenOpt = Q.DEFAULTS["hidden"],
) -> None:
    """Quality-encoder pre-training (QEP): DSMix + soft cross-entropy + semantic KD.

    Writes RUN/config.json, metrics.jsonl, last.pt/best.pt and RUN/encoder.safetensors (the
    encoder `dsmix probe --encoder RUN` loads); a run that finishes its schedule becomes the
    default encoder. `--resume --out RUN` alone continues a stopped run with its saved settings.
    The heads are scored on held-out references while it runs: RUN/results.json,
    val_confusion.png, val_type_level.png and curves.png; best.pt is the validation step with
    the best val_acc.

    \b
    Example: dsmix qep --refs photos/ --on-the-fly --dsm-source gt
    """
    from dsmix_cli.stages.qep import QEPConfig, run_qep

    if resume and out is None:
        from dsmix_cli.errors import DsmixError

        raise DsmixError("--resume needs --out RUN (the run folder to continue)")
    cfg = QEPConfig(
        out=out or default_run_dir("qep"), pretext=pretext,
        qpt=Q.qpt_options(qpt_steps, qpt_skip, qpt_region, qpt_temperature, qpt_queue, qpt_momentum, qpt_dim,
                          qpt_hidden),
        data=data, refs=refs, on_the_fly=on_the_fly, epoch_size=epoch_size,
        types=parse_int_list(types, 1, 25, "--types"), levels=parse_int_list(levels, 1, 5, "--levels"),
        rescale=rescale, ref_resize=ref_resize, cache_refs=cache_refs, val_refs=val_refs, val_fraction=val_fraction,
        val_every=val_every, val_max_images=val_max_images, pristine_share=pristine_share, optimizer=optimizer,
        lr_schedule=lr_schedule, warmup_steps=warmup_steps,
        dsm_source=dsm_source, dsm_model=dsm_model, dsm_maps=dsm_maps, dsm_pool=dsm_pool, arch=arch,
        teacher=teacher, pretrained=pretrained, student_weights=student_weights, teacher_weights=teacher_weights,
        mix=mix, paste_prob=paste_prob, mix_refs=mix_refs, mix_partners=mix_partners, label_mode=label_mode, joint_head=joint_head,
        head_hidden=head_hidden,
        kd_alpha=kd_alpha, kd_beta=kd_beta, epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
        lr_step_epochs=lr_step_epochs, lr_gamma=lr_gamma, weight_decay=weight_decay, flip=flip, skip_bad=skip_bad,
        workers=workers,
        amp=amp, channels_last=channels_last, compile=compile_model,
        seed=seed, device=device, max_steps=max_steps, resume=resume,
        log_every=log_every, checkpoint_every=checkpoint_every, allow_outside_root=allow_outside_root)
    if resume:
        cfg = resumed_config(ctx, cfg, rename={"compile_model": "compile", **Q.RESUME_NAMES})
    with report.Bars({"qep-refs": "img", "qep-val-set": "ref", "qep": "step"}) as bars:
        result = run_qep(cfg, info=report.info, on_progress=lambda p: bars(
            p.get("phase", "qep"), p["step"], p["total"],
            **({"loss": p["loss"], "lr": p["lr"], **p.get("val", {})} if "loss" in p else {})))
    loss = "n/a" if result["last_loss"] is None else f"{result['last_loss']:.4f}"
    if result.get("val_type_acc") is not None:
        report.table(f"held-out pretext accuracy at step {result['step']} (best.pt: step {result['best_step']})",
                     ["type", "level", "pristine", "distorted called pristine", "type, no pristine answer"],
                     [(result["val_type_acc"], result["val_level_acc"], result["val_pristine_acc"],
                       result["val_called_pristine"], result["val_type_acc_no_pristine"])])
        report.info(f"validation in {Path(result['run']) / 'results.json'}")
    if result["finished"]:
        report.info(f"qep: finished at step {result['step']} (loss {loss}); encoder {result['encoder']} "
                    f"is now the default encoder")
    else:
        report.info(f"qep: stopped at step {result['step']} (loss {loss}) before the end of the schedule: not "
                    f"recorded as the default encoder; use it explicitly with `--encoder {result['run']}`, or "
                    f"finish it with `dsmix qep --resume --out {result['run']}`")
    finish_with_skipped(result.get("skipped_inputs", []))


def register(app: typer.Typer) -> None:
    app.command("qep")(handle_errors(qep, images=True, out_dirs=("out",)))
