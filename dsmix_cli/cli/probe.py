"""`dsmix probe`, `evaluate`, `cross-eval` and `compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import (UNITS, AllowOutsideRootOpt, DeviceOpt, JsonOpt, ModelOpt, OutOpt, RootOpt,
                                  WorkersOpt, counter, default_run_dir, handle_errors, is_stdout, quiet_if_stdout,
                                  resolved)
from dsmix_cli.fileio import write_json

EncoderOpt = Annotated[Optional[str], typer.Option(
    "--encoder", metavar="ENCODER",
    help="A dsmix qep run (or its encoder.safetensors / last.pt), timm:<model> (ImageNet weights), "
         "random:<model>, or a peer's checkpoint: arniqa:FILE, contrique:FILE, reiqa:CONTENT,QUALITY, "
         "reiqa-quality:FILE, reiqa-content:FILE (default: the last finished qep run, or "
         "$DSMIX_ENCODER).")]
CsvLabelsOpt = Annotated[Optional[Path], typer.Option(
    "--csv", metavar="FILE", help="Label file for the 'csv'/'pyiqa' layouts (or a native label file kept elsewhere).")]
SkipMissingOpt = Annotated[bool, typer.Option(
    "--skip-missing", help="Go on with the images present (and readable) when some are missing.")]
EpochsOpt = Annotated[Optional[int], typer.Option(
    "--epochs", min=1, metavar="N",
    help="MLP head training epochs (default: the paper's for the dataset, 100 or 200).")]
TrainViewsOpt = Annotated[int, typer.Option(
    "--train-views", min=1, metavar="N",
    help="Random crop+flip views per image encoded once and cached for head training.")]
FreshOpt = Annotated[bool, typer.Option(
    "--fresh-crops", help="Encode a new random crop+flip of every training image every epoch (the paper's "
                          "literal protocol; epochs x splits times the encoder work).")]
CrossFreshOpt = Annotated[bool, typer.Option(
    "--fresh-crops", help="Encode a new random crop+flip of every training image every epoch (the paper's "
                          "literal protocol; epochs times the encoder work).")]
ProbeSeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="N", help="Random seed: the splits, the training crops and flips and their order, the "
                                "heads' initial weights (and a random: encoder's weights).")]
CrossSeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="N", help="Random seed: the training crops and flips and their order, the head's initial "
                                "weights (and a random: encoder's weights).")]
DatasetOpt = Annotated[str, typer.Option("--dataset", metavar="NAME", help="Dataset name (see `dsmix data list`).")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", min=1, metavar="N", help="MLP head training batch size (one process: probing does not use "
                                             "torchrun).")]
LrOpt = Annotated[float, typer.Option("--lr", metavar="X", help="AdamW learning rate of the MLP head.")]
WdOpt = Annotated[float, typer.Option("--weight-decay", metavar="X", help="AdamW weight decay of the MLP head.")]
FeatureNormOpt = Annotated[bool, typer.Option(
    "--feature-norm/--no-feature-norm", help="Standardise the MLP head's input features with the training "
                                              "features' mean and std (as MAE's linear probe).")]
SizeOpt = Annotated[int, typer.Option(
    "--image-size", min=8, metavar="N", help="Crop size (smaller images are resized up).")]
ResizeOpt = Annotated[str, typer.Option(
    "--resize", metavar="SIZE",
    help="Resize every image on load: auto (the size the dataset's protocol fixes: KonIQ-10k "
         "512x384), none, or WxH.")]
ProtocolOpt = Annotated[str, typer.Option(
    "--protocol", metavar="NAME",
    help="dsmix (MLP head, 80/20), arniqa (ridge, 70/10/20, two-scale crops), contrique (ridge on "
         "one vector per image, 70/10/20), or all (each on one feature cache).")]
SplitsFromOpt = Annotated[Optional[Path], typer.Option(
    "--splits-from", metavar="PATH",
    help="Use these splits: a file from `dsmix data splits` (or a probe run's splits.json), a CSV "
         "with split columns (pyiqa's ratio802_seed123_split_NN, official_split), or a folder "
         "of ARNIQA-style train/val/test .npy index files.")]
SplitsColumnOpt = Annotated[Optional[str], typer.Option(
    "--splits-column", metavar="NAME", help="With a CSV --splits-from: the split column (or column prefix) to use.")]
CacheOpt = Annotated[bool, typer.Option(
    "--feature-cache/--no-feature-cache", help="Read and write encoded features on disk, per encoder, dataset "
                                                "and views.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", metavar="DIR", help="Feature cache folder (default: $DSMIX_HOME/feature-cache).")]


def _fmt(v) -> str:
    return "nan" if v is None or v != v else f"{v:.4f}"


def probe(
    dataset: DatasetOpt,
    encoder: EncoderOpt = None,
    root: RootOpt = None,
    csv: CsvLabelsOpt = None,
    lower_better: Annotated[Optional[bool], typer.Option(
        "--lower-better/--higher-better", help="Score direction of a 'csv'/'pyiqa' label file.")] = None,
    out: OutOpt = None,
    protocol: ProtocolOpt = "dsmix",
    head: Annotated[Optional[str], typer.Option(
        "--head", metavar="KIND", help="mlp or ridge (default: the protocol's).")] = None,
    views: Annotated[Optional[str], typer.Option(
        "--views", metavar="KIND",
        help="paper (random crops + 5 test crops) or arniqa (5 crops at full and half scale, "
             "concatenated) (default: the protocol's).")] = None,
    splits: Annotated[int, typer.Option(
        "--splits", min=1, metavar="N", help="Random train/test splits.")] = 10,
    train_ratio: Annotated[Optional[float], typer.Option(
        "--train-ratio", metavar="X",
        help="Training fraction of each split (default: the protocol's, 0.8 or 0.7).")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(
        "--val-ratio", metavar="X", help="Validation fraction (default: the protocol's, 0 or 0.1); for an MLP head "
                                         "> 0 keeps the epoch with the best validation SRCC.")] = None,
    splits_from: SplitsFromOpt = None,
    splits_column: SplitsColumnOpt = None,
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
    resize: ResizeOpt = "auto",
    final_head: Annotated[bool, typer.Option(
        "--final-head/--no-final-head", help="Train the saved model's head on every image (default), or keep "
                                             "split 0's head (then `evaluate --split test` is held out).")] = True,
    feature_cache: CacheOpt = True,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    seed: ProbeSeedOpt = 0,
    workers: WorkersOpt = 0,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Linear probing: a frozen encoder, a head per split, median SRCC/PLCC; DSMix's protocol by default.

    Writes RUN/results.json, config.json, metrics.jsonl, the splits used (splits.json) and, for an MLP
    head on the paper views, the model bundle RUN/model.safetensors (a head trained on all images),
    which becomes the default model of `dsmix score`.

    \b
    Example: dsmix probe --dataset clive --root ChallengeDB_release/
    """
    from dsmix_cli.stages.probe import ProbeConfig, run_probe

    quiet_if_stdout(json)
    enc = resolved("encoder", encoder, to_stderr=is_stdout(json))
    cfg = ProbeConfig(encoder=enc, dataset=dataset, out=str(out or default_run_dir("probe")),
                      root=str(root) if root else None, csv=str(csv) if csv else None, lower_better=lower_better,
                      protocol=protocol, head=head, views=views, splits=splits, train_ratio=train_ratio,
                      val_ratio=val_ratio, splits_from=str(splits_from) if splits_from else None,
                      splits_column=splits_column, epochs=epochs, skip_missing=skip_missing,
                      train_views=train_views, fresh_crops=fresh_crops, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, feature_norm=feature_norm, image_size=image_size, resize=resize,
                      final_head=final_head, feature_cache=feature_cache,
                      cache_dir=str(cache_dir) if cache_dir else None, device=device, seed=seed, workers=workers,
                      allow_outside_root=allow_outside_root)
    with report.Bars(UNITS) as bars:
        results = run_probe(cfg, on_progress=bars, on_info=report.info, on_warn=report.warn)
    if json is not None:
        write_json(json, results)
    if json is None or str(json) != "-":
        print_probe_table(results)
        if results["model"]:
            report.info(f"model saved in {results['model']} (now the default model for `dsmix score`)")
        else:
            report.info("no model saved: only an MLP head on the paper views makes one for `dsmix score` "
                        "(--protocol dsmix)")


def print_probe_table(results: dict) -> None:
    """The per-split table and the median (the paper's Tab. 2 format), or one row per protocol."""
    size = results.get("image_size") or {}
    resized = f"; {size['note']}" if size.get("resized_on_load") else ""
    if "protocols" in results:
        rows = [(r["protocol"], f"{r['head']}, {r['views']}", r["srcc"], r["srcc_std"], r["plcc"], r["plcc_std"],
                 "-" if r["alpha"] is None else f"{r['alpha']:.3g}") for r in results["table"]]
        n = results["table"][0]["splits"]
        report.table(f"probe {results['dataset']} with {results['encoder']} (median and std over {n} splits{resized})",
                     ["protocol", "head, views", "SRCC", "std", "PLCC", "std", "alpha"], rows)
        return
    ridge = results["protocol"]["head"] == "ridge"
    last = "alpha" if ridge else "epoch"
    rows = [(r["split"], r["srcc"], r["plcc"], r["krcc"], r["n_train"], r["n_val"], r["n_test"],
             f"{r['alpha']:.3g}" if ridge else r["epoch"]) for r in results["splits"]]
    med = results["median"]
    what = (f"ridge, alpha by validation SRCC, {results['train_views']}" if ridge else
            f"{results['epochs']} epochs, {results['train_views']} cached train views, "
            f"selection: {results['selection']}")
    report.table(f"probe {results['dataset']} with {results['encoder']} ({results['protocol']['name']}: {what}"
                 f"{resized})", ["split", "SRCC", "PLCC", "KRCC", "train", "val", "test", last], rows,
                 footer=("median", med["srcc"], med["plcc"], med["krcc"], "", "", "", ""))


def evaluate(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    root: RootOpt = None,
    csv: CsvLabelsOpt = None,
    split: Annotated[str, typer.Option(
        "--split", metavar="PART",
        help="Score all images, or only the train, val or test part of a probe's split.")] = "all",
    splits_seed: Annotated[Optional[int], typer.Option(
        "--splits-seed", metavar="N",
        help="Seed of that split (default: the probe's, from the model's record).")] = None,
    split_index: Annotated[Optional[int], typer.Option(
        "--split-index", min=0, metavar="N",
        help="Which split (default: the one the model's head was trained on, else 0).")] = None,
    splits_from: SplitsFromOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, metavar="N", help="Images per batch (x5 crops).")] = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    resize: ResizeOpt = "auto",
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Score a dataset (or one part of a probe's split) with a probed model and correlate with its labels.

    Images that cannot be read are named on stderr and left out; the exit code is then 1.

    \b
    Example: dsmix evaluate --dataset clive --root ChallengeDB_release/
    """
    from dsmix_cli.data.catalog import load_dataset
    from dsmix_cli.engine.runtime import resolve_device
    from dsmix_cli.evaluation.bundle import load_bundle
    from dsmix_cli.evaluation.protocols import resolve_resize
    from dsmix_cli.evaluation.score import evaluate_model
    from dsmix_cli.evaluation.split_eval import select_part

    to_stdout = quiet_if_stdout(json)
    run = resolved("model", model, to_stderr=to_stdout)
    ds = load_dataset(dataset, root, skip_missing=skip_missing, csv=csv, allow_outside_root=allow_outside_root)
    probed = load_bundle(run, resolve_device(device))
    ds, part = select_part(ds, probed.meta, split, seed=splits_seed, index=split_index, splits_from=splits_from)
    resize_to = resolve_resize(resize, ds.name)
    with report.Bars(UNITS) as bars:
        result = evaluate_model(probed, ds, batch_size=batch_size, workers=workers, resize_to=resize_to,
                                on_progress=counter(bars, "scoring", len(ds.items)))
    result.update(part)
    if split != "all":
        if not part["held_out"]:
            report.warn(part["note"])
    elif result["same_dataset"]:
        report.warn(f"the model's head was trained on {result['trained_on']} itself: these are training-set "
                    "numbers; `dsmix probe` reports held-out splits (or `--split test` with a --no-final-head probe)")
    if json is not None:
        write_json(json, result)
    if not to_stdout:
        which = "" if split == "all" else f", {split} part of split {part['split_index']}"
        if resize_to:
            which += f", images at {resize_to[0]}x{resize_to[1]}"
        report.table(f"evaluate {result['dataset']}{which} with {run}", ["n", "SRCC", "PLCC", "KRCC"],
                     [(result["n"], result["srcc"], result["plcc"], result["krcc"])])
    if result["unreadable"]:
        for e in result.get("unreadable_files", result["unreadable_examples"]):
            report.error(f"cannot score {e}")
        report.error(f"{result['unreadable']} image(s) could not be read; {result['n']} evaluated")
        raise typer.Exit(code=1)


def cross_eval(
    train: Annotated[str, typer.Option(
        "--train", metavar="NAME", help="Source dataset: the head trains on all of it.")],
    test: Annotated[str, typer.Option(
        "--test", metavar="NAME", help="Target dataset: tested on all of it.")],
    encoder: EncoderOpt = None,
    train_root: Annotated[Optional[Path], typer.Option(
        "--train-root", metavar="DIR",
        help="Source dataset folder (default: $DSMIX_DATA/<name>, else ./datasets/<name>).")] = None,
    test_root: Annotated[Optional[Path], typer.Option(
        "--test-root", metavar="DIR",
        help="Target dataset folder (default: $DSMIX_DATA/<name>, else ./datasets/<name>).")] = None,
    train_csv: Annotated[Optional[Path], typer.Option(
        "--train-csv", metavar="FILE", help="Source label file (csv/pyiqa).")] = None,
    test_csv: Annotated[Optional[Path], typer.Option(
        "--test-csv", metavar="FILE", help="Target label file (csv/pyiqa).")] = None,
    epochs: EpochsOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    out: OutOpt = None,
    train_views: TrainViewsOpt = 4,
    fresh_crops: CrossFreshOpt = False,
    batch_size: BatchOpt = 64,
    lr: LrOpt = 7e-4,
    weight_decay: WdOpt = 0.01,
    feature_norm: FeatureNormOpt = True,
    image_size: SizeOpt = 224,
    resize: ResizeOpt = "auto",
    feature_cache: CacheOpt = True,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    seed: CrossSeedOpt = 0,
    workers: WorkersOpt = 0,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Cross-dataset test (Re-IQA protocol): head trained on all of --train, tested on all of --test.

    \b
    Example: dsmix cross-eval --train live --test csiq --json l2c.json
    """
    from dsmix_cli.evaluation.cross_eval import CrossEvalConfig, run_cross_eval

    to_stdout = quiet_if_stdout(json)
    enc = resolved("encoder", encoder, to_stderr=to_stdout)
    cfg = CrossEvalConfig(encoder=enc, train=train, test=test, out=str(out or default_run_dir("cross-eval")),
                          train_root=str(train_root) if train_root else None,
                          test_root=str(test_root) if test_root else None,
                          train_csv=str(train_csv) if train_csv else None,
                          test_csv=str(test_csv) if test_csv else None, epochs=epochs, skip_missing=skip_missing,
                          train_views=train_views, fresh_crops=fresh_crops, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, feature_norm=feature_norm, image_size=image_size, resize=resize,
                          feature_cache=feature_cache, cache_dir=str(cache_dir) if cache_dir else None,
                          device=device, seed=seed, workers=workers, allow_outside_root=allow_outside_root)
    with report.Bars(UNITS) as bars:
        result = run_cross_eval(cfg, on_progress=bars, on_info=None if to_stdout else report.info,
                                on_warn=report.warn)
    if json is not None:
        write_json(json, result)
    if not to_stdout:
        report.table(f"cross-eval {result['train']} -> {result['test']} with {result['encoder']}",
                     ["train", "test", "n", "SRCC", "PLCC", "KRCC"],
                     [(result["train"], result["test"], result["n"], result["srcc"], result["plcc"], result["krcc"])])


def compare(
    ctx: typer.Context,
    dataset: DatasetOpt,
    encoders: Annotated[Optional[List[str]], typer.Option(
        "--encoders", metavar="ENCODER...",
        help="The encoders, as for probe --encoder: --encoders E1 E2 ... (or --encoders E1 "
                           "--encoders E2).")] = None,
    protocol: ProtocolOpt = "dsmix",
    root: RootOpt = None,
    csv: CsvLabelsOpt = None,
    lower_better: Annotated[Optional[bool], typer.Option(
        "--lower-better/--higher-better", help="Score direction of a 'csv'/'pyiqa' label file.")] = None,
    out: OutOpt = None,
    splits: Annotated[int, typer.Option(
        "--splits", min=1, metavar="N", help="Random splits, the same for every encoder.")] = 10,
    splits_from: SplitsFromOpt = None,
    splits_column: SplitsColumnOpt = None,
    epochs: EpochsOpt = None,
    skip_missing: SkipMissingOpt = False,
    json: JsonOpt = None,
    train_views: TrainViewsOpt = 4,
    batch_size: BatchOpt = 64,
    image_size: SizeOpt = 224,
    resize: ResizeOpt = "auto",
    feature_cache: CacheOpt = True,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    seed: ProbeSeedOpt = 0,
    workers: WorkersOpt = 0,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Several encoders under one protocol on the same splits: one table, a bar chart and JSON.

    Writes RUN/results.json, RUN/compare.png (median SRCC per encoder, std over splits as error bars)
    and the splits used (RUN/splits.json). Features are cached on disk, so a second comparison costs
    only the heads.

    \b
    Example: dsmix compare --dataset clive --encoders runs/qep/a timm:resnet50
    """
    from dsmix_cli.errors import DsmixError
    from dsmix_cli.evaluation.compare import CompareConfig, run_compare

    names = list(encoders or [])
    extra = list(ctx.args)
    if extra and not names:
        raise DsmixError(f"unexpected arguments {extra}: name the encoders with --encoders E1 E2 ...")
    names += extra
    to_stdout = quiet_if_stdout(json)
    cfg = CompareConfig(dataset=dataset, encoders=names, out=str(out or default_run_dir("compare")),
                        protocol=protocol, root=str(root) if root else None, csv=str(csv) if csv else None,
                        lower_better=lower_better, splits=splits, splits_from=str(splits_from) if splits_from else None,
                        splits_column=splits_column, epochs=epochs, train_views=train_views, batch_size=batch_size,
                        image_size=image_size, resize=resize, device=device, seed=seed, workers=workers,
                        skip_missing=skip_missing, feature_cache=feature_cache,
                        cache_dir=str(cache_dir) if cache_dir else None, allow_outside_root=allow_outside_root)
    with report.Bars(UNITS) as bars:
        result = run_compare(cfg, on_progress=bars, on_info=None if to_stdout else report.info,
                             on_warn=report.warn)
    if json is not None:
        write_json(json, result)
    if not to_stdout:
        rows = [(r["encoder"], r["protocol"], r["splits"], r["srcc"], r["srcc_std"], r["plcc"], r["plcc_std"])
                for r in result["table"]]
        report.table(f"compare on {result['dataset']} ({result['n_images']} images, protocol {result['protocol']}; "
                     "median and std over splits)", ["encoder", "protocol", "splits", "SRCC", "std", "PLCC", "std"],
                     rows)
        report.info(f"chart: {result['chart']}")


def register(app: typer.Typer) -> None:
    app.command("probe")(handle_errors(probe, images=True, out_dirs=("out",), out_files=("json",)))
    app.command("evaluate")(handle_errors(evaluate, images=True, out_files=("json",)))
    app.command("cross-eval")(handle_errors(cross_eval, images=True, out_dirs=("out",), out_files=("json",)))
    app.command("compare", context_settings={"allow_extra_args": True})(
        handle_errors(compare, images=True, out_dirs=("out",), out_files=("json",)))
