"""`dsmix probe`, `evaluate` and `cross-eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (UNITS, AllowOutsideRootOpt, DeviceOpt, JsonOpt, ModelOpt, OutOpt, RootOpt, SeedOpt,
                                  WorkersOpt, counter, default_run_dir, handle_errors, is_stdout, quiet_if_stdout,
                                  resolved)
from dsmix_cli.fileio import write_json

EncoderOpt = Annotated[Optional[str], typer.Option(
    "--encoder", help="A dsmix qep run (or its encoder.safetensors / last.pt), timm:<model> (ImageNet "
                      "weights) or random:<model> (default: the last finished qep run, or $DSMIX_ENCODER).")]
CsvLabelsOpt = Annotated[Optional[Path], typer.Option(
    "--csv", help="Label file for the 'csv'/'pyiqa' layouts (or a native label file kept elsewhere).")]
SkipMissingOpt = Annotated[bool, typer.Option(
    "--skip-missing", help="Go on with the images present (and readable) when some are missing.")]
EpochsOpt = Annotated[Optional[int], typer.Option(
    "--epochs", min=1, help="Head training epochs (default: the paper's for the dataset, 100 or 200).")]
TrainViewsOpt = Annotated[int, typer.Option(
    "--train-views", min=1, help="Random crop+flip views per image encoded once and cached for head training.")]
FreshOpt = Annotated[bool, typer.Option(
    "--fresh-crops", help="Encode a new random crop+flip of every training image every epoch (the paper's "
                          "literal protocol; epochs x splits times the encoder work).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Head training batch size.")]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate of the head.")]
WdOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay of the head.")]
FeatureNormOpt = Annotated[bool, typer.Option(
    "--feature-norm/--no-feature-norm", help="Standardise the head's input features with the training "
                                              "features' mean and std (as MAE's linear probe).")]
SizeOpt = Annotated[int, typer.Option("--image-size", min=8, help="Crop size (smaller images are resized up).")]


def _fmt(v) -> str:
    return "nan" if v is None or v != v else f"{v:.4f}"


def probe(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see `dsmix data list`).")],
    encoder: EncoderOpt = None,
    root: RootOpt = None,
    csv: CsvLabelsOpt = None,
    lower_better: Annotated[Optional[bool], typer.Option(
        "--lower-better/--higher-better", help="Score direction of a 'csv'/'pyiqa' label file.")] = None,
    out: OutOpt = None,
    splits: Annotated[int, typer.Option("--splits", min=1, help="Random train/test splits.")] = 10,
    train_ratio: Annotated[float, typer.Option("--train-ratio", help="Training fraction of each split.")] = 0.8,
    val_ratio: Annotated[float, typer.Option(
        "--val-ratio", help="Validation fraction; > 0 keeps the epoch with the best validation SRCC.")] = 0.0,
    epochs: EpochsOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    train_views: TrainViewsOpt = 4,
    fresh_crops: FreshOpt = False,
    batch_size: BatchOpt = 64,
    lr: LrOpt = 7e-4,
    weight_decay: WdOpt = 0.01,
    feature_norm: FeatureNormOpt = True,
    image_size: SizeOpt = 224,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: WorkersOpt = 0,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Linear probing: frozen encoder, MLP head per split, median SRCC/PLCC (METHOD.md 5).

    Writes RUN/results.json, config.json, metrics.jsonl and the model bundle RUN/model.safetensors
    (a head trained on all images), which becomes the default model of `dsmix score`.
    """
    from dsmix_cli.stages.probe import ProbeConfig, run_probe

    quiet_if_stdout(json)
    enc = resolved("encoder", encoder, to_stderr=is_stdout(json))
    cfg = ProbeConfig(encoder=enc, dataset=dataset, out=str(out or default_run_dir("probe")),
                      root=str(root) if root else None, csv=str(csv) if csv else None, lower_better=lower_better,
                      splits=splits, train_ratio=train_ratio, val_ratio=val_ratio, epochs=epochs,
                      skip_missing=skip_missing, train_views=train_views, fresh_crops=fresh_crops,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, feature_norm=feature_norm,
                      image_size=image_size, device=device, seed=seed, workers=workers,
                      allow_outside_root=allow_outside_root)
    with report.Bars(UNITS) as bars:
        results = run_probe(cfg, on_progress=bars, on_info=report.info)
    if json is not None:
        write_json(json, results)
    if json is None or str(json) != "-":
        print_probe_table(results)
        report.info(f"model saved in {results['model']} (now the default model for `dsmix score`)")


def print_probe_table(results: dict) -> None:
    """The per-split table and the median (the paper's Tab. 2 format)."""
    rows = [(r["split"], r["srcc"], r["plcc"], r["krcc"], r["n_train"], r["n_test"]) for r in results["splits"]]
    med = results["median"]
    views = results["train_views"]
    report.table(f"probe {results['dataset']} with {results['encoder']} ({results['epochs']} epochs, "
                 f"{views} cached train views, selection: {results['selection']})",
                 ["split", "SRCC", "PLCC", "KRCC", "train", "test"], rows,
                 footer=("median", med["srcc"], med["plcc"], med["krcc"], "", ""))


def evaluate(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see `dsmix data list`).")],
    model: ModelOpt = None,
    root: RootOpt = None,
    csv: CsvLabelsOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Score every image of a dataset with a probed model and correlate with its labels.

    Images that cannot be read are named on stderr and left out; the exit code is then 1.
    """
    from dsmix_cli.data.catalog import load_dataset
    from dsmix_cli.engine.runtime import resolve_device
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.score import evaluate_model

    to_stdout = quiet_if_stdout(json)
    run = resolved("model", model, to_stderr=to_stdout)
    ds = load_dataset(dataset, root, skip_missing=skip_missing, csv=csv, allow_outside_root=allow_outside_root)
    probed = load_bundle(run, resolve_device(device))
    with report.Bars(UNITS) as bars:
        result = evaluate_model(probed, ds, batch_size=batch_size, workers=workers,
                                on_progress=counter(bars, "scoring", len(ds.items)))
    if result["same_dataset"]:
        report.warn(f"the model's head was trained on {result['trained_on']} itself: these are training-set "
                    "numbers; `dsmix probe` reports held-out splits")
    if json is not None:
        write_json(json, result)
    if not to_stdout:
        report.table(f"evaluate {result['dataset']} with {run}", ["n", "SRCC", "PLCC", "KRCC"],
                     [(result["n"], result["srcc"], result["plcc"], result["krcc"])])
    if result["unreadable"]:
        for e in result.get("unreadable_files", result["unreadable_examples"]):
            report.error(f"cannot score {e}")
        report.error(f"{result['unreadable']} image(s) could not be read; {result['n']} evaluated")
        raise typer.Exit(code=1)


def cross_eval(
    train: Annotated[str, typer.Option("--train", help="Source dataset: the head trains on all of it.")],
    test: Annotated[str, typer.Option("--test", help="Target dataset: tested on all of it.")],
    encoder: EncoderOpt = None,
    train_root: Annotated[Optional[Path], typer.Option("--train-root", help="Source dataset folder.")] = None,
    test_root: Annotated[Optional[Path], typer.Option("--test-root", help="Target dataset folder.")] = None,
    train_csv: Annotated[Optional[Path], typer.Option("--train-csv", help="Source label file (csv/pyiqa).")] = None,
    test_csv: Annotated[Optional[Path], typer.Option("--test-csv", help="Target label file (csv/pyiqa).")] = None,
    epochs: EpochsOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    out: OutOpt = None,
    train_views: TrainViewsOpt = 4,
    fresh_crops: FreshOpt = False,
    batch_size: BatchOpt = 64,
    lr: LrOpt = 7e-4,
    weight_decay: WdOpt = 0.01,
    feature_norm: FeatureNormOpt = True,
    image_size: SizeOpt = 224,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: WorkersOpt = 0,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Cross-dataset test (Re-IQA protocol): head trained on all of --train, tested on all of --test."""
    from dsmix_cli.evaluation.cross_eval import CrossEvalConfig, run_cross_eval

    to_stdout = quiet_if_stdout(json)
    enc = resolved("encoder", encoder, to_stderr=to_stdout)
    cfg = CrossEvalConfig(encoder=enc, train=train, test=test, out=str(out or default_run_dir("cross-eval")),
                          train_root=str(train_root) if train_root else None,
                          test_root=str(test_root) if test_root else None,
                          train_csv=str(train_csv) if train_csv else None,
                          test_csv=str(test_csv) if test_csv else None, epochs=epochs, skip_missing=skip_missing,
                          train_views=train_views, fresh_crops=fresh_crops, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, feature_norm=feature_norm, image_size=image_size,
                          device=device, seed=seed, workers=workers, allow_outside_root=allow_outside_root)
    with report.Bars(UNITS) as bars:
        result = run_cross_eval(cfg, on_progress=bars, on_info=None if to_stdout else report.info)
    if json is not None:
        write_json(json, result)
    if not to_stdout:
        report.table(f"cross-eval {result['train']} -> {result['test']} with {result['encoder']}",
                     ["train", "test", "n", "SRCC", "PLCC", "KRCC"],
                     [(result["train"], result["test"], result["n"], result["srcc"], result["plcc"], result["krcc"])])


def register(app: typer.Typer) -> None:
    app.command("probe")(handle_errors(probe, images=True, out_dirs=("out",), out_files=("json",)))
    app.command("evaluate")(handle_errors(evaluate, images=True, out_files=("json",)))
    app.command("cross-eval")(handle_errors(cross_eval, images=True, out_dirs=("out",), out_files=("json",)))
