"""`dsmix pretrain-dsm`: train the DSM network F_theta (docs/method.md, section 2) with the shared engine.

The recipe is the paper's unless an option says otherwise: random 224 crops shared by the
distorted image and its reference (and a shared horizontal flip, ours), the ground truth computed
on the fly from the crop pair (or read from `make-gt-dsm` maps), MSE (Eq. 2), AdamP (lr 5e-3,
weight decay 1e-4, package defaults otherwise), one cosine over all iterations of `--epochs`
(no warm-up unless `--warmup-epochs`), batch 40, 10 epochs. A random 5 % of the references is
held out for the validation MSE that selects `best.pt`, and a picture of predicted vs GT maps is
written at each epoch end. Under `torchrun` every rank trains a shard (DDP); rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from dsmix_cli import defaults
from dsmix_cli.data.pairs import PairCropDataset, load_pairs, split_by_reference
from dsmix_cli.dsm.gt import gt_dsm
from dsmix_cli.dsm.network import DEFAULT_ARCH, DECODERS, WEIGHTS_FILE, DSMNet, build_dsm_net
from dsmix_cli.dsm.preview import preview_label, save_preview
from dsmix_cli.engine import schedules
from dsmix_cli.engine.checkpoint import export_weights
from dsmix_cli.engine.data import BadInputs, epoch_loader, guarded_loader, steps_per_epoch
from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.engine.resume import check_resume_config, field_defaults, read_run_config
from dsmix_cli.engine.runtime import (DistInfo, all_reduce_mean, autocast, derive_seed, generator,
                                      init_distributed, resolve_amp, resolve_device, seed_everything)
from dsmix_cli.errors import DsmixError
from dsmix_cli.fileio import write_json

KIND = "pretrain-dsm"
PREVIEW_FILE = "dsm_preview.png"
# The fixed method choices of this stage (no option sets them), recorded in config.json and the
# checkpoints under "method". Each says whose choice it is, as docs/method.md marks it: "paper"
# (the paper states it), "ours" (the paper is silent; this project chose), and the section of
# docs/method.md that gives the reasoning.
METHOD_CHOICES = {
    "gt": "channel mean of |d - r| on [0,1] pixels, avg-pool kernel=stride=patch, no padding "
          "(paper: mean and pooling; ours: stride, no padding, [0,1]; docs/method.md section 1)",
    "gt_source": "on the fly from the shared crop, or stored maps with --gt-maps (ours; docs/method.md section 1)",
    "crop": "one random crop and flip shared by distorted and reference (ours; docs/method.md section 1)",
    "cls_token": "removed; patch part of the pretrained position embedding only (paper; docs/method.md section 2)",
    "final_norm": "kept (ours; docs/method.md section 2)",
    "decoder_output": "no activation in training; clamp >= 0 at use (ours; docs/method.md section 2)",
    "normalisation": "the ViT's own data-config mean/std; GT from unnormalised pixels (ours; docs/method.md section 2)",
    "loss": "MSE over batch and map cells, Eq. 2 (paper; docs/method.md section 2)",
    "optimizer": "AdamP, package defaults besides lr and weight decay, on all parameters (paper; docs/method.md "
                 "section 2)",
    "schedule": "single cosine over epochs x steps per epoch, no restarts (paper: cosine; ours: its span; "
                "docs/method.md section 2)",
    "validation": "held-out references, centre crops, MSE; selects best.pt (ours; docs/method.md section 2)",
    "batch": "--batch-size is the global batch, split evenly over DDP ranks (ours; docs/training.md)",
}


@dataclass
class PretrainDSMConfig:
    """Options of `pretrain-dsm` (defaults: the paper's recipe)."""

    data: Path
    out: Path
    arch: str = DEFAULT_ARCH
    image_size: int = 224
    decoder: str = "linear"
    pretrained: bool = True
    weights: Path | None = None  # local pretrained ViT weights (implies pretrained)
    depth: int | None = None  # override the ViT depth (tiny test models)
    epochs: int = 10
    batch_size: int = 40
    lr: float = 5e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    val_fraction: float = 0.05
    val_max_images: int = 2000
    flip: bool = True
    gt_maps: Path | None = None
    skip_missing: bool = False
    allow_outside_root: bool = False  # accept manifest entries that resolve outside --data
    skip_bad: bool = False  # replace unreadable samples by the next readable one (else stop, exit 1)
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    max_steps: int | None = None
    resume: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    grad_clip: float | None = None
    preview_images: int = 4


@dataclass
class PretrainDSMResult:
    run_dir: Path
    step: int
    total_steps: int
    finished: bool  # the whole schedule ran (else stopped by --max-steps)
    last_loss: float | None
    best_val_mse: float | None
    weights: Path
    preview: Path
    skipped: list[str] = field(default_factory=list)  # unreadable samples replaced (with skip_bad)


def _check(cfg: PretrainDSMConfig, world: int) -> None:
    if cfg.data is None:
        raise DsmixError("--data DIR is required (a pairs folder; or --resume --out RUN to continue a run)")
    if cfg.decoder not in DECODERS:
        raise DsmixError(f"--decoder {cfg.decoder!r}: expected one of {', '.join(DECODERS)}")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(cfg, name) < 1:
            raise DsmixError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.warmup_epochs < 0:
        raise DsmixError("--lr must be > 0, --weight-decay and --warmup-epochs >= 0")
    if cfg.batch_size % world:
        raise DsmixError(f"--batch-size {cfg.batch_size} (the global batch) is not divisible by the "
                         f"{world} processes of this torchrun")


def _resolved_config(cfg: PretrainDSMConfig, **derived) -> dict:
    """The config recorded in config.json and the checkpoints: the options (paths made absolute,
    so a resume from another folder finds the same files), the derived values, the method."""
    out = {k: (os.path.abspath(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    out.update(derived)
    out["method"] = METHOD_CHOICES
    return out


def _val_subset(pairs: list, limit: int, seed: int) -> list:
    if limit <= 0 or len(pairs) <= limit:
        return pairs
    keep = sorted(torch.randperm(len(pairs), generator=generator(seed, "val-subset"))[:limit].tolist())
    return [pairs[i] for i in keep]


def _to_input(batch: dict, device: torch.device, pool: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input in [0, 1], ground-truth maps pooled by the patch size) of a batch, on `device`."""
    dist = batch["dist"].to(device, non_blocking=True)
    gt = batch["gt"].to(device) if "gt" in batch else None
    if gt is None:
        gt = gt_dsm(dist, batch["ref"].to(device, non_blocking=True), pool=pool)
    x = dist.float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, gt.float()


def run_pretrain_dsm(cfg: PretrainDSMConfig, on_start: Callable[[dict], None] | None = None,
                     on_progress: Callable[[dict], None] | None = None) -> PretrainDSMResult:
    """Train the DSM network; the whole stage behind `dsmix pretrain-dsm`.

    Args:
        cfg: the options.
        on_start: called once (rank 0) with the plan: steps, data sizes, device, amp, resume step.
        on_progress: `fit`'s per-step callback (step, total, loss, lr, epoch).

    Returns:
        What ran: steps, whether the schedule finished, losses, where the weights went.
    """
    device = resolve_device(cfg.device)
    dist_info: DistInfo = init_distributed(device)
    try:
        return _run(cfg, device, dist_info, on_start, on_progress)
    finally:
        if dist_info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(cfg, device, dist_info, on_start, on_progress) -> PretrainDSMResult:
    world = dist_info.world_size
    _check(cfg, world)
    amp = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed, cfg.deterministic)
    run_dir = Path(cfg.out)
    if not cfg.resume and (run_dir / "last.pt").exists():
        raise DsmixError("already holds a pretrain-dsm run (last.pt); pass --resume to continue it or choose "
                         "another --out", run_dir)
    saved = None
    if cfg.resume:
        if not (run_dir / "last.pt").exists():
            raise DsmixError("--resume: no last.pt in the run folder (nothing to resume)", run_dir)
        saved = read_run_config(run_dir)
        options = _resolved_config(cfg)
        check_resume_config(saved, options, run_dir, keys=options,  # the options, before any work
                            defaults=field_defaults(PretrainDSMConfig))

    pairs = load_pairs(cfg.data, skip_missing=cfg.skip_missing, allow_outside_root=cfg.allow_outside_root)
    train_pairs, val_pairs = split_by_reference(pairs, cfg.val_fraction, cfg.seed)
    val_pairs = _val_subset(val_pairs, cfg.val_max_images, cfg.seed)

    # Identical initial weights on every rank (DDP also broadcasts rank 0's at wrap time). A resumed
    # run loads its checkpoint, so it does not need the pretrained weights again.
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    pretrained = False if cfg.resume else (cfg.weights if cfg.weights is not None else cfg.pretrained)
    model: DSMNet = build_dsm_net(cfg.arch, cfg.image_size, pretrained=pretrained, decoder=cfg.decoder,
                                  depth=cfg.depth)
    pool = model.patch_size
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()  # in place: state-dict keys stay those of the plain module

    from adamp import AdamP

    optimizer = AdamP(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_rank = cfg.batch_size // world
    spe = steps_per_epoch(len(train_pairs), per_rank, world)
    if spe == 0:
        raise DsmixError(f"the training set has {len(train_pairs)} pairs, fewer than one batch of "
                         f"{cfg.batch_size}; lower --batch-size or add data", cfg.data)
    total = cfg.epochs * spe
    warmup = round(cfg.warmup_epochs * spe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules.cosine(total, warmup_steps=warmup))
    config = _resolved_config(
        cfg, world_size=world, per_rank_batch=per_rank, steps_per_epoch=spe, total_steps=total,
        warmup_steps=warmup, train_pairs=len(train_pairs), val_pairs=len(val_pairs), pool=pool,
        amp_resolved=amp, device_resolved=str(device), patch_size=pool,
        train_references=len({p.ref for p in train_pairs}), val_references=len({p.ref for p in val_pairs}))
    if saved is not None:
        check_resume_config(saved, config, run_dir,  # and the values derived from the data
                            defaults=field_defaults(PretrainDSMConfig))
    if dist_info.is_main:
        write_json(run_dir / "config.json", config)

    train_ds = PairCropDataset(train_pairs, cfg.image_size, cfg.seed, flip=cfg.flip, train=True,
                               gt_maps=cfg.gt_maps, pool=pool)
    shown = val_pairs or train_pairs  # the preview uses training pairs when nothing is held out
    preview_ds = PairCropDataset(shown[: cfg.preview_images], cfg.image_size, cfg.seed, train=False,
                                 gt_maps=cfg.gt_maps, pool=pool)
    val_ds = PairCropDataset(val_pairs, cfg.image_size, cfg.seed, train=False, gt_maps=cfg.gt_maps, pool=pool)
    pin = device.type == "cuda"
    state = {"step": 0}
    bad = BadInputs()

    def batches(epoch: int, skip: int):
        return epoch_loader(train_ds, batch_size=per_rank, seed=cfg.seed, epoch=epoch, skip_batches=skip,
                            workers=cfg.workers, dist_info=dist_info, pin_memory=pin, skip_bad=cfg.skip_bad,
                            bad=bad)

    def training_step(m, batch, gen, step) -> StepOutput:
        state["step"] = step + 1
        x, gt = _to_input(batch, device, pool, cfg.channels_last)
        loss = F.mse_loss(m(x).float(), gt)  # Eq. 2
        return StepOutput(loss=loss, samples=len(x))

    def write_preview(m: DSMNet, title: str) -> None:
        batch = next(iter(guarded_loader(preview_ds, skip_bad=cfg.skip_bad, bad=bad, batch_size=len(preview_ds))))
        x, gt = _to_input(batch, device, pool, cfg.channels_last)
        was_training = m.training
        m.eval()
        with torch.no_grad(), autocast(device, amp):
            pred = m(x).float()
        m.train(was_training)
        save_preview(run_dir / PREVIEW_FILE, batch["dist"], batch["ref"], gt.cpu(), pred.cpu(), title,
                     labels=[preview_label(p, cfg.image_size) for p in preview_ds.pairs])

    def validate(m: DSMNet) -> dict[str, float]:
        metrics: dict[str, float] = {}
        m.eval()
        if len(val_ds):
            mine = list(range(dist_info.rank, len(val_ds), world))
            loader = guarded_loader(val_ds, skip_bad=cfg.skip_bad, bad=bad, batch_size=per_rank, sampler=mine,
                                    num_workers=cfg.workers, pin_memory=pin)
            sums = torch.zeros(2, dtype=torch.float64, device=device)
            with torch.no_grad(), autocast(device, amp):
                for batch in loader:
                    x, gt = _to_input(batch, device, pool, cfg.channels_last)
                    sums[0] += ((m(x).float() - gt) ** 2).sum().double()
                    sums[1] += gt.numel()
            sums = all_reduce_mean(sums, dist_info)  # mean of per-rank sums: the ratio is unchanged
            metrics["val_mse"] = float(sums[0] / sums[1].clamp(min=1))
        if dist_info.is_main and len(preview_ds):
            write_preview(m, f"step {state['step']}")
        return metrics

    def on_save(m: DSMNet, step: int) -> None:
        export_weights(run_dir / WEIGHTS_FILE, m.state_dict(), {**m.meta(), "step": step, "config": config})

    loop = LoopConfig(epochs=cfg.epochs, steps_per_epoch=spe, max_steps=cfg.max_steps, seed=cfg.seed, amp=amp,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip)
    if on_start is not None and dist_info.is_main:
        on_start({"run_dir": run_dir, "total_steps": total, "stop_step": loop.stop_step, "steps_per_epoch": spe,
                  "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "device": str(device), "amp": amp,
                  "world_size": world, "resume": cfg.resume})
    result = fit(run_dir=run_dir, kind=KIND, config=config, model=model, optimizer=optimizer, scheduler=scheduler,
                 batches=batches, training_step=training_step, loop=loop, device=device, dist_info=dist_info,
                 resume=cfg.resume, validate=validate,
                 best_key="val_mse" if len(val_ds) else None, on_progress=on_progress, on_save=on_save)

    if dist_info.is_main:
        state["step"] = result.step
        if len(preview_ds):
            write_preview(model, f"final, step {result.step}")
        write_json(run_dir / "results.json", {
            "step": result.step, "total_steps": total, "finished": result.finished, "last_loss": result.last_loss,
            "best_val_mse": result.best_metric if len(val_ds) else None, "weights": str(run_dir / WEIGHTS_FILE),
            "skipped_inputs": bad.lines})
        if result.finished:  # the chain of defaults holds finished runs only, never a --max-steps stop
            defaults.record_default("dsm_model", run_dir)
    return PretrainDSMResult(run_dir=run_dir, step=result.step, total_steps=total, finished=result.finished,
                             last_loss=result.last_loss, best_val_mse=result.best_metric if len(val_ds) else None,
                             weights=run_dir / WEIGHTS_FILE, preview=run_dir / PREVIEW_FILE, skipped=bad.lines)
