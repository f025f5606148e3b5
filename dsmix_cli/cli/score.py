"""`dsmix score` and `dsmix demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (UNITS, DeviceOpt, JsonOpt, ModelOpt, WorkersOpt, counter, default_run_dir,
                                  handle_errors, quiet_if_stdout, resolved)
from dsmix_cli.cli.probe import print_probe_table


SHOWN_ROWS = 20  # rows of the table printed when the scores also go to a file
# progress units of the demo's phases: its training stages count optimizer steps
DEMO_UNITS = {**UNITS, "pretrain-dsm": "step", "qep": "step"}


def score(
    paths: Annotated[List[str], typer.Argument(
        metavar="IMAGE", help="Image files, folders (searched recursively) or globs.")],
    model: ModelOpt = None,
    csv: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", help="Write path,score,note rows here ('-' = stdout); note flags a score outside the "
                      "training labels' range.")] = None,
    json: JsonOpt = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, metavar="N", help="Images per batch (x5 crops).")] = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Quality scores (higher = better) of images, folders or globs with a probed model.

    Each score averages the five test crops; scores are in the model's normalised scale (0 = the
    worst, 1 = the best training label). A score outside [0, 1] is kept and marked in the note
    column (the model extrapolates there). Unreadable images are named on stderr and the others
    scored; the exit code is then 1. Folders and globs (`'DIR/**/*.png'`) list each file once and
    do not follow links to folders (what they skip is named on stderr). A file name that is not
    valid UTF-8 is written with \\xNN for each such byte.

    \b
    Example: dsmix score photos/ --csv scores.csv
    """
    from dsmix_cli.engine.runtime import resolve_device
    from dsmix_cli.errors import DsmixError
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import expand_inputs, score_images, write_scores_csv, write_scores_json
    from dsmix_cli.paths import path_text

    to_stdout = quiet_if_stdout(csv, json)
    run = resolved("model", model, to_stderr=True)
    inputs = expand_inputs(paths)
    for line in inputs.skipped:
        report.warn(line)
    if not inputs.paths:
        raise DsmixError("no images to score: " + "; ".join(inputs.problems or ["no paths given"]))
    probed = load_bundle(run, resolve_device(device))
    with report.Bars(UNITS) as bars:
        scored = score_images(probed, inputs.paths, batch_size=batch_size, workers=workers,
                              on_progress=counter(bars, "scoring", len(inputs.paths)))
    good = [r for r in scored if not r.error]
    flagged = [r for r in good if r.note]
    if not to_stdout:  # the table first: whatever happens to the files, the scores are on screen
        shown = good if csv is None and json is None else good[:SHOWN_ROWS]
        columns = ["path", "score"] + (["note"] if flagged else [])
        rows = [(path_text(r.path), r.score) + ((r.note,) if flagged else ()) for r in shown]
        report.table(f"scores (higher = better; model {path_text(run)})", columns, rows)
        if len(shown) < len(good):
            report.info(f"... and {len(good) - len(shown)} more rows")
    if csv is not None:
        n = write_scores_csv(csv, scored)
        report.info(f"wrote {path_text(csv)} ({n} rows)")
    if json is not None:
        write_scores_json(json, scored, probed, inputs)
        report.info(f"wrote {path_text(json)} ({len(scored)} images)")
    if flagged:
        report.warn(f"{len(flagged)} of {len(good)} scores lie outside the training labels' range [0, 1] "
                    f"(0 = the worst, 1 = the best training image): the model extrapolates there; they are "
                    f"kept for ranking and marked in the note column")
    bad = [r for r in scored if r.error]
    for r in bad:
        report.error(f"cannot score {r.error}")
    for p in inputs.problems:
        report.error(p)
    if bad or inputs.problems:
        parts = [f"{len(bad)} image(s) could not be read"]
        if inputs.problems:
            parts.append(f"{len(inputs.problems)} input(s) matched no image")
        report.error("; ".join(parts) + f"; {len(good)} image(s) scored")
        raise typer.Exit(code=1)


def demo(
    out: Annotated[Optional[Path], typer.Option(
        "--out", metavar="DIR", help="Folder of the demo's runs (default: a new runs/demo/<timestamp>).")] = None,
    device: DeviceOpt = "cpu",
    record: Annotated[bool, typer.Option(
        "--record-default/--no-record-default",
        help="Make the demo's (toy) model the default model of `dsmix score` and `dsmix evaluate`; the demo's other "
             "runs never become defaults.")] = True,
) -> None:
    """The whole pipeline at toy scale on images shipped with the package, on CPU, in minutes:
    synthesize, make-gt-dsm, pretrain-dsm, qep, probe, evaluate, score.

    \b
    Example: dsmix demo --out runs/demo
    """
    from dsmix_cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=str(out or default_run_dir("demo")), device=device, record_default=record)
    with report.Bars(DEMO_UNITS) as bars:
        result = run_demo(cfg, on_info=report.info, on_progress=bars)
    print_probe_table(result["probe"])
    report.table("demo: evaluate and score", ["what", "value"], result["summary_rows"])
    report.warn(result["toy_notice"])
    if record:
        report.info(f"the demo's model {result['model']} is now the default model of `dsmix score` "
                    f"(toy-scale; `dsmix probe` replaces it, `--no-record-default` keeps yours)")


def register(app: typer.Typer) -> None:
    app.command("score")(handle_errors(score, images=True, out_files=("csv", "json")))
    app.command("demo")(handle_errors(demo, out_dirs=("out",)))
