"""Quality-encoder pre-training (QEP) with DSMix and semantic distillation (METHOD.md 3-4).

One step (METHOD.md 4, Algorithm 1 as reconstructed): B distorted crops and their B reference
crops; the DSM of every unmixed distorted crop (frozen DSM network, or the ground truth of the
pair); DSMix of the distorted crops with DSM-weighted soft labels; soft cross-entropy of the
type / level (/ joint) heads over the 2B images (references one-hot pristine); KD of the
student's layer1..4 features towards a frozen ImageNet teacher on the references only; SGD.

Data come from a pre-generated pair folder (`data`, via `dsmix_cli.data.pairs`) or are made on
the fly: reference crops from `refs`, distorted on the training device inside the step with a
type and level drawn uniformly per sample from the step's generator.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, default_collate

from dsmix_cli import defaults
from dsmix_cli.dsmix import LABEL_MODES, mix, mix_weights, pristine_targets, soft_targets
from dsmix_cli.engine import schedules
from dsmix_cli.engine.checkpoint import export_weights
from dsmix_cli.engine.data import BadInputs, epoch_loader, split_keys, steps_per_epoch
from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.engine.resume import check_resume_config, read_run_config
from dsmix_cli.engine.runtime import (generator, init_distributed, resolve_amp, resolve_device,
                                      seed_everything)
from dsmix_cli.errors import CheckpointError, DatasetError, DsmixError
from dsmix_cli.fileio import write_json
from dsmix_cli.imageio import is_image_file, load_rgb_tensor, to_float, to_uint8
from dsmix_cli.models.heads import QualityEncoderNet
from dsmix_cli.models.losses import kd_loss, soft_cross_entropy
from dsmix_cli.models.resnet import RESNET_ARCHS, build_resnet, input_stats
from dsmix_cli.qpt import QPTOptions

KIND = "qep"
ENCODER_FILE = "encoder.safetensors"
DSM_SOURCES = ("model", "gt", "maps")


@dataclass
class QEPConfig:
    """Everything a QEP run needs; defaults are the paper's full-scale recipe (METHOD.md 4).

    Every [R]/[P?] choice of METHOD.md is a field here and lands in `config.json` and the
    checkpoints; the fixed readings (box sampling, reference batching, KD stages, CosD form)
    are recorded under `method`.
    """

    out: Path
    pretext: str = "dsmix"              # dsmix (the paper) | qpt (stages/qpt.py, options in `qpt`)
    qpt: QPTOptions = field(default_factory=QPTOptions)
    data: Path | None = None            # pre-generated pairs (issue 3 or KADIS-700k layout)
    refs: Path | None = None            # reference images, with on_the_fly
    on_the_fly: bool = False
    epoch_size: int | None = None       # on the fly: samples per epoch (default: number of refs)
    types: list[int] = field(default_factory=lambda: list(range(1, 26)))  # on the fly: drawn uniformly
    levels: list[int] = field(default_factory=lambda: list(range(1, 6)))
    dsm_source: str = "model"           # model (paper) | gt | maps
    dsm_model: str | None = None        # run folder or file; default: the last pretrain-dsm run
    dsm_maps: Path | None = None        # make-gt-dsm output, with dsm_source=maps
    dsm_pool: int = 8                   # GT DSM pooling size p (METHOD.md 1)
    arch: str = "resnet50"
    teacher: str | None = None          # default: the student's architecture (METHOD.md 4 [R])
    pretrained: bool = True             # ImageNet-V1 student and teacher ([A]/[R])
    student_weights: str | None = None  # local torchvision-format weights instead of the download
    teacher_weights: str | None = None
    mix: int = 3                        # sources per DSMix sample (Mix = 3, [P])
    paste_prob: float = 1.0             # probability of each paste ([R] always)
    label_mode: str = "normalized"      # normalized [P?] | absolute | area | one-sided
    joint_head: bool = False            # the optional 126-way head (section 10 item 5)
    head_hidden: int = 1024
    kd_alpha: float = 1.0               # [R] the values were lost
    kd_beta: float = 1.0
    epochs: int = 120
    batch_size: int = 110               # distorted crops per step (+ as many references)
    image_size: int = 224
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epochs: int = 5             # x lr_gamma every lr_step_epochs epochs (StepLR(5, 0.9))
    lr_gamma: float = 0.9
    flip: bool = True
    skip_bad: bool = False              # replace unreadable samples by the next readable one (else stop)
    workers: int = 4
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False  # torch.compile the student (in place: state-dict keys unchanged)
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None
    resume: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    allow_outside_root: bool = False  # --data: accept manifest entries that resolve outside the folder

    def to_dict(self) -> dict:
        d = asdict(self)
        d["teacher"] = self.teacher or self.arch
        d["method"] = {
            "box_sampling": "cutmix: area fraction ~ U(0,1), side sqrt(rho), uniform centre, clipped, per sample",
            "pastes": "mix-1 boxes from independent permutations, later boxes hide earlier ones",
            "reference_batching": "paired: batch_size distorted + their batch_size references per step",
            "ce_reduction": "mean over the 2B images, summed over the heads",
            "kd_stages": ["layer1", "layer2", "layer3", "layer4"],
            "kd_cosd": "1 - cos of flattened per-sample stage features, mean over samples",
            "kd_on": "reference crops only",
            "heads": "2048 -> hidden -> BN -> ReLU -> C on GAP(layer4)",
            "dsm_clamp": "max(DSM, 0), bilinear upsampling align_corners=False",
            "input_norm": "student and teacher: their own ImageNet mean/std; GT DSM from [0,1] pixels",
            "on_the_fly": "type and level uniform per sample (drawn with its crop); JPEG2000 and colour "
                          "quantization applied to the crop in the loader workers, the rest batched on the device",
        }
        return {k: (os.path.abspath(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------------- data

class ReferenceCropDataset(Dataset):
    """Random crops (and flips) of reference images, keyed by `(epoch, index)` for exact resume.

    Item i of an epoch is reference `i % len(paths)`; its crop and flip come from
    `generator(seed, "sample", epoch, i)`. An image smaller than the crop is first resized so
    that its shorter side equals the crop size.

    With `types`/`levels` (on-the-fly QEP) each item also draws its distortion type and level,
    uniformly, from the same generator. Types that only run on the CPU through Pillow
    (`cpu_types`: JPEG2000 and colour quantization) are applied right here, in the data-loader
    workers, so they never stall the training device; the item then carries the distorted
    8-bit crop and `premade=True`. Every other type is applied batched on the training device
    in the training step.
    """

    def __init__(self, paths: list[Path], crop_size: int, seed: int, flip: bool = True,
                 epoch_size: int | None = None, types: list[int] | None = None,
                 levels: list[int] | None = None, cpu_types: frozenset[int] = frozenset()):
        self.paths, self.crop, self.seed, self.flip = paths, crop_size, seed, flip
        self.size = epoch_size or len(paths)
        self.types, self.levels, self.cpu_types = types, levels, cpu_types

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> dict:
        epoch, index = split_keys(key)
        img = load_rgb_tensor(self.paths[index % len(self.paths)])
        g = generator(self.seed, "sample", epoch, index)
        h, w = img.shape[-2:]
        if min(h, w) < self.crop:
            scale = self.crop / min(h, w)
            size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
            img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=False,
                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            h, w = size
        top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
        img = img[:, top:top + self.crop, left:left + self.crop]
        if self.flip and bool(torch.rand(1, generator=g) < 0.5):
            img = img.flip(-1)
        item = {"ref": img.contiguous()}
        if self.types is not None:
            t = self.types[int(torch.randint(len(self.types), (1,), generator=g))]
            lv = self.levels[int(torch.randint(len(self.levels), (1,), generator=g))]
            item.update(type=t, level=lv, premade=t in self.cpu_types)
            if item["premade"]:  # the other types are distorted on the device, in the step
                from dsmix_cli.distortions import distort

                item["dist"] = to_uint8(distort(to_float(item["ref"])[None], t, lv, generator=g)[0])
        return item


def collate_on_the_fly(items: list[dict]) -> dict:
    """Batch on-the-fly items: `dist` holds only the crops already distorted in the workers
    (rows where `premade` is True, in order), so the other rows cost no extra transfer."""
    batch = default_collate([{k: v for k, v in it.items() if k != "dist"} for it in items])
    premade = [it["dist"] for it in items if it["premade"]]
    batch["dist"] = torch.stack(premade) if premade else torch.empty(0, *items[0]["ref"].shape, dtype=torch.uint8)
    return batch


def list_references(folder: Path, info: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """The image files under `folder` (recursively, sorted, each file once, links to folders not
    followed: `paths.walk_files`; what is skipped goes to `info`); a `DatasetError` when there
    are none."""
    from dsmix_cli.paths import walk_files

    if not folder.is_dir():
        raise DatasetError("--refs: not a folder", folder)
    walk = walk_files(folder, is_image_file)
    for line in walk.skipped:
        info(line)
    if not walk.files:
        raise DatasetError("--refs: no image files found", folder)
    return sorted(walk.files)  # Path order, as before: a resumed run keeps its references' order


def _pair_dataset(cfg: QEPConfig) -> Dataset:
    """Pairs of a pre-generated folder; with `dsm_source=maps` the stored maps are cropped alongside."""
    from dsmix_cli.data.pairs import PairCropDataset, load_pairs

    maps = Path(cfg.dsm_maps) if cfg.dsm_source == "maps" else None
    pairs = load_pairs(Path(cfg.data), allow_outside_root=cfg.allow_outside_root)
    return PairCropDataset(pairs, cfg.image_size, cfg.seed, flip=cfg.flip, gt_maps=maps, pool=cfg.dsm_pool)


# ------------------------------------------------------------------------------------- checks

def validate_config(cfg: QEPConfig) -> None:
    """Reject bad or contradictory options before any work (DsmixError, exit 2)."""
    if (cfg.data is None) == (cfg.refs is None):
        raise DsmixError("give either --data DIR (pre-generated pairs) or --refs DIR --on-the-fly")
    if cfg.refs is not None and not cfg.on_the_fly:
        raise DsmixError("--refs needs --on-the-fly (distortions made during training)")
    if cfg.data is not None and cfg.on_the_fly:
        raise DsmixError("--on-the-fly goes with --refs, not --data")
    if cfg.data is not None and not Path(cfg.data).is_dir():
        raise DatasetError("--data: not a folder", cfg.data)
    if cfg.epoch_size is not None and (not cfg.on_the_fly or cfg.epoch_size < 1):
        raise DsmixError("--epoch-size is for --on-the-fly and must be >= 1")
    if cfg.dsm_source not in DSM_SOURCES:
        raise DsmixError(f"--dsm-source {cfg.dsm_source!r}: choose one of {', '.join(DSM_SOURCES)}")
    if cfg.dsm_source == "maps":
        if cfg.data is None or cfg.dsm_maps is None:
            raise DsmixError("--dsm-source maps needs --data DIR and --dsm-maps DIR (from make-gt-dsm)")
        if not Path(cfg.dsm_maps).is_dir():
            raise DatasetError("--dsm-maps: not a folder", cfg.dsm_maps)
    elif cfg.dsm_maps is not None:
        raise DsmixError("--dsm-maps is only used with --dsm-source maps")
    if cfg.dsm_model is not None and cfg.dsm_source != "model":
        raise DsmixError("--dsm-model is only used with --dsm-source model")
    if cfg.label_mode not in LABEL_MODES:
        raise DsmixError(f"--label-mode {cfg.label_mode!r}: choose one of {', '.join(LABEL_MODES)}")
    if cfg.mix < 1:
        raise DsmixError("--mix must be >= 1 (1 = no mixing)")
    if cfg.label_mode == "one-sided" and cfg.mix != 2:
        raise DsmixError("--label-mode one-sided is defined for two sources only: use --mix 2")
    if not 0.0 <= cfg.paste_prob <= 1.0:
        raise DsmixError("--paste-prob must lie in [0, 1]")
    for name in (cfg.arch, cfg.teacher or cfg.arch):
        if name not in RESNET_ARCHS:
            raise DsmixError(f"unknown architecture {name!r}; choose one of {', '.join(RESNET_ARCHS)}")
    if (cfg.teacher or cfg.arch) != cfg.arch and (cfg.kd_alpha or cfg.kd_beta):
        raise DsmixError(f"teacher {cfg.teacher} differs from the student {cfg.arch}: the KD stages would not "
                         f"match (use a teacher of the same architecture, METHOD.md 4)")
    if cfg.image_size < 32 or cfg.image_size % cfg.dsm_pool:
        raise DsmixError(f"--image-size {cfg.image_size} must be >= 32 and a multiple of the DSM pool {cfg.dsm_pool}")
    if cfg.batch_size < 2:
        raise DsmixError("--batch-size must be >= 2 (the heads use BatchNorm)")
    if cfg.kd_alpha < 0 or cfg.kd_beta < 0 or cfg.lr <= 0 or cfg.epochs < 1:
        raise DsmixError("--kd-alpha/--kd-beta must be >= 0, --lr > 0 and --epochs >= 1")
    out = Path(cfg.out)
    if cfg.resume and not (out / "last.pt").exists():
        raise CheckpointError("--resume: no last.pt in the run folder (nothing to resume)", out)
    if not cfg.resume and ((out / "last.pt").exists() or (out / "metrics.jsonl").exists()):
        raise DsmixError("already holds a run; use --resume to continue it or choose another --out", out)


# ------------------------------------------------------------------------------------- DSM source

def _dsm_source(cfg: QEPConfig, device: torch.device, info: Callable[[str], None]):
    """A function (dist01, ref01, batch) -> (B, h, w) non-negative DSMs, and the resolved model."""
    if cfg.dsm_source == "gt":
        from dsmix_cli.dsm.gt import gt_dsm

        return (lambda dist, ref, batch: gt_dsm(dist, ref, pool=cfg.dsm_pool)), None
    if cfg.dsm_source == "maps":
        return (lambda dist, ref, batch: batch["gt"].to(device).float()), None
    from dsmix_cli.dsm.network import load_dsm_model

    resolved = defaults.resolve_default("dsm_model", cfg.dsm_model)
    info(f"DSM model: {resolved.value} ({resolved.source})")
    net = load_dsm_model(resolved.value, device)
    if net.image_size != cfg.image_size:
        info(f"note: the DSM model was trained at {net.image_size} px, QEP crops are {cfg.image_size} px")
    return (lambda dist, ref, batch: net.predict(dist).clamp_min(0)), os.path.abspath(resolved.value)


# ------------------------------------------------------------------------------------- the stage

def _normalizer(arch: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean, std = input_stats(arch)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return lambda x: (x - m) / s


def make_training_step(cfg: QEPConfig, device: torch.device, dsm_fn, teacher: torch.nn.Module | None,
                       distort=None):
    """The QEP step (METHOD.md 4, steps 1-7) as `fn(model, batch, gen, step) -> StepOutput`."""
    norm_s = _normalizer(cfg.arch, device)
    norm_t = _normalizer(cfg.teacher or cfg.arch, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def step_fn(model, batch, gen, step) -> StepOutput:
        ref = to_float(batch["ref"].to(device, non_blocking=True))
        n = ref.shape[0]
        with torch.no_grad():
            if cfg.on_the_fly:  # type and level drawn per sample by the dataset (uniform)
                types, levels = batch["type"].long().to(device), batch["level"].long().to(device)
                premade = batch["premade"].bool().to(device)
                dist = ref.clone()
                if premade.any():
                    dist[premade] = to_float(batch["dist"].to(device, non_blocking=True))
                todo = (~premade).nonzero().flatten()
                if len(todo):  # CPU-only types were distorted in the loader workers already
                    with torch.autocast(device.type, enabled=False):  # distortions in full precision
                        dist[todo] = distort(ref[todo], types[todo], levels[todo], generator=gen).float().clamp(0, 1)
            else:
                dist = to_float(batch["dist"].to(device, non_blocking=True))
                types, levels = batch["type"].long().to(device), batch["level"].long().to(device)
            dsm = dsm_fn(dist, ref, batch).float()
            mixed = mix(dist, cfg.mix, gen, paste_prob=cfg.paste_prob)
            weights = mix_weights(mixed.visible, dsm[mixed.sources], mode=cfg.label_mode)
            targets = soft_targets(types[mixed.sources], levels[mixed.sources], weights)
            pristine = pristine_targets(n, device=device)
        x = norm_s(torch.cat([mixed.images, ref])).contiguous(memory_format=fmt)
        logits, stages = model(x, return_stages=True)
        parts: dict[str, torch.Tensor] = {}
        ce_dist = ce_ref = 0.0
        for name, z in logits.items():
            d, r = soft_cross_entropy(z[:n], targets[name]), soft_cross_entropy(z[n:], pristine[name])
            parts[f"ce_{name}"] = ((d + r) / 2).detach()
            ce_dist, ce_ref = ce_dist + d, ce_ref + r
        loss = (ce_dist + ce_ref) / 2  # Eq. 6 over all 2B images, summed over the heads
        parts["ce_dist"], parts["ce_ref"] = ce_dist.detach(), ce_ref.detach()
        if teacher is not None:  # Eq. 7 on the references only
            with torch.no_grad():
                t_stages = teacher.forward_stages(norm_t(ref).contiguous(memory_format=fmt))
            kd, fr, cosd = kd_loss([s[n:] for s in stages], t_stages, cfg.kd_alpha, cfg.kd_beta)
            loss = loss + kd
            parts.update(kd=kd.detach(), kd_fr=fr.detach(), kd_cosd=cosd.detach())
        parts["lambda_base"] = weights[0].mean().detach()
        return StepOutput(loss=loss, parts=parts, samples=2 * n)

    return step_fn


def encoder_meta(cfg: QEPConfig, config: dict, step: int) -> dict:
    """The metadata of `encoder.safetensors` (what `dsmix probe --encoder RUN` reads)."""
    mean, std = input_stats(cfg.arch)
    return {"kind": "qep-encoder", "arch": cfg.arch, "image_size": cfg.image_size, "input_mean": list(mean),
            "input_std": list(std), "step": step, "config": config}


def run_qep(cfg: QEPConfig, info: Callable[[str], None] = lambda _m: None,
            on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) a QEP training; returns a summary dict (run, step, finished, loss, encoder).

    Raises:
        DsmixError: bad options or inputs, before any work starts.
        TrainingError: a non-finite loss.
    """
    validate_config(cfg)
    from dsmix_cli.stages.qpt import check_pretext, run_qpt

    check_pretext(cfg)
    if cfg.pretext == "qpt":
        return run_qpt(cfg, info, on_progress)
    out = Path(cfg.out)
    saved = read_run_config(out) if cfg.resume else {}
    if cfg.resume:  # the options first, before any work; the derived values below
        check_resume_config(saved, cfg.to_dict(), out, keys=cfg.to_dict())
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    dist_info = init_distributed(device)
    seed_everything(cfg.seed)

    distort = None
    if cfg.on_the_fly:
        from dsmix_cli.distortions import CPU_ONLY_TYPES, NUM_LEVELS, NUM_TYPES, distort_batch

        bad = [t for t in cfg.types if not 1 <= t <= NUM_TYPES] + [v for v in cfg.levels if not 1 <= v <= NUM_LEVELS]
        if bad:
            raise DsmixError(f"--types/--levels: {bad} outside 1-{NUM_TYPES} / 1-{NUM_LEVELS}")
        distort = distort_batch
        ref_paths = list_references(Path(cfg.refs), info)
        epoch_size = cfg.epoch_size
        if epoch_size is None:  # one pass over the references, but at least one full batch
            epoch_size = max(len(ref_paths), cfg.batch_size)
            if epoch_size > len(ref_paths):
                info(f"only {len(ref_paths)} references: an epoch is one batch of {epoch_size} crops")
        dataset: Dataset = ReferenceCropDataset(ref_paths, cfg.image_size, cfg.seed, flip=cfg.flip,
                                                epoch_size=epoch_size, types=list(cfg.types),
                                                levels=list(cfg.levels), cpu_types=CPU_ONLY_TYPES)
    else:
        dataset = _pair_dataset(cfg)
    # --batch-size is the global batch (as in pretrain-dsm): under torchrun each of the N
    # processes takes batch/N, so the schedule and the samples per step do not depend on N.
    world = dist_info.world_size
    if cfg.batch_size % world or cfg.batch_size // world < 2:
        raise DsmixError(f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the {world} "
                         f"processes of this run, with at least 2 samples per process")
    per_rank = cfg.batch_size // world
    spe = steps_per_epoch(len(dataset), per_rank, world)
    if spe < 1:
        raise DsmixError(f"{len(dataset)} training samples are fewer than one batch of {cfg.batch_size}: "
                         f"lower --batch-size or add data")
    dsm_cfg = cfg
    if cfg.dsm_source == "model" and cfg.dsm_model is None and saved.get("dsm_model_resolved"):
        dsm_cfg = replace(cfg, dsm_model=saved["dsm_model_resolved"])  # a resumed run keeps its DSM network
    dsm_fn, dsm_model = _dsm_source(dsm_cfg, device, info)

    config = cfg.to_dict()
    config.update(dsm_model_resolved=dsm_model, steps_per_epoch=spe, total_steps=spe * cfg.epochs, amp=amp,
                  world_size=world, per_rank_batch=per_rank)
    if cfg.resume:
        check_resume_config(saved, config, out)

    student = build_resnet(cfg.arch, pretrained=(cfg.student_weights or True) if cfg.pretrained else False)
    model = QualityEncoderNet(student, joint_head=cfg.joint_head, hidden=cfg.head_hidden).to(device)
    teacher = None
    if cfg.kd_alpha or cfg.kd_beta:
        t_arch = cfg.teacher or cfg.arch
        weights = (cfg.teacher_weights or True) if cfg.pretrained else (cfg.teacher_weights or False)
        teacher = build_resnet(t_arch, pretrained=weights).to(device).eval().requires_grad_(False)
        if not weights:
            info(f"teacher: {t_arch} with RANDOM weights (--no-pretrained): KD distils a frozen random net")
        else:
            info(f"teacher: {t_arch}, ImageNet weights, frozen")
    else:
        info("KD off (--kd-alpha 0 --kd-beta 0): no teacher")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)

    if cfg.compile:
        model.compile()  # in place, so checkpoints and the exported encoder keep plain keys
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=device.type == "cuda" or None)  # fused kernels on CUDA
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedules.step_decay(spe, every_epochs=cfg.lr_step_epochs, gamma=cfg.lr_gamma))
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
    info(f"QEP: {len(dataset)} samples/epoch, {spe} steps/epoch, {spe * cfg.epochs} steps in all "
         f"({cfg.epochs} epochs); device {device}, amp {amp}; run {out}")

    bad = BadInputs()

    def batches(epoch: int, skip: int):
        return epoch_loader(dataset, batch_size=per_rank, seed=cfg.seed, epoch=epoch, skip_batches=skip,
                            workers=cfg.workers, dist_info=dist_info, pin_memory=device.type == "cuda",
                            collate_fn=collate_on_the_fly if cfg.on_the_fly else None,
                            skip_bad=cfg.skip_bad, bad=bad)

    def on_save(m: QualityEncoderNet, step: int) -> None:
        export_weights(out / ENCODER_FILE, m.backbone.state_dict(), encoder_meta(cfg, config, step))

    loop = LoopConfig(epochs=cfg.epochs, steps_per_epoch=spe, max_steps=cfg.max_steps, seed=cfg.seed, amp=amp,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every)
    result = fit(run_dir=out, kind=KIND, config=config, model=model, optimizer=optimizer, scheduler=scheduler,
                 batches=batches, training_step=make_training_step(cfg, device, dsm_fn, teacher, distort),
                 loop=loop, device=device, dist_info=dist_info, resume=cfg.resume, on_progress=on_progress,
                 on_save=on_save)
    if dist_info.is_main and result.finished:  # the chain of defaults holds finished runs only
        defaults.record_default("encoder", out)
    return {"run": str(out), "step": result.step, "finished": result.finished, "last_loss": result.last_loss,
            "encoder": str(out / ENCODER_FILE), "skipped_inputs": bad.lines}
