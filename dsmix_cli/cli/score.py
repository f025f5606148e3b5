"""`dsmix score` and `dsmix demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (UNITS, DeviceOpt, JsonOpt, ModelOpt, WorkersOpt, counter, default_run_dir,
                                  handle_errors, quiet_if_stdout, resolved)
from dsmix_cli.cli.probe import print_probe_table


def score(
    paths: Annotated[List[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    model: ModelOpt = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write path,score rows here ('-' = stdout).")] = None,
    json: JsonOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch (x5 crops).")] = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Quality scores (higher = better) of images, folders or globs with a probed model.

    Each score averages the five test crops; scores are in the model's normalised scale (0 = the
    worst, 1 = the best training label). Unreadable images are named on stderr and the others
    scored; the exit code is then 1.
    """
    from dsmix_cli.engine.runtime import resolve_device
    from dsmix_cli.errors import DsmixError
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import expand_inputs, score_images, write_scores_csv, write_scores_json

    quiet_if_stdout(csv, json)
    run = resolved("model", model, to_stderr=True)
    files, problems = expand_inputs(paths)
    if not files:
        raise DsmixError("no images to score: " + "; ".join(problems or ["no paths given"]))
    probed = load_bundle(run, resolve_device(device))
    with report.Bars(UNITS) as bars:
        scored = score_images(probed, files, batch_size=batch_size, workers=workers,
                              on_progress=counter(bars, "scoring", len(files)))
    if csv is not None:
        write_scores_csv(csv, scored)
    if json is not None:
        write_scores_json(json, scored, probed)
    if csv is None and json is None:
        report.table(f"scores (higher = better; model {run})", ["path", "score"],
                     [(str(r.path), r.score) for r in scored if not r.error])
    bad = [r for r in scored if r.error]
    for r in bad:
        report.error(f"cannot score {r.error}")
    for p in problems:
        report.error(p)
    if bad or problems:
        report.error(f"{len(bad) + len(problems)} input(s) could not be scored; "
                     f"{len(scored) - len(bad)} image(s) scored")
        raise typer.Exit(code=1)


def demo(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder of the demo's runs (default: a new runs/demo/<timestamp>).")] = None,
    device: DeviceOpt = "cpu",
    record: Annotated[bool, typer.Option(
        "--record-default/--no-record-default",
        help="Make the demo's (toy) model the default model of `dsmix score` (CLI.md); the demo's other "
             "runs never become defaults.")] = True,
) -> None:
    """The whole pipeline at toy scale on images shipped with the package, on CPU, in minutes:
    synthesize, make-gt-dsm, pretrain-dsm, qep, probe, evaluate, score."""
    from dsmix_cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=str(out or default_run_dir("demo")), device=device, record_default=record)
    with report.Bars(UNITS) as bars:
        result = run_demo(cfg, on_info=report.info, on_progress=bars)
    print_probe_table(result["probe"])
    report.table("demo: evaluate and score", ["what", "value"], result["summary_rows"])
    report.warn(result["toy_notice"])
    if record:
        report.info(f"the demo's model {result['model']} is now the default model of `dsmix score` "
                    f"(toy-scale; `dsmix probe` replaces it, `--no-record-default` keeps yours)")


def register(app: typer.Typer) -> None:
    app.command("score")(handle_errors(score))
    app.command("demo")(handle_errors(demo))
