"""`dsmix synthesize` (KADIS/KADID-style distorted images) and `dsmix contact-sheet`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dsmix_cli import report
from dsmix_cli.cli.common import AllowOutsideRootOpt, DeviceOpt, handle_errors, parse_int_list
from dsmix_cli.errors import DsmixError

DistortSeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="N", help="Seed of the distortions' random draws (noise, jitter, patch and block "
                                "positions): the same seed writes the same images.")]


def synthesize_command(
    refs: Annotated[Path, typer.Option("--refs", metavar="DIR", help="Folder of reference images.")],
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Dataset folder to write (dist_imgs/ and dist_imgs.csv).")],
    types: Annotated[Optional[str], typer.Option(
        "--types", metavar="LIST", help="Types, e.g. 1-25 or 1,10,11. Without --csv: every type x level for every "
                        "reference (default 1-25). With --csv: only the CSV rows of these types.")] = None,
    levels: Annotated[str, typer.Option("--levels", metavar="LIST", help="Levels, e.g. 1-5 or 1,5.")] = "1-5",
    csv_file: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", help="kadis700k_ref_imgs.csv: one type per reference (KADIS-style).")] = None,
    official_type_8: Annotated[bool, typer.Option(
        "--official-type-8", help="Reproduce the official driver: rows '7,8' give type 7 (type 8 never "
                                  "occurs). Default: they give type 8 (25 balanced types).")] = False,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="With --csv: skip references named in the CSV but absent from --refs.")] = False,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="png or bmp (KADIS ships BMP).")] = "png",
    workers: Annotated[int, typer.Option(
        "--workers", min=0, metavar="N",
        help="CPU threads for decoding, encoding and the CPU-only types 6 and 9.")] = 4,
    device: DeviceOpt = "auto",
    seed: DistortSeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Images per device batch.")] = 16,
    no_mapmm: Annotated[bool, typer.Option(
        "--no-mapmm", help="Skip the MATLAB dispatcher's min-max rescale before and after each distortion.")] = False,
    dncnn: Annotated[Optional[Path], typer.Option(
        "--dncnn", metavar="FILE", help="DnCNN state dict (.pth/.safetensors) for type 15 instead of the "
                                        "substitute.")] = None,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """Write KADIS/KADID-style distorted images: D/dist_imgs/<stem>_<tt>_<ll>.<ext> and D/dist_imgs.csv.

    Resumable: run the same command again and finished images are skipped.

    \b
    Example: dsmix synthesize --refs refs/ --out D/ --types 1,10,11
    """
    from dsmix_cli.synthesize import SynthesizeConfig, plan_run, synthesize

    config = SynthesizeConfig(
        refs=refs, out=out,
        types=parse_int_list(types, 1, 25, "--types") if types is not None else None,
        levels=parse_int_list(levels, 1, 5, "--levels"), csv=csv_file, official_type_8=official_type_8,
        skip_missing=skip_missing, fmt=fmt.lower(), workers=workers, device=device, seed=seed,
        batch_size=batch_size, mapmm=not no_mapmm, dncnn=dncnn, allow_outside_root=allow_outside_root)
    plan = plan_run(config)
    if plan.existing:
        report.info(f"{plan.existing} of {len(plan.jobs)} images already present: skipped")
    with report.progress("synthesize", total=plan.todo_count, unit="img") as bar:
        result = synthesize(config, on_progress=lambda n: bar.advance(n), plan=plan)
    if result.missing:
        report.warn(f"{len(result.missing)} references named in {csv_file} are not in {refs}: skipped "
                    f"({', '.join(result.missing[:5])}{', ...' if len(result.missing) > 5 else ''})")
    for name, reason in result.failed:
        report.error(f"{reason} (reference {name}: its images were not written)")
    rate = result.written / result.seconds if result.seconds > 0 else 0.0
    report.table("synthesize", ["item", "value"], [
        ("output", str(result.out)), ("manifest", str(result.manifest)), ("device", result.device),
        ("type 15 denoiser", result.denoiser), ("references", result.references),
        ("images planned", result.planned), ("written now", result.written),
        ("already present", result.skipped_existing), ("unreadable references", len(result.failed)),
        ("images/s", f"{rate:.1f}"),
    ])
    if result.failed:
        raise typer.Exit(code=1)


def contact_sheet_command(
    ref: Annotated[Path, typer.Option("--ref", metavar="IMAGE", help="The reference image.")],
    out: Annotated[Path, typer.Option(
        "--out", metavar="IMAGE", help="Output image (.png or .jpg).")] = Path("distortions.png"),
    device: DeviceOpt = "auto",
    seed: DistortSeedOpt = 0,
    thumb: Annotated[str, typer.Option("--thumb", metavar="HxW", help="Thumbnail height x width.")] = "96x128",
    zoom: Annotated[int, typer.Option(
        "--zoom", min=1, max=4, metavar="N",
        help="Each thumbnail is a central crop of the 384x512 distorted image, zoom x its size, reduced by zoom.")] = 2,
    caption: Annotated[Optional[str], typer.Option(
        "--caption", metavar="TEXT", help="A line of text under the header.")] = None,
    dncnn: Annotated[Optional[Path], typer.Option(
        "--dncnn", metavar="FILE", help="DnCNN state dict for type 15.")] = None,
) -> None:
    """Render a contact sheet: one reference, 25 distortion rows x 5 levels.

    \b
    Example: dsmix contact-sheet --ref photo.jpg --out distortions.png
    """
    from dsmix_cli.contact_sheet import render_contact_sheet
    from dsmix_cli.distortions import set_denoiser
    from dsmix_cli.engine.runtime import resolve_device

    from dsmix_cli.imageio import check_image_extension

    check_image_extension(out, "--out")  # before the rendering, not after it
    try:
        th, tw = (int(v) for v in thumb.lower().split("x"))
    except ValueError:
        raise DsmixError(f"--thumb {thumb!r}: expected HxW, e.g. 96x128") from None
    if not (8 <= th <= 384 and 8 <= tw <= 512):
        raise DsmixError(f"--thumb {thumb!r}: expected at most 384x512")
    set_denoiser(dncnn)
    with report.Bars({"contact-sheet": "type"}) as bars:
        path = render_contact_sheet(ref, out, seed=seed, device=resolve_device(device), thumb=(th, tw), zoom=zoom,
                                    caption=caption, on_progress=lambda done, total: bars("contact-sheet", done, total))
    report.info(f"contact sheet written to {path}")


def register(app: typer.Typer) -> None:
    app.command("synthesize")(handle_errors(synthesize_command, images=True, out_dirs=("out",)))
    app.command("contact-sheet")(handle_errors(contact_sheet_command, images=True, out_files=("out",)))
