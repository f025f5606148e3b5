"""Quality-encoder pre-training (QEP) with DSMix and semantic distillation (docs/method.md).

One step (the paper's Algorithm 1 as reconstructed): B distorted crops and their B reference
crops; the DSM of every unmixed distorted crop (frozen DSM network, or the ground truth of the
pair); DSMix of the distorted crops with DSM-weighted soft labels; soft cross-entropy of the
type / level (/ joint) heads over the 2B images (references one-hot pristine); KD of the
student's layer1..4 features towards a frozen ImageNet teacher on the references only; SGD.

Data come from a pre-generated pair folder (`data`, via `dsmix_cli.data.pairs`) or are made on
the fly: reference crops from `refs`, distorted on the training device inside the step with a
type and level drawn uniformly per sample from the step's generator. The heads are scored on
held-out references every `val_every` steps (`stages.qep_validation`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from dsmix_cli import defaults
from dsmix_cli.dsmix import LABEL_MODES, mix, mix_weights, pristine_targets, soft_targets
from dsmix_cli.engine import schedules
from dsmix_cli.engine.checkpoint import export_weights
from dsmix_cli.engine.data import BadInputs, epoch_loader, split_global_batch
from dsmix_cli.engine.loop import LoopConfig, StepOutput, fit
from dsmix_cli.engine.resume import check_resume_config, field_defaults, read_run_config
from dsmix_cli.engine.runtime import init_distributed, resolve_amp, resolve_device, seed_everything
from dsmix_cli.data.references import (RESCALE_MODES, ReferenceCropDataset, collate_on_the_fly,  # noqa: F401
                                       list_references, split_references)
from dsmix_cli.errors import CheckpointError, DatasetError, DsmixError
from dsmix_cli.fileio import write_json
from dsmix_cli.imageio import to_float
from dsmix_cli.models.heads import QualityEncoderNet
from dsmix_cli.models.losses import kd_loss, soft_cross_entropy
from dsmix_cli.models.resnet import RESNET_ARCHS, build_resnet, input_stats
from dsmix_cli.qpt import QPTOptions
from dsmix_cli.stages.qep_batches import distort_on_the_fly, same_crop_partners

KIND = "qep"
ENCODER_FILE = "encoder.safetensors"
DSM_SOURCES = ("model", "gt", "maps")
OPTIMIZERS = ("sgd", "adamw")
MIX_PARTNERS = ("batch", "same")  # where a DSMix sample's pasted images come from
LR_SCHEDULES = ("step", "cosine")


@dataclass
class QEPConfig:
    """Everything a QEP run needs; defaults are the paper's full-scale recipe (docs/method.md).

    Every choice the paper leaves open is a field here and lands in `config.json` and the
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
    rescale: str = "image"              # on the fly: min-max rescale as the whole image (MATLAB) | crop
    ref_resize: int | None = None       # on the fly: shorter side of every reference before cropping
    cache_refs: bool = False            # on the fly: decode every reference once and keep it in memory
    val_refs: Path | None = None        # held-out references (default: a seeded val_fraction of the data's)
    val_fraction: float = 0.05
    val_every: int | None = None        # steps between validations (default: each epoch end) and at the end
    val_max_images: int = 2000          # distorted validation crops at most
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
    mix_refs: bool = False              # also cut-and-mix the references among themselves (label: pristine)
    mix_partners: str = "batch"         # batch: pasted images from the batch (CutMix, [R]) | same: other
                                        # distortions of the base's own reference crop (on the fly)
    label_mode: str = "normalized"      # normalized [P?] | absolute | area | one-sided
    pristine_share: float = 0.5         # share of the CE on the references (paired batching: 1/2)
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
    lr_schedule: str = "step"           # step (the paper's StepLR by epochs) | cosine (over all steps)
    warmup_steps: int = 0               # linear LR warm-up (the paper: none)
    optimizer: str = "sgd"              # sgd (the paper, with momentum) | adamw
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
            "pastes": ("mix-1 boxes from independent permutations, later boxes hide earlier ones"
                       if self.mix_partners == "batch" else
                       "mix-1 boxes, each from another distortion (uniform type and level) of the sample's own "
                       "reference crop, later boxes hide earlier ones"),
            "reference_batching": "paired: batch_size distorted + their batch_size references per step",
            "ce_reduction": "(1 - pristine_share) x mean CE of the B mixed crops + pristine_share x mean CE of "
                            "the B references, summed over the heads (0.5: the mean over the 2B images); with "
                            "pristine_share 0 and KD off the references are not run through the student",
            "kd_stages": ["layer1", "layer2", "layer3", "layer4"],
            "kd_cosd": "1 - cos of flattened per-sample stage features, mean over samples",
            "kd_on": "reference crops only",
            "heads": "2048 -> hidden -> BN -> ReLU -> C on GAP(layer4)",
            "dsm_clamp": "max(DSM, 0), bilinear upsampling align_corners=False",
            "input_norm": "student and teacher: their own ImageNet mean/std; GT DSM from [0,1] pixels",
            "on_the_fly": "type and level uniform per sample (drawn with its crop); JPEG2000 and colour "
                          "quantization applied to the crop in the loader workers, the rest batched on the device",
            "rescale": {"image": "first min-max rescale by the whole reference's range, type 22 thresholds on the "
                                 "whole reference's histogram, second rescale by [0, 1]",
                        "crop": "both min-max rescales by the crop's own range"}[self.rescale]
            if self.rescale in RESCALE_MODES else self.rescale,
            "validation": "held-out references; unmixed, unflipped crops of whole-image distortions (on the fly) or "
                          "of the held-out pairs, crop and noise seeded per (reference, type, level); type/level "
                          "top-1 over distorted crops, pristine over reference crops; best.pt = highest val_acc",
        }
        return {k: (os.path.abspath(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------------- data

def _pair_dataset(cfg: QEPConfig, pairs: list | None = None) -> Dataset:
    """Pairs of a pre-generated folder; with `dsm_source=maps` the stored maps are cropped alongside."""
    from dsmix_cli.data.pairs import PairCropDataset, load_pairs

    maps = Path(cfg.dsm_maps) if cfg.dsm_source == "maps" else None
    pairs = load_pairs(Path(cfg.data), allow_outside_root=cfg.allow_outside_root) if pairs is None else pairs
    return PairCropDataset(pairs, cfg.image_size, cfg.seed, flip=cfg.flip, gt_maps=maps, pool=cfg.dsm_pool)


@dataclass
class HeldOut:
    """The training data and the held-out references of a run (`held_out`)."""

    train: list                                          # references (on the fly) or pairs
    val_refs: list[Path] = field(default_factory=list)   # distorted whole for the validation set
    val_pairs: list = field(default_factory=list)        # or: the held-out pairs (--data)
    keys: list[str] = field(default_factory=list)        # a stable name per validation reference / pair


def _key(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def held_out(cfg: QEPConfig, info: Callable[[str], None] = lambda _m: None) -> HeldOut:
    """Split the references: `--val-refs` (left out of the training data wherever they appear),
    or a seeded `val_fraction` of the references of `--refs` / of the pair folder."""
    from dsmix_cli.data.pairs import load_pairs, split_by_reference

    refs = list_references(Path(cfg.refs), info=info) if cfg.on_the_fly else None
    pairs = None if cfg.on_the_fly else load_pairs(Path(cfg.data), allow_outside_root=cfg.allow_outside_root)
    if cfg.val_refs is not None:
        val = list_references(Path(cfg.val_refs), "--val-refs", info=info)
        held = {p.resolve() for p in val}
        if refs is not None:
            train = [p for p in refs if p.resolve() not in held]
            n_before = len(refs)
        else:
            train = [q for q in pairs if Path(q.ref).resolve() not in held]
            n_before = len(pairs)
        if len(train) < n_before:
            info(f"--val-refs: {n_before - len(train)} of the training {'references' if refs else 'pairs'} "
                 f"are validation references; they are left out of training")
        out = HeldOut(train, val_refs=val, keys=[_key(p, Path(cfg.val_refs)) for p in val])
    elif refs is not None:
        train, val = split_references(refs, cfg.val_fraction, cfg.seed)
        out = HeldOut(train, val_refs=val, keys=[_key(p, Path(cfg.refs)) for p in val])
    else:
        train, val_pairs = split_by_reference(pairs, cfg.val_fraction, cfg.seed)
        out = HeldOut(train, val_pairs=val_pairs, keys=[_key(q.ref, Path(cfg.data)) for q in val_pairs])
    if not out.train:
        raise DsmixError("no training data left once the validation references are held out "
                         "(lower --val-fraction or give other --val-refs)")
    return out


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
    if cfg.mix_partners not in MIX_PARTNERS:
        raise DsmixError(f"--mix-partners {cfg.mix_partners!r}: choose one of {', '.join(MIX_PARTNERS)}")
    if cfg.mix_partners == "same" and not cfg.on_the_fly:
        raise DsmixError("--mix-partners same distorts each crop again: it needs --refs DIR --on-the-fly")
    if not 0.0 <= cfg.paste_prob <= 1.0:
        raise DsmixError("--paste-prob must lie in [0, 1]")
    for name in (cfg.arch, cfg.teacher or cfg.arch):
        if name not in RESNET_ARCHS:
            raise DsmixError(f"unknown architecture {name!r}; choose one of {', '.join(RESNET_ARCHS)}")
    if (cfg.teacher or cfg.arch) != cfg.arch and (cfg.kd_alpha or cfg.kd_beta):
        raise DsmixError(f"teacher {cfg.teacher} differs from the student {cfg.arch}: the KD stages would not "
                         f"match (use a teacher of the same architecture)")
    if cfg.image_size < 32 or cfg.image_size % cfg.dsm_pool:
        raise DsmixError(f"--image-size {cfg.image_size} must be >= 32 and a multiple of the DSM pool {cfg.dsm_pool}")
    if cfg.batch_size < 2:
        raise DsmixError("--batch-size must be >= 2 (the heads use BatchNorm)")
    if cfg.kd_alpha < 0 or cfg.kd_beta < 0 or cfg.lr <= 0 or cfg.epochs < 1:
        raise DsmixError("--kd-alpha/--kd-beta must be >= 0, --lr > 0 and --epochs >= 1")
    if not 0.0 <= cfg.pristine_share < 1.0:
        raise DsmixError("--pristine-share must lie in [0, 1): the share of the cross-entropy on the references")
    if cfg.rescale not in RESCALE_MODES:
        raise DsmixError(f"--rescale {cfg.rescale!r}: choose one of {', '.join(RESCALE_MODES)}")
    if not cfg.on_the_fly and (cfg.ref_resize is not None or cfg.cache_refs):
        raise DsmixError("--ref-resize and --cache-refs are for --refs --on-the-fly")
    if cfg.ref_resize is not None and cfg.ref_resize < cfg.image_size:
        raise DsmixError(f"--ref-resize {cfg.ref_resize} is smaller than the {cfg.image_size}-pixel crop")
    if cfg.val_refs is not None and not Path(cfg.val_refs).is_dir():
        raise DatasetError("--val-refs: not a folder", cfg.val_refs)
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DsmixError(f"--val-fraction {cfg.val_fraction}: expected a value in [0, 1)")
    if (cfg.val_every is not None and cfg.val_every < 1) or cfg.val_max_images < 1:
        raise DsmixError("--val-every and --val-max-images must be >= 1")
    if cfg.optimizer not in OPTIMIZERS:
        raise DsmixError(f"--optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise DsmixError(f"--lr-schedule {cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if cfg.warmup_steps < 0:
        raise DsmixError("--warmup-steps must be >= 0")
    out = Path(cfg.out)
    if cfg.resume and not (out / "last.pt").exists():
        raise CheckpointError("--resume: no last.pt in the run folder (nothing to resume)", out)
    if not cfg.resume and (out / "last.pt").exists():
        raise DsmixError("already holds a run; use --resume to continue it or choose another --out", out)
    if not cfg.resume and (out / "metrics.jsonl").exists():
        raise DsmixError("holds a run that stopped before its first checkpoint (no last.pt, nothing to resume): "
                         "remove the folder or choose another --out", out)


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
    """The QEP step (Algorithm 1, steps 1-7) as `fn(model, batch, gen, step) -> StepOutput`."""
    norm_s = _normalizer(cfg.arch, device)
    norm_t = _normalizer(cfg.teacher or cfg.arch, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    share = float(cfg.pristine_share)
    with_refs = share > 0 or teacher is not None  # else the references carry no loss: not run at all

    def step_fn(model, batch, gen, step) -> StepOutput:
        ref = to_float(batch["ref"].to(device, non_blocking=True))
        n = ref.shape[0]
        with torch.no_grad():
            if cfg.on_the_fly:  # type and level drawn per sample by the dataset (uniform)
                types, levels = batch["type"].long().to(device), batch["level"].long().to(device)
                dist = distort_on_the_fly(batch, ref, gen, distort)
            else:
                dist = to_float(batch["dist"].to(device, non_blocking=True))
                types, levels = batch["type"].long().to(device), batch["level"].long().to(device)
            partners = None
            if cfg.mix_partners == "same" and cfg.mix > 1:  # the same crop, other (type, level) classes
                dist, types, levels, partners = same_crop_partners(batch, ref, dist, types, levels, cfg, gen, distort)
                dsm = dsm_fn(dist, ref.repeat(cfg.mix, 1, 1, 1), batch).float()
            else:
                dsm = dsm_fn(dist, ref, batch).float()
            mixed = mix(dist, cfg.mix, gen, paste_prob=cfg.paste_prob, partners=partners)
            weights = mix_weights(mixed.visible, dsm[mixed.sources], mode=cfg.label_mode)
            targets = soft_targets(types[mixed.sources], levels[mixed.sources], weights)
            pristine = pristine_targets(n, device=device)
            if with_refs and cfg.mix_refs and cfg.mix > 1:  # seams in both classes: not a cue for "distorted"
                ref = mix(ref, cfg.mix, gen, paste_prob=cfg.paste_prob).images
        x = norm_s(torch.cat([mixed.images, ref]) if with_refs else mixed.images).contiguous(memory_format=fmt)
        logits, stages = model(x, return_stages=True)
        parts: dict[str, torch.Tensor] = {}
        ce_dist = ce_ref = 0.0
        for name, z in logits.items():
            d = soft_cross_entropy(z[:n], targets[name])
            r = soft_cross_entropy(z[n:], pristine[name]) if with_refs else torch.zeros((), device=device)
            parts[f"ce_{name}"] = ((1 - share) * d + share * r).detach()
            ce_dist, ce_ref = ce_dist + d, ce_ref + r
        # Eq. 6 summed over the heads; share 1/2 is the mean over all 2B images
        loss = (1 - share) * ce_dist + share * ce_ref
        parts["ce_dist"] = ce_dist.detach()
        if with_refs:
            parts["ce_ref"] = ce_ref.detach()
        if teacher is not None:  # Eq. 7 on the references only
            with torch.no_grad():
                t_stages = teacher.forward_stages(norm_t(ref).contiguous(memory_format=fmt))
            kd, fr, cosd = kd_loss([s[n:] for s in stages], t_stages, cfg.kd_alpha, cfg.kd_beta)
            loss = loss + kd
            parts.update(kd=kd.detach(), kd_fr=fr.detach(), kd_cosd=cosd.detach())
        parts["lambda_base"] = weights[0].mean().detach()
        return StepOutput(loss=loss, parts=parts, samples=2 * n if with_refs else n)

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
        check_resume_config(saved, cfg.to_dict(), out, keys=cfg.to_dict(), defaults=field_defaults(QEPConfig))
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
    split = held_out(cfg, info)
    if cfg.on_the_fly:
        ref_paths = split.train
        epoch_size = cfg.epoch_size
        if epoch_size is None:  # one pass over the references, but at least one full batch
            epoch_size = max(len(ref_paths), cfg.batch_size)
            if epoch_size > len(ref_paths):
                info(f"only {len(ref_paths)} references: an epoch is one batch of {epoch_size} crops")
        dataset: Dataset = ReferenceCropDataset(ref_paths, cfg.image_size, cfg.seed, flip=cfg.flip,
                                                epoch_size=epoch_size, types=list(cfg.types),
                                                levels=list(cfg.levels), cpu_types=CPU_ONLY_TYPES,
                                                rescale=cfg.rescale, resize=cfg.ref_resize)
    else:
        dataset = _pair_dataset(cfg, split.train)
    # at least 2 per process: DSMix pastes from other samples of the batch
    per_rank, spe = split_global_batch(cfg.batch_size, dist_info.world_size, len(dataset), min_per_rank=2)
    dsm_cfg = cfg
    if cfg.dsm_source == "model" and cfg.dsm_model is None and saved.get("dsm_model_resolved"):
        dsm_cfg = replace(cfg, dsm_model=saved["dsm_model_resolved"])  # a resumed run keeps its DSM network
    dsm_fn, dsm_model = _dsm_source(dsm_cfg, device, info)

    config = cfg.to_dict()
    config.update(dsm_model_resolved=dsm_model, steps_per_epoch=spe, total_steps=spe * cfg.epochs, amp=amp,
                  world_size=dist_info.world_size, per_rank_batch=per_rank)
    if cfg.resume:
        check_resume_config(saved, config, out, defaults=field_defaults(QEPConfig))

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
    optimizer, scheduler = _optimizer(cfg, model, spe, device)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
    info(f"QEP: {len(dataset)} samples/epoch, {spe} steps/epoch, {spe * cfg.epochs} steps in all "
         f"({cfg.epochs} epochs); device {device}, amp {amp}; run {out}")
    progress = on_progress if dist_info.is_main else None
    if cfg.cache_refs:
        dataset.cache(on_progress=progress and (lambda done, total: progress(
            {"phase": "qep-refs", "step": done, "total": total})))
    validator = _validator(cfg, split, out, device, amp, dist_info, per_rank, info, progress)

    bad = BadInputs()

    def batches(epoch: int, skip: int):
        return epoch_loader(dataset, batch_size=per_rank, seed=cfg.seed, epoch=epoch, skip_batches=skip,
                            workers=cfg.workers, dist_info=dist_info, pin_memory=device.type == "cuda",
                            collate_fn=collate_on_the_fly if cfg.on_the_fly else None,
                            skip_bad=cfg.skip_bad, bad=bad)

    def on_save(m: QualityEncoderNet, step: int) -> None:
        export_weights(out / ENCODER_FILE, m.backbone.state_dict(), encoder_meta(cfg, config, step))

    inner_step = make_training_step(cfg, device, dsm_fn, teacher, distort)
    state = {"step": 0}

    def training_step(m, batch, gen, step) -> StepOutput:
        state["step"] = step + 1
        return inner_step(m, batch, gen, step)

    def show(p: dict) -> None:  # the last validation's accuracies ride on the progress line
        shown = validator.shown() if validator is not None else {}
        progress({**p, "val": shown})

    if validator is not None:
        validator.step = lambda: state["step"]
    loop = LoopConfig(epochs=cfg.epochs, steps_per_epoch=spe, max_steps=cfg.max_steps, seed=cfg.seed, amp=amp,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                      validate_every=cfg.val_every or spe, best_higher=True)
    result = fit(run_dir=out, kind=KIND, config=config, model=model, optimizer=optimizer, scheduler=scheduler,
                 batches=batches, training_step=training_step, loop=loop, device=device, dist_info=dist_info,
                 resume=cfg.resume, validate=validator, best_key="val_acc" if validator is not None else None,
                 on_progress=show if progress is not None else None, on_save=on_save)
    if dist_info.is_main:
        if validator is not None:
            validator.write(finished=result.finished, extra={"last_loss": result.last_loss})
        if result.finished:  # the chain of defaults holds finished runs only
            defaults.record_default("encoder", out)
    summary = {"run": str(out), "step": result.step, "finished": result.finished, "last_loss": result.last_loss,
               "encoder": str(out / ENCODER_FILE), "skipped_inputs": bad.lines}
    if validator is not None and validator.latest:
        from dsmix_cli.evaluation.pretext import SCALARS

        best = validator.best()
        summary.update({k: validator.latest["metrics"][k] for k in SCALARS},
                       best_step=best["step"] if best else None, best_val_acc=best["val_acc"] if best else None)
    return summary


def _optimizer(cfg: QEPConfig, model: torch.nn.Module, spe: int, device: torch.device):
    """SGD with momentum and StepLR by epochs (the paper), or AdamW / a cosine over all steps, with an
    optional linear warm-up."""
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=device.type == "cuda" or None)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
    if cfg.lr_schedule == "cosine":
        factor = schedules.cosine(spe * cfg.epochs, warmup_steps=cfg.warmup_steps)
    else:
        factor = schedules.with_warmup(schedules.step_decay(spe, every_epochs=cfg.lr_step_epochs, gamma=cfg.lr_gamma),
                                       cfg.warmup_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _validator(cfg: QEPConfig, split: HeldOut, out: Path, device: torch.device, amp: str, dist_info, per_rank: int,
               info: Callable[[str], None], progress: Callable[[dict], None] | None):
    """The validation set of the held-out references and the `fit` callback that scores it (None
    when nothing is held out)."""
    from dsmix_cli.stages.qep_validation import (BEST_RULE, PretextValidator, pair_validation_set,
                                                 reference_validation_set, score_heads)

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress({"phase": "qep-val-set", "step": done, "total": total})

    if split.val_refs:
        vs = reference_validation_set(split.val_refs, split.keys, list(cfg.types), list(cfg.levels), cfg.image_size,
                                      resize=cfg.ref_resize if cfg.on_the_fly else None,
                                      max_images=cfg.val_max_images, dist_info=dist_info, on_progress=tick)
    elif split.val_pairs:
        vs = pair_validation_set(split.val_pairs, split.keys, cfg.image_size, max_images=cfg.val_max_images,
                                 dist_info=dist_info, on_progress=tick)
    else:
        info("validation: no held-out references (--val-fraction 0 or a single reference); best.pt is the "
             "epoch with the lowest training loss")
        return None
    v = vs.info
    info(f"validation: {v['references']} held-out references, {v['distorted_crops']} distorted crops + "
         f"{v['pristine_crops']} pristine, every {cfg.val_every or 'epoch'}{' steps' if cfg.val_every else ''} "
         f"and at the end; {BEST_RULE}")
    norm = _normalizer(cfg.arch, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    score = lambda m: score_heads(m, vs, device, norm, amp=amp, batch_size=2 * per_rank,  # noqa: E731
                                  memory_format=fmt)
    return PretextValidator(vs, out, score, step=lambda: 0, dist_info=dist_info,
                            summary={"val_set": v, "encoder": str(out / ENCODER_FILE)})
