"""The training loop every stage runs: `fit`.

A stage supplies the model, optimizer, scheduler, a function that yields an epoch's batches
(from a given batch on) and a `training_step` that returns the loss. `fit` owns the rest:
DDP wrapping, autocast and the fp16 scaler, the optimizer step, `metrics.jsonl`, atomic `last`/
`best` checkpoints, exact resume, `--max-steps`, and stopping on a non-finite loss.

Exact resume rests on two rules: the data order and every per-sample random draw are functions
of (seed, epoch, index) (see `engine.data`), and the step's own randomness comes from the
generator `fit` passes, seeded by (seed, step, rank). So after a resume from step k, step k+1
sees exactly the batch and random numbers it would have seen.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dsmix_cli.engine.checkpoint import export_weights, load_checkpoint, save_checkpoint
from dsmix_cli.engine.resume import check_resume_config
from dsmix_cli.engine.runtime import DistInfo, all_reduce_mean, autocast, barrier, derive_seed, generator
from dsmix_cli.errors import CheckpointError, TrainingError
from dsmix_cli.fileio import remove_stale_temporaries, write_text

# Set to a folder to make every rank export its final weights there (rank<N>.safetensors).
DUMP_ENV = "DSMIX_DUMP_RANK_WEIGHTS"


@dataclass
class StepOutput:
    """What a training step returns: the loss to minimise and its parts (for the log)."""

    loss: torch.Tensor
    parts: dict[str, float | torch.Tensor] = field(default_factory=dict)
    samples: int = 0


@dataclass
class LoopConfig:
    """How `fit` runs. `epochs` x `steps_per_epoch` defines the schedule; `max_steps` only
    stops early (a resumed run may raise it)."""

    epochs: int
    steps_per_epoch: int
    max_steps: int | None = None
    seed: int = 0
    amp: str = "off"  # off | bf16 | fp16
    log_every: int = 1
    checkpoint_every: int = 500
    grad_clip: float | None = None
    sync_bn: bool = True  # under DDP on CUDA, BatchNorm statistics over the global batch
    validate_every: int | None = None  # steps between validations (and at the last step); None: epoch ends
    best_higher: bool = False  # the best_key metric is better when higher (an accuracy)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def stop_step(self) -> int:
        return self.total_steps if self.max_steps is None else min(self.max_steps, self.total_steps)


@dataclass
class FitResult:
    step: int
    finished: bool  # the whole schedule ran (not stopped by --max-steps)
    last_loss: float | None
    best_metric: float | None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _truncate_metrics(path: Path, keep_up_to: int) -> None:
    """Drop log lines past the resumed step, so a resumed run's log reads as one run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= keep_up_to:
            kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))  # atomic: a kill here keeps the old log


def _to_float(v: float | torch.Tensor) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def fit(
    *,
    run_dir: Path,
    kind: str,
    config: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Callable[[int, int], Iterable[Any]],
    training_step: Callable[[nn.Module, Any, torch.Generator, int], StepOutput],
    loop: LoopConfig,
    device: torch.device,
    dist_info: DistInfo | None = None,
    resume: bool = False,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    best_key: str | None = None,
    on_progress: Callable[[dict], None] | None = None,
    on_save: Callable[[nn.Module, int], None] | None = None,
) -> FitResult:
    """Train `model` from step 0 (or from `run_dir/last.pt` with `resume`) to `loop.stop_step`.

    Args:
        run_dir: the run folder (checkpoints and `metrics.jsonl` go here; rank 0 writes).
        kind: the stage name stored in checkpoints and checked on resume.
        config: the resolved config saved inside every checkpoint. With `resume`, it must match
            the checkpoint's config in every field but the run-control ones (`engine.resume`).
        model: the trainable module, already on `device`. Wrapped in DDP when distributed.
        optimizer, scheduler: built on `model`'s parameters; the scheduler is stepped once per
            optimizer step.
        batches: `batches(epoch, skip)` yields the batches of `epoch` after the first `skip`.
        training_step: `training_step(model, batch, gen, step)` -> `StepOutput`; runs under
            autocast; `gen` is a CPU generator seeded by (seed, step, rank).
        loop: the schedule and logging/checkpointing cadence.
        validate: optional, called on the unwrapped model at each epoch end, or with
            `loop.validate_every` every that many steps and at the last step; returns metrics
            logged with the step, e.g. `{"val_loss": 0.01}`. It must draw no random numbers
            from the global generators the training uses (exact resume).
        best_key: the `validate` metric that selects `best.pt` (lower is better, higher with
            `loop.best_higher`); without it, the mean training loss of the epoch does.
        on_progress: called after every step with a dict (step, total, loss, lr, ...).
        on_save: called (rank 0) after each `last.pt` is written, with the unwrapped model and
            step, e.g. to export weights for later stages.
    """
    dist_info = dist_info or DistInfo()
    run_dir = Path(run_dir)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)  # what a kill -9 during a checkpoint write left
    metrics_path = run_dir / "metrics.jsonl"
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    scaler = torch.amp.GradScaler(device.type, enabled=(loop.amp == "fp16"))
    step = 0
    best_metric: float | None = None

    if resume:
        if not last_path.exists():
            raise CheckpointError("--resume: no last.pt in the run folder (nothing to resume)", run_dir)
        ckpt = load_checkpoint(last_path, kind=kind)
        check_resume_config(ckpt.get("config") or {}, config, last_path)  # the stage checked too; this guards all
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        best_metric = ckpt.get("best_metric")
        if dist_info.is_main:
            _truncate_metrics(metrics_path, step)
    elif dist_info.is_main and metrics_path.exists():
        metrics_path.unlink()

    train_model: nn.Module = model
    if dist_info.enabled:
        if loop.sync_bn and device.type == "cuda":
            # SyncBatchNorm keeps the same Parameter objects, so the optimizer is unaffected. It
            # has no CPU kernel: on CPU (gloo) each rank normalises its own share, and DDP
            # broadcasts rank 0's running statistics at every forward.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def checkpoint(path: Path, step_now: int) -> None:
        if not dist_info.is_main:
            return
        save_checkpoint(
            path, kind=kind, config=config, step=step_now, model=_unwrap(train_model).state_dict(),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            best_metric=best_metric, torch_rng=torch.get_rng_state(),
        )

    def log(record: dict) -> None:
        if dist_info.is_main:
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    stop = loop.stop_step
    last_loss: float | None = None
    spe = loop.steps_per_epoch
    if spe <= 0:
        raise TrainingError("the training set is smaller than one batch; lower --batch-size or add data")
    t_last, samples_since = time.perf_counter(), 0
    epoch_losses: list[float] = []

    while step < stop:
        epoch, skip = divmod(step, spe)
        if skip == 0:
            epoch_losses = []
        train_model.train()
        for batch in batches(epoch, skip):
            # Global RNG (dropout, drop-path) as a function of the step, for exact resume.
            torch.manual_seed(derive_seed(loop.seed, "global", step, dist_info.rank))
            gen = generator(loop.seed, "step", step, dist_info.rank)
            with autocast(device, loop.amp):
                out = training_step(train_model, batch, gen, step)
            loss_value = all_reduce_mean(out.loss.detach().float(), dist_info)
            if not torch.isfinite(loss_value):
                raise TrainingError(
                    f"non-finite loss ({loss_value.item()}) at step {step + 1}; stopped. The last good "
                    f"checkpoint is {last_path if last_path.exists() else '(none yet)'}; try a lower "
                    f"--lr or --amp off, then --resume")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if loop.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(train_model.parameters(), loop.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            last_loss = float(loss_value.item())
            epoch_losses.append(last_loss)
            samples_since += out.samples * dist_info.world_size

            if step % loop.log_every == 0 or step == stop:
                now = time.perf_counter()
                rec = {"step": step, "epoch": epoch, "loss": last_loss, "lr": lr}
                for k, v in out.parts.items():
                    rec[k] = float(all_reduce_mean(torch.as_tensor(_to_float(v), device=device), dist_info))
                if samples_since:
                    rec["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                t_last, samples_since = now, 0
                log(rec)
            if on_progress is not None and dist_info.is_main:
                on_progress({"step": step, "total": stop, "loss": last_loss, "lr": lr, "epoch": epoch})

            epoch_done = step % spe == 0
            val_now = validate is not None and (
                (step % loop.validate_every == 0 or step == stop) if loop.validate_every else epoch_done)
            if epoch_done or val_now:
                metrics: dict[str, float] = {}
                if val_now:
                    metrics = validate(_unwrap(train_model))
                    train_model.train()
                    log({"step": step, "epoch": epoch, **metrics})
                value = metrics.get(best_key) if best_key else (
                    sum(epoch_losses) / len(epoch_losses) if epoch_losses and epoch_done else None)
                better = value is not None and math.isfinite(value) and (
                    best_metric is None or (value > best_metric if loop.best_higher else value < best_metric))
                if better:
                    best_metric = value
                    checkpoint(best_path, step)
            if step == stop or epoch_done or step % loop.checkpoint_every == 0:
                checkpoint(last_path, step)
                if on_save is not None and dist_info.is_main:
                    on_save(_unwrap(train_model), step)
            if step >= stop:
                break
    if step > 0 and not best_path.exists():
        checkpoint(best_path, step)  # stopped before any epoch end: best is the last state
    dump = os.environ.get(DUMP_ENV)
    if dump:  # testing hook: every rank writes its final weights, to check DDP keeps them identical
        export_weights(Path(dump) / f"rank{dist_info.rank}.safetensors", _unwrap(train_model).state_dict(),
                       {"kind": "rank-dump", "rank": dist_info.rank, "step": step})
    barrier(dist_info)
    return FitResult(step=step, finished=step >= loop.total_steps, last_loss=last_loss, best_metric=best_metric)
