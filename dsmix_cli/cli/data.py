"""`dsmix data list`, `dsmix data check` and `dsmix data splits`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import AllowOutsideRootOpt, JsonOpt, RootOpt, handle_errors
from dsmix_cli.data import catalog
from dsmix_cli.data.check import check_images, describe
from dsmix_cli.fileio import write_json

data_app = typer.Typer(help="Datasets the tool knows, folder checks, split files.\n\n\b\nExample: dsmix data list",
                       short_help="Datasets the tool knows, folder checks, split files.",
                       no_args_is_help=True, rich_markup_mode=None)


def _direction(info: catalog.DatasetInfo) -> str:
    if info.score_range is None and info.name in catalog.CSV_LAYOUTS:
        return "from --lower-better (default higher better)"
    arrow = "lower better" if info.lower_better else "higher better"
    if info.score_range is None:
        return f"{info.label}, no scores"
    lo, hi = info.score_range
    return f"{info.label}, {arrow}, {lo:g}-{hi:g}"


def _kind(info: catalog.DatasetInfo) -> str:
    if info.name == "pyiqa":
        return "an FR file is synthetic (split by reference), an NR file authentic"
    if info.name in catalog.CSV_LAYOUTS:
        return "synthetic (split by reference) with a ref column, else authentic"
    return "synthetic: split by reference" if info.synthetic else "authentic: split by image"


def _block(info: catalog.DatasetInfo, details: bool) -> tuple[str, list[tuple[str, str]]]:
    """One dataset as a block of `key  value` lines (`details`: also where it is looked for)."""
    heading = info.name + (f" (aliases: {', '.join(info.aliases)})" if info.aliases else "")
    counts = [f"{info.images:,} images" if info.images is not None else "images: as listed"]
    if info.epochs:
        counts.append(f"probe epochs {info.epochs}")
    fields = [("what", info.description), ("type", _kind(info)), ("scores", _direction(info)),
              ("size", ", ".join(counts)), ("layout", info.layout)]
    if details:
        where = ("--root (default: the CSV's folder)" if info.name in catalog.CSV_LAYOUTS
                 else f"--root, else {catalog.resolve_root(info.name, None)}")
        fields.append(("looked for", where))
    return heading, fields


@data_app.command("list")
@handle_errors(out_files=("json",))
def list_datasets(
    name: Annotated[Optional[str], typer.Argument(
        metavar="NAME", help="One dataset (name or alias): its block, and where it is looked for.")] = None,
    json: JsonOpt = None,
) -> None:
    """List the dataset names the tool knows: type, scores, size and expected layout, one block each.

    \b
    Example: dsmix data list clive
    """
    infos = [catalog.DATASETS[catalog.canonical_name(name)]] if name else list(catalog.DATASETS.values())
    if json is not None:
        write_json(json, [{
            "name": i.name, "aliases": list(i.aliases), "description": i.description,
            "synthetic": i.synthetic, "label": i.label, "lower_better": i.lower_better,
            "score_range": list(i.score_range) if i.score_range else None, "images": i.images,
            "epochs": i.epochs, "layout": i.layout} for i in infos])
        if str(json) == "-":
            return
    report.blocks([_block(i, details=name is not None) for i in infos])
    report.info("Check a folder: dsmix data check NAME --root DIR")
    report.info("Default root: $DSMIX_DATA/<name>, else ./datasets/<name>. More: docs/datasets.md")


@data_app.command("check")
@handle_errors(images=True, out_files=("json",))
def check(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name or alias (see `dsmix data list`).")],
    root: RootOpt = None,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Go on with the images present when some are missing (exit 0).")] = False,
    json: JsonOpt = None,
    csv: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE",
        help="Label file: required for 'pyiqa' and 'csv', or a native label file kept elsewhere.")] = None,
    decode: Annotated[bool, typer.Option(
        "--decode/--no-decode", help="Decode every image once to find unreadable files.")] = True,
    lower_better: Annotated[Optional[bool], typer.Option(
        "--lower-better/--higher-better", help="Score direction of a 'pyiqa' or 'csv' label file.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, metavar="N", help="Decoding threads.")] = 4,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Validate a dataset folder before a long run: counts, score range and direction,
    references, missing and unreadable images.

    Exit codes: 0 all usable (or missing ones skipped), 1 unreadable images found,
    2 bad folder or label file (an image listed twice, an entry outside the folder, ...), or
    images missing without --skip-missing.

    \b
    Example: dsmix data check clive --root ChallengeDB_release/
    """
    to_stdout = json is not None and str(json) == "-"
    dataset = catalog.load_dataset(name, root, skip_missing=skip_missing, csv=csv, lower_better=lower_better,
                                   allow_outside_root=allow_outside_root)
    if dataset.missing:
        report.warn(f"{len(dataset.missing)} of {dataset.total} images are missing "
                    f"(e.g. {catalog.format_examples(dataset.missing, dataset.root)}); "
                    f"going on with the {len(dataset.items)} present")
    if decode and to_stdout:  # stdout carries the JSON alone
        dataset = check_images(dataset, workers=workers)
    elif decode:
        with report.progress(f"decoding {dataset.name}", total=len(dataset.items), unit="img") as bar:
            dataset = check_images(dataset, on_progress=lambda done, total: bar.update(done),
                                           workers=workers)
    summary = describe(dataset, decoded=decode)
    if json is not None:
        write_json(json, summary)
    if not to_stdout:
        _print_summary(summary)
    for item in summary["unreadable_examples"]:
        report.warn(f"unreadable: {item['path']}: {item['reason']}")
    if dataset.unreadable:
        report.error(f"{len(dataset.unreadable)} of {dataset.total} images cannot be decoded")
        raise typer.Exit(code=1)


@data_app.command("splits")
@handle_errors(out_files=("out", "json"))
def splits(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name or alias (see `dsmix data list`).")],
    out: Annotated[Path, typer.Option(
        "--out", metavar="FILE",
        help="The split file: .json (read back by --splits-from), or .csv (a name column and one split_NN column "
             "per split).")],
    root: RootOpt = None,
    csv: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE",
        help="Label file: required for 'pyiqa' and 'csv', or a native label file kept elsewhere.")] = None,
    lower_better: Annotated[Optional[bool], typer.Option(
        "--lower-better/--higher-better", help="Score direction of a 'pyiqa' or 'csv' label file.")] = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", metavar="NAME",
        help="Whose split ratios: dsmix (80/20), arniqa or contrique (70/10/20).")] = "dsmix",
    n_splits: Annotated[int, typer.Option("--splits", min=1, metavar="N", help="Random splits.")] = 10,
    train_ratio: Annotated[Optional[float], typer.Option(
        "--train-ratio", metavar="X", help="Training fraction (default: the protocol's).")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(
        "--val-ratio", metavar="X", help="Validation fraction (default: the protocol's).")] = None,
    splits_from: Annotated[Optional[Path], typer.Option(
        "--splits-from", metavar="PATH",
        help="Convert this split file (CSV split columns, ARNIQA .npy folder) instead.")] = None,
    splits_column: Annotated[Optional[str], typer.Option(
        "--splits-column", metavar="NAME", help="With a CSV --splits-from: the split column (or prefix).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seed of the random splits (probe's --seed).")] = 0,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Split the images present when some are missing (as probe --skip-missing).")] = False,
    allow_outside_root: AllowOutsideRootOpt = False,
    json: JsonOpt = None,
) -> None:
    """Export the splits `dsmix probe` draws (same seed, ratios and grouping) as a file to ship or reuse.

    Read back with `probe --splits-from FILE`, it gives the same splits and the same numbers.

    \b
    Example: dsmix data splits kadid10k --root KADID/ --out kadid-splits.json
    """
    from dsmix_cli.stages.probe import ProbeConfig, export_probe_splits

    cfg = ProbeConfig(encoder="", dataset=name, out="", root=str(root) if root else None,
                      csv=str(csv) if csv else None, lower_better=lower_better, protocol=protocol, splits=n_splits,
                      train_ratio=train_ratio, val_ratio=val_ratio,
                      splits_from=str(splits_from) if splits_from else None, splits_column=splits_column,
                      seed=seed, skip_missing=skip_missing, allow_outside_root=allow_outside_root)
    summary = export_probe_splits(cfg, out)
    if json is not None:
        write_json(json, summary)
    if json is None or str(json) != "-":
        report.table(f"{summary['dataset']}: {summary['source']}", ["split", "train", "val", "test"],
                     [(r["split"], r["n_train"], r["n_val"], r["n_test"]) for r in summary["splits"]])
        report.info(f"wrote {summary['file']}")


def _print_summary(s: dict) -> None:
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [
        ("root", s["root"]),
        ("label file", s["label_file"]),
        ("images (usable)", f"{s['images']} of {s['total']}"),
        ("references", fmt(s["references"])),
        ("scores (raw)", f"{fmt(s['score_min'])} .. {fmt(s['score_max'])}"),
        ("direction", "lower is better (flipped for training)" if s["lower_better"] else "higher is better"),
        ("missing", str(s["missing"])),
        ("unreadable", str(s["unreadable"]) if s["decoded"] else "not checked (--no-decode)"),
    ]
    if s["official_split"]:
        rows.append(("official split", " / ".join(f"{k} {v}" for k, v in s["official_split"].items())))
    rows += [("note", n) for n in s["notes"]]
    report.table(f"dsmix data check {s['dataset']}", ["", "value"], rows)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
