"""The options of `dsmix qep --pretext qpt` (the command itself is `cli/qep.py`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsmix_cli.qpt import QPTOptions

_D = QPTOptions()

PretextOpt = Annotated[str, typer.Option(
    "--pretext", help="dsmix (DSMix + soft CE, the default) or qpt (quality-aware contrastive, MoCo v2 style; "
                      "needs --refs DIR --on-the-fly).")]
StepsOpt = Annotated[int, typer.Option(
    "--qpt-steps", help="qpt: the most degradation steps per chain (distinct --types in a random order).")]
SkipOpt = Annotated[float, typer.Option("--qpt-skip", help="qpt: probability that each chain step is skipped.")]
RegionOpt = Annotated[Optional[int], typer.Option(
    "--qpt-region", help="qpt: side of the degraded reference region the two patches are cut from "
                         "(default: 3/2 of --image-size).")]
TemperatureOpt = Annotated[float, typer.Option("--qpt-temperature", help="qpt: InfoNCE temperature (MoCo v2).")]
QueueOpt = Annotated[int, typer.Option("--qpt-queue", help="qpt: keys in the momentum queue (MoCo).")]
MomentumOpt = Annotated[float, typer.Option("--qpt-momentum", help="qpt: momentum of the key encoder (MoCo).")]
DimOpt = Annotated[int, typer.Option("--qpt-dim", help="qpt: embedding width of the projection head (MoCo).")]
HiddenOpt = Annotated[Optional[int], typer.Option(
    "--qpt-hidden", help="qpt: hidden width of the projection head (default: the encoder's feature width).")]

DEFAULTS = {"steps": _D.steps, "skip": _D.skip, "region": _D.region, "temperature": _D.temperature,
            "queue": _D.queue, "momentum": _D.momentum, "dim": _D.dim, "hidden": _D.hidden}


# `qep --resume`: each --qpt-* parameter is the field `qpt.<name>` of the saved config
RESUME_NAMES = {f"qpt_{name}": f"qpt.{name}" for name in
                ("steps", "skip", "region", "temperature", "queue", "momentum", "dim", "hidden")}


def qpt_options(steps: int, skip: float, region: int | None, temperature: float, queue: int, momentum: float,
                dim: int, hidden: int | None) -> QPTOptions:
    """The command-line values as `QPTOptions`."""
    return QPTOptions(steps=steps, skip=skip, region=region, temperature=temperature, queue=queue,
                      momentum=momentum, dim=dim, hidden=hidden)
