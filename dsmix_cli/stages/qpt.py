"""`qep --pretext qpt`: QPT-style quality-aware contrastive pre-training on the shared engine.

One step: B reference regions (random crops, flipped with the region); two independent
degradation chains per region, applied on the training device in one batched call per chain
step (a chain holding JPEG2000 or colour quantization, which only run on the CPU, has its
steps up to the last such step applied in the data-loader workers); two patches of
`--image-size` at different positions from each degraded region; the MoCo step of
`MomentumContrastNet` on the 4B patches (queries, momentum update, keys with shuffle BN, queue);
the quality-aware InfoNCE of `dsmix_cli.qpt.qpt_loss`; optionally the semantic KD of the query
encoder towards a frozen teacher on one reference patch per region; SGD.

The data order, crops, chains and patch positions are drawn per sample from
`generator(seed, "sample" | "qpt", epoch, index)`, the device-side distortion noise from the
step's generator, and the shuffle-BN permutation from (seed, step): a resumed run repeats the
uninterrupted one exactly, the queue and the momentum encoder being part of the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, default_collate

from dsmix_cli import defaults
from dsmix_cli.engine import schedules
from dsmix_cli.engine.checkpoint import export_weights, load_checkpoint
from dsmix_cli.engine.data import epoch_loader, split_global_batch, split_keys
from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.engine.resume import check_resume_config, field_defaults, read_run_config
from dsmix_cli.engine.runtime import (DistInfo, derive_seed, generator, init_distributed, resolve_amp,
                                      resolve_device, seed_everything)
from dsmix_cli.errors import CheckpointError, DsmixError
from dsmix_cli.fileio import write_json
from dsmix_cli.imageio import to_float, to_uint8
from dsmix_cli.models.losses import kd_loss
from dsmix_cli.models.moco import MomentumContrastNet
from dsmix_cli.models.resnet import build_resnet
from dsmix_cli.qpt import (QPTOptions, apply_chains, chain_space_size, crop_patches, default_region,
                           draw_chain_pair, draw_patch_offsets, encode_chains, pair_roles, qpt_loss)
from dsmix_cli.stages.qep import (ENCODER_FILE, KIND, QEPConfig, ReferenceCropDataset, _normalizer,
                                  encoder_meta, list_references)

PRETEXTS = ("dsmix", "qpt")
# Options of the DSMix pretext: `--pretext qpt` refuses values other than QEPConfig's defaults...
_QEP_DEFAULTS = field_defaults(QEPConfig)
_DSMIX_ONLY = {k: _QEP_DEFAULTS[k] for k in ("mix", "paste_prob", "mix_refs", "mix_partners", "label_mode",
                                             "joint_head", "head_hidden", "dsm_model", "dsm_maps")}
# ... except the DSM source and pooling, which a configuration shared by both pretexts may set:
# they are ignored, and the run says so.
_DSMIX_IGNORED = {k: _QEP_DEFAULTS[k] for k in ("dsm_source", "dsm_pool")}


def _flag(field_name: str) -> str:
    """The command-line option of a QEPConfig field (`paste_prob` -> `--paste-prob`)."""
    return "--" + field_name.replace("_", "-")


_FEATURE_DIM = {"resnet18": 512, "resnet34": 512}  # the rest of RESNET_ARCHS: 2048


def resolved_options(cfg: QEPConfig) -> QPTOptions:
    """The QPT options with their defaults filled in: the region from the patch size, the hidden
    width from the architecture's feature width (MoCo v2: the head keeps the feature width)."""
    opts = cfg.qpt
    hidden = opts.hidden or _FEATURE_DIM.get(cfg.arch, 2048)
    return replace(opts, region=opts.region or default_region(cfg.image_size), hidden=hidden)


def space_size(cfg: QEPConfig) -> int:
    """The number of distinct degradation chains of this run's options."""
    return chain_space_size(len(cfg.types), len(cfg.levels), cfg.qpt.steps, cfg.qpt.skip)


# ------------------------------------------------------------------------------------- checks

def check_pretext(cfg: QEPConfig) -> None:
    """Reject an unknown `--pretext`, and a `--resume` of a run made with the other pretext."""
    if cfg.pretext not in PRETEXTS:
        raise DsmixError(f"--pretext {cfg.pretext!r}: choose one of {', '.join(PRETEXTS)}")
    if cfg.resume and (Path(cfg.out) / "last.pt").exists():
        saved = load_checkpoint(Path(cfg.out) / "last.pt", kind=KIND)["config"].get("pretext", "dsmix")
        if saved != cfg.pretext:
            raise CheckpointError(f"--resume: the run was trained with --pretext {saved}, not {cfg.pretext}",
                                  Path(cfg.out) / "last.pt")


def validate_qpt(cfg: QEPConfig) -> None:
    """The checks of `--pretext qpt` on top of the shared QEP ones (DsmixError, exit 2)."""
    from dsmix_cli.distortions import NUM_LEVELS, NUM_TYPES

    if not cfg.on_the_fly or cfg.refs is None:
        raise DsmixError("--pretext qpt degrades reference crops itself: use --refs DIR --on-the-fly")
    for key, default in _DSMIX_ONLY.items():
        if getattr(cfg, key) != default:
            raise DsmixError(f"{_flag(key)} is an option of the DSMix pretext; --pretext qpt does not use it")
    bad = [t for t in cfg.types if not 1 <= t <= NUM_TYPES] + [v for v in cfg.levels if not 1 <= v <= NUM_LEVELS]
    if bad:
        raise DsmixError(f"--types/--levels: {bad} outside 1-{NUM_TYPES} / 1-{NUM_LEVELS}")
    o = cfg.qpt
    if not 1 <= o.steps <= len(cfg.types):
        raise DsmixError(f"--qpt-steps {o.steps} must lie in 1..{len(cfg.types)} (a chain's types are distinct)")
    if not 0.0 <= o.skip < 1.0:
        raise DsmixError("--qpt-skip must lie in [0, 1) (1 would leave every chain empty)")
    if space_size(cfg) < 2:
        raise DsmixError("the degradation space has a single chain: the two chains of a reference could never "
                         "differ; allow more --types, --levels or --qpt-steps")
    region = o.region or default_region(cfg.image_size)
    if region <= cfg.image_size:
        raise DsmixError(f"--qpt-region {region} must exceed --image-size {cfg.image_size}: the two patches of a "
                         f"degraded region need two different positions")
    if o.temperature <= 0 or not 0.0 <= o.momentum < 1.0 or o.dim < 1 or o.queue < 0 or \
            (o.hidden is not None and o.hidden < 1):
        raise DsmixError("--qpt-temperature must be > 0, --qpt-momentum in [0, 1), --qpt-dim and --qpt-hidden >= 1, "
                         "--qpt-queue >= 0")


# ------------------------------------------------------------------------------------- data

class QPTDataset(Dataset):
    """Reference regions with two degradation chains and two patch positions per chain.

    Item i of an epoch is the region crop of `ReferenceCropDataset` (crop and flip from
    `generator(seed, "sample", epoch, i)`); its chains and patch positions come from
    `generator(seed, "qpt", epoch, i)`. A chain holding a CPU-only type (`cpu_types`) has its
    steps up to the last such step applied here, in the loader worker; `start` says how many
    steps are done and `dist` holds the result (8-bit). The rest run on the training device.
    """

    def __init__(self, paths: list[Path], region: int, patch: int, seed: int, types: list[int],
                 levels: list[int], steps: int, skip: float, flip: bool = True, epoch_size: int | None = None,
                 cpu_types: frozenset[int] = frozenset()):
        self.refs = ReferenceCropDataset(paths, region, seed, flip=flip, epoch_size=epoch_size)
        self.region, self.patch, self.seed = region, patch, seed
        self.types, self.levels, self.steps, self.skip = list(types), list(levels), steps, skip
        self.cpu_types = cpu_types

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, key) -> dict:
        epoch, index = split_keys(key)
        ref = self.refs[key]["ref"]
        g = generator(self.seed, "qpt", epoch, index)
        chains = draw_chain_pair(g, self.types, self.levels, self.steps, self.skip)
        types, levels = encode_chains(chains, self.steps)
        offsets = torch.stack([draw_patch_offsets(g, self.region, self.patch) for _ in chains])
        start = torch.zeros(len(chains), dtype=torch.long)
        premade = []
        for c, chain in enumerate(chains):
            cpu_steps = [s for s, (t, _) in enumerate(chain) if t in self.cpu_types]
            if cpu_steps:
                from dsmix_cli.distortions import distort_batch

                start[c] = cpu_steps[-1] + 1
                x = apply_chains(to_float(ref)[None], types[c:c + 1], levels[c:c + 1], distort_batch, generator=g,
                                 stop=int(start[c]))
                premade.append(to_uint8(x[0]))
        return {"ref": ref, "types": types, "levels": levels, "start": start, "offsets": offsets, "dist": premade}


def collate_qpt(items: list[dict]) -> dict:
    """Batch QPT items; `dist` stacks the worker-degraded regions in (reference, chain) order of
    the chains with `start > 0`."""
    batch = default_collate([{k: v for k, v in it.items() if k != "dist"} for it in items])
    premade = [d for it in items for d in it["dist"]]
    shape = items[0]["ref"].shape
    batch["dist"] = torch.stack(premade) if premade else torch.empty(0, *shape, dtype=torch.uint8)
    return batch


# ------------------------------------------------------------------------------------- the step

def degrade_and_cut(batch: dict, device: torch.device, patch: int, distort, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4B patches of a batch, in [0, 1]: (4B, 3, P, P) at rows 4 b + 2 c + p, and the B
    reference patches at the position of patch (c=0, p=0) (the KD inputs)."""
    ref = to_float(batch["ref"].to(device, non_blocking=True))
    b, n_steps = ref.shape[0], batch["types"].shape[-1]
    types = batch["types"].reshape(2 * b, n_steps)
    levels = batch["levels"].reshape(2 * b, n_steps)
    start = batch["start"].reshape(2 * b)
    regions = ref.repeat_interleave(2, dim=0)
    pre = (start > 0).nonzero().flatten()
    if len(pre):
        regions[pre.to(device)] = to_float(batch["dist"].to(device, non_blocking=True))
    with torch.autocast(device.type, enabled=False):  # distortions in full precision
        regions = apply_chains(regions, types.to(device), levels.to(device), distort, generator=gen,
                               start=start.to(device)).float().clamp(0, 1)
    offsets = batch["offsets"].reshape(2 * b, 2, 2)
    patches = crop_patches(regions, offsets, patch)
    ref_patches = crop_patches(ref, batch["offsets"][:, 0, :1], patch)
    return patches, ref_patches


def make_training_step(cfg: QEPConfig, device: torch.device, teacher: torch.nn.Module | None, distort,
                       dist_info: DistInfo):
    """The QPT step as `fn(model, batch, gen, step) -> StepOutput`."""
    opts = cfg.qpt
    norm_s = _normalizer(cfg.arch, device)
    norm_t = _normalizer(cfg.teacher or cfg.arch, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def step_fn(model, batch, gen, step) -> StepOutput:
        with torch.no_grad():
            patches, ref_patches = degrade_and_cut(batch, device, cfg.image_size, distort, gen)
        b = ref_patches.shape[0]
        x = norm_s(patches).contiguous(memory_format=fmt)
        kd_in = norm_s(ref_patches).contiguous(memory_format=fmt) if teacher is not None else None
        out = model(x, shuffle_seed=derive_seed(cfg.seed, "qpt-shuffle", step), kd_images=kd_in)
        roles = pair_roles(b, dist_info.rank, dist_info.world_size, device=device)
        loss, parts = qpt_loss(out["q"], out["keys"], roles, out["queue"], opts.temperature)
        parts = {"nce": loss.detach(), **parts}
        if teacher is not None:
            with torch.no_grad():
                t_stages = teacher.forward_stages(norm_t(ref_patches).contiguous(memory_format=fmt))
            kd, fr, cosd = kd_loss(out["stages"], t_stages, cfg.kd_alpha, cfg.kd_beta)
            loss = loss + kd
            parts.update(kd=kd.detach(), kd_fr=fr.detach(), kd_cosd=cosd.detach())
        return StepOutput(loss=loss, parts=parts, samples=4 * b)

    return step_fn


# ------------------------------------------------------------------------------------- the run

def run_qpt(cfg: QEPConfig, info: Callable[[str], None] = lambda _m: None,
            on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) a QPT pre-training; the shared QEP checks have passed. Returns the same
    summary as `run_qep` (run, step, finished, last_loss, encoder)."""
    validate_qpt(cfg)
    opts = resolved_options(cfg)
    out = Path(cfg.out)
    saved = read_run_config(out) if cfg.resume else {}
    if cfg.resume:  # the options first, before any work (the shared rule); the derived values below
        early = {**cfg.to_dict(), "qpt": asdict(opts)}
        check_resume_config(saved, early, out, keys=[k for k in early if k != "method"],
                            defaults=_QEP_DEFAULTS)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    dist_info = init_distributed(device)
    seed_everything(cfg.seed)

    from dsmix_cli.distortions import CPU_ONLY_TYPES, distort_batch

    ref_paths = list_references(Path(cfg.refs))
    epoch_size = cfg.epoch_size
    if epoch_size is None:  # one pass over the references, but at least one full batch
        epoch_size = max(len(ref_paths), cfg.batch_size)
        if epoch_size > len(ref_paths):
            info(f"only {len(ref_paths)} references: an epoch is one batch of {epoch_size} crops")
    dataset = QPTDataset(ref_paths, opts.region, cfg.image_size, cfg.seed, list(cfg.types), list(cfg.levels),
                         opts.steps, opts.skip, flip=cfg.flip, epoch_size=epoch_size, cpu_types=CPU_ONLY_TYPES)
    per_rank, spe = split_global_batch(cfg.batch_size, dist_info.world_size, len(dataset))
    space = space_size(cfg)

    config = cfg.to_dict()
    config["qpt"] = asdict(opts)
    config["method"] = {
        "pretext": "qpt: quality-aware contrastive (MoCo v2 framework: momentum encoder, queue, MLP head)",
        "sample": "a reference region; two independent degradation chains; two patches at different positions "
                  "from each degraded region",
        "positive": "the other patch of the same degraded region",
        "negatives": "degradation: the two patches of the same region under the other chain; content: every "
                     "patch of the other references of the global batch, and the queue",
        "own_key": "left out of the candidates",
        "chain": "steps distinct types in a random order, each step skipped with probability skip, levels "
                 "uniform; the second chain is redrawn while it equals the first",
        "cpu_only_types": "a chain's steps up to its last JPEG2000 / colour-quantization step run in the loader "
                          "workers (8-bit result), the rest batched on the device",
        "queue": "all-rank keys enqueued every step; starts as random unit vectors",
        "batch_norm": "shuffle BN for the keys across ranks (no SyncBatchNorm)",
        "kd_on": "one reference patch per region (at the first patch's position), when KD is on",
        "loss": "nce + kd_alpha * fr + kd_beta * cosd",
    }
    config.update(steps_per_epoch=spe, total_steps=spe * cfg.epochs, amp=amp, world_size=dist_info.world_size,
                  per_rank_batch=per_rank, qpt_space=space, dsm_model_resolved=None)
    if cfg.resume:
        check_resume_config(saved, config, out, defaults=_QEP_DEFAULTS)

    encoder = build_resnet(cfg.arch, pretrained=(cfg.student_weights or True) if cfg.pretrained else False)
    model = MomentumContrastNet(encoder, dim=opts.dim, hidden=opts.hidden, queue_size=opts.queue,
                                momentum=opts.momentum, queue_seed=derive_seed(cfg.seed, "qpt-queue")).to(device)
    teacher = None
    if cfg.kd_alpha or cfg.kd_beta:
        t_arch = cfg.teacher or cfg.arch
        weights = (cfg.teacher_weights or True) if cfg.pretrained else (cfg.teacher_weights or False)
        teacher = build_resnet(t_arch, pretrained=weights).to(device).eval().requires_grad_(False)
        info(f"teacher: {t_arch} with RANDOM weights (--no-pretrained): KD distils a frozen random net"
             if not weights else f"teacher: {t_arch}, ImageNet weights, frozen")
    else:
        info("KD off (--kd-alpha 0 --kd-beta 0): no teacher")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    if cfg.compile:  # the encoders only, in place (the MoCo step itself has collectives and buffer writes)
        model.encoder.compile()
        model.momentum_encoder.compile()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedules.step_decay(spe, every_epochs=cfg.lr_step_epochs, gamma=cfg.lr_gamma))
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
    ignored = [f"{_flag(k)} {getattr(cfg, k)}" for k, v in _DSMIX_IGNORED.items() if getattr(cfg, k) != v]
    if ignored:
        info(f"ignored with --pretext qpt (DSMix options): {', '.join(ignored)}")
    info(f"QPT degradation space: {space:,} chains ({len(cfg.types)} types x {len(cfg.levels)} levels, up to "
         f"{opts.steps} steps, skip {opts.skip:g})")
    info(f"QEP (qpt): {len(dataset)} references/epoch, 4 patches of {cfg.image_size} px from 2 chains on "
         f"{opts.region} px regions; {spe} steps/epoch, {spe * cfg.epochs} steps in all ({cfg.epochs} epochs); "
         f"queue {opts.queue}, temperature {opts.temperature:g}; device {device}, amp {amp}; run {out}")

    def batches(epoch: int, skip: int):
        return epoch_loader(dataset, batch_size=per_rank, seed=cfg.seed, epoch=epoch, skip_batches=skip,
                            workers=cfg.workers, dist_info=dist_info, pin_memory=device.type == "cuda",
                            collate_fn=collate_qpt)

    def on_save(m: MomentumContrastNet, step: int) -> None:
        export_weights(out / ENCODER_FILE, m.encoder.state_dict(), encoder_meta(cfg, config, step))

    loop = LoopConfig(epochs=cfg.epochs, steps_per_epoch=spe, max_steps=cfg.max_steps, seed=cfg.seed, amp=amp,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, sync_bn=False)
    result = fit(run_dir=out, kind=KIND, config=config, model=model, optimizer=optimizer, scheduler=scheduler,
                 batches=batches, training_step=make_training_step(cfg, device, teacher, distort_batch, dist_info),
                 loop=loop, device=device, dist_info=dist_info, resume=cfg.resume, on_progress=on_progress,
                 on_save=on_save)
    if dist_info.is_main and result.finished:  # the chain of defaults holds finished runs only
        defaults.record_default("encoder", out)
    return {"run": str(out), "step": result.step, "finished": result.finished, "last_loss": result.last_loss,
            "encoder": str(out / ENCODER_FILE)}
