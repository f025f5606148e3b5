"""The engine of `dsmix synthesize`: write a KADIS/KADID-style folder of distorted images.

Plan: every (reference, type, level) job, either every combination of `--types` x `--levels`
(KADID-style) or one type per reference from `kadis700k_ref_imgs.csv` (KADIS-style). Work:
references are decoded by a pool of CPU threads, the device types run batched on the device
(one `distort_batch` call per group of jobs with the same type and image size), the CPU-only
types (6, 9) and all image encoding run on the pool. Each output is written under a temporary
name and renamed, so an interrupted run is resumed by running the same command again:
finished files are skipped. Every job draws from its own generator, seeded by
(seed, reference stem, type, level), so a resumed or re-batched run writes the same images.

Layout of the output folder D:
    D/dist_imgs/<ref-stem>_<tt>_<ll>.<png|bmp>
    D/dist_imgs.csv   header `dist_img,ref_img,type,level`; `dist_img` relative to D;
                      `ref_img` relative to D when the reference lies inside D (e.g. the KADIS
                      layout D/ref_imgs/), else absolute.
    D/synthesize.json the run's references folder (and CSV, format, seed): readers of D accept
                      references in that folder as well as in D.
"""

from __future__ import annotations

import csv
import os
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dsmix_cli.distortions import CPU_ONLY_TYPES, NUM_LEVELS, NUM_TYPES, denoiser_name, distort_batch, set_denoiser
from dsmix_cli.distortions._memory import keep_freed_memory
from dsmix_cli.engine.runtime import generator, resolve_device
from dsmix_cli.data.entries import Confinement, Unique, name_key
from dsmix_cli.data.pairs import SYNTH_RECORD
from dsmix_cli.errors import DatasetError, DsmixError, ImageReadError
from dsmix_cli.fileio import atomic_open, write_json
from dsmix_cli.imageio import is_image_file, load_rgb_tensor, save_image_atomic, to_uint8

MANIFEST = "dist_imgs.csv"
DIST_DIR = "dist_imgs"
FORMATS = ("png", "bmp")


@dataclass
class SynthesizeConfig:
    """What `dsmix synthesize` does (CLI options map one to one).

    Attributes:
        refs: folder of reference images.
        out: the dataset folder D to write.
        types: KADID mode: the types to apply to every reference. With `csv`: a filter on
            the CSV's types (None = all).
        levels: the levels (1..5) written for each (reference, type).
        csv: a `kadis700k_ref_imgs.csv` giving one type per reference (KADIS mode).
        official_type_8: reproduce the official driver, which reads only `dist_type_1` (so the
            5,529 "7,8" rows give type 7 and type 8 never occurs). Default: those rows give 8.
        skip_missing: with `csv`, skip references named in it but absent from `refs`.
        fmt: `png` or `bmp` (KADIS ships BMP).
        workers: CPU threads for decoding, encoding and the CPU-only types.
        device: auto, cpu, cuda, cuda:N.
        seed: base seed of the per-job generators.
        batch_size: images per device batch.
        mapmm: the dispatcher's min-max rescale before and after each distortion.
        dncnn: a DnCNN state dict for type 15 (None: the built-in substitute).
        allow_outside_root: with `csv`, accept names that resolve outside `refs` (absolute
            paths, `..`, symbolic links leading elsewhere); refused by default.
    """

    refs: Path
    out: Path
    types: list[int] | None = None
    levels: list[int] = field(default_factory=lambda: list(range(1, NUM_LEVELS + 1)))
    csv: Path | None = None
    official_type_8: bool = False
    skip_missing: bool = False
    fmt: str = "png"
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    batch_size: int = 16
    mapmm: bool = True
    dncnn: Path | None = None
    allow_outside_root: bool = False


@dataclass(frozen=True)
class Job:
    """One distorted image to write."""

    ref: Path
    dist_type: int
    level: int
    path: Path  # absolute output path

    @property
    def stem(self) -> str:
        return self.ref.stem


@dataclass
class SynthesizeResult:
    """What a run did; `failed` lists (reference, reason) for references that could not be read."""

    out: Path
    manifest: Path
    device: str
    denoiser: str
    references: int
    planned: int
    written: int
    skipped_existing: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def dist_name(stem: str, dist_type: int, level: int, fmt: str) -> str:
    """KADIS file name: `<stem>_<tt>_<ll>.<ext>` with two-digit type and level."""
    return f"{stem}_{dist_type:02d}_{level:02d}.{fmt}"


def _kadis_rows(path: Path, official_type_8: bool = False) -> list[tuple[str, int, int]]:
    """`read_kadis_csv`'s rows with their line numbers: (name, type, line)."""
    path = Path(path)
    once = Unique(path, "reference")
    if not path.is_file():
        raise DatasetError("CSV file not found", path)
    rows: list[tuple[str, int, int]] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ref_im", "dist_type_1"]:
            raise DatasetError(f"expected the header 'ref_im,dist_type_1,dist_type_2', got {header!r}", path)
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            name = row[0].strip()
            cells = [c.strip() for c in row[1:3]] + [""] * (3 - len(row))
            try:
                first = int(cells[0])
                second = int(cells[1]) if cells[1] else None
            except ValueError:
                raise DatasetError(f"line {lineno}: distortion types must be integers, got {row!r}", path) from None
            if not name or not 1 <= first <= NUM_TYPES or (second is not None and not 1 <= second <= NUM_TYPES):
                raise DatasetError(f"line {lineno}: expected '<image>,<type 1-25>[,<type 1-25>]', got {row!r}", path)
            once.add(name_key(name), lineno, repr(name))
            rows.append((name, first if second is None or official_type_8 else second, lineno))
    if not rows:
        raise DatasetError("no rows after the header", path)
    return rows


def read_kadis_csv(path: Path, official_type_8: bool = False) -> list[tuple[str, int]]:
    """Read `kadis700k_ref_imgs.csv` (`ref_im,dist_type_1,dist_type_2`) into (name, type) pairs.

    A row with a second type (all are "7,8" in the official file) gives that second type unless
    `official_type_8`, which keeps the first as the official driver does.

    Raises:
        DatasetError: missing file, wrong header, a malformed row or a reference listed twice
            (named by line number).
    """
    return [(name, t) for name, t, _line in _kadis_rows(path, official_type_8)]


def _list_refs(refs: Path) -> list[Path]:
    if not refs.is_dir():
        raise DatasetError("reference folder not found", refs)
    files = sorted(p for p in refs.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise DatasetError("no image files in the reference folder", refs)
    return files


def plan_jobs(config: SynthesizeConfig) -> tuple[list[Job], list[str]]:
    """Every job of the run (finished or not) and the CSV references missing from `refs`.

    Raises:
        DsmixError: missing folder, malformed CSV, missing references without `skip_missing`,
            two references with the same stem, a bad format or level.
    """
    if config.fmt not in FORMATS:
        raise DsmixError(f"--format {config.fmt!r}: expected png or bmp")
    levels = sorted(set(config.levels))
    if not levels or any(not 1 <= lv <= NUM_LEVELS for lv in levels):
        raise DsmixError(f"levels {config.levels}: expected values in 1-{NUM_LEVELS}")
    refs_dir = Path(config.refs)
    dist_dir = Path(config.out).resolve() / DIST_DIR
    missing: list[str] = []
    if config.csv is not None:
        if not refs_dir.is_dir():
            raise DatasetError("reference folder not found", refs_dir)
        wanted = _kadis_rows(Path(config.csv), config.official_type_8)
        confine = Confinement(refs_dir, allow=config.allow_outside_root, option="--refs")
        for name, _t, line in wanted:
            confine.check(refs_dir / name, Path(config.csv), line, name)
        if config.types is not None:
            keep = set(config.types)
            wanted = [row for row in wanted if row[1] in keep]
        pairs = []
        for name, t, _line in wanted:
            p = refs_dir / name
            if p.is_file():
                pairs.append((p, [t]))
            else:
                missing.append(name)
        if missing and not config.skip_missing:
            few = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(f"{len(missing)} of {len(wanted)} references named in {config.csv} are not in "
                               f"this folder ({few}); add --skip-missing to generate the others", refs_dir)
        if not pairs:
            raise DatasetError(f"none of the references named in {config.csv} (after filters) is here", refs_dir)
    else:
        types = sorted(set(config.types or range(1, NUM_TYPES + 1)))
        pairs = [(p, types) for p in _list_refs(refs_dir)]
    seen: dict[str, Path] = {}
    jobs = []
    for ref, types in pairs:
        if ref.stem in seen and seen[ref.stem] != ref:
            raise DatasetError(f"two references share the stem {ref.stem!r}: {seen[ref.stem].name} and "
                               f"{ref.name} (their outputs would collide)", refs_dir)
        seen[ref.stem] = ref
        for t in types:
            for lv in levels:
                jobs.append(Job(ref.resolve(), t, lv, dist_dir / dist_name(ref.stem, t, lv, config.fmt)))
    return jobs, missing


def _ref_field(ref: Path, out: Path) -> str:
    rel = os.path.relpath(ref, out)
    return rel.replace(os.sep, "/") if not rel.startswith("..") else str(ref)


def write_manifest(out: Path, jobs: list[Job]) -> Path:
    """Write `D/dist_imgs.csv` for the jobs whose image exists (atomically)."""
    out = Path(out).resolve()
    path = out / MANIFEST
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["dist_img", "ref_img", "type", "level"])
        for j in jobs:
            if j.path.is_file():
                w.writerow([f"{DIST_DIR}/{j.path.name}", _ref_field(j.ref, out), j.dist_type, j.level])
    return path


def _clean_temporaries(dist_dir: Path) -> None:
    """Remove temporary files a killed run left (`.<name>.<random>.tmp`, see fileio.atomic_open)."""
    if dist_dir.is_dir():
        for p in dist_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)


class _Runner:
    """Schedules the work of one run: decode on the pool, distort on the device, save on the pool."""

    def __init__(self, config: SynthesizeConfig, device: torch.device, pool: ThreadPoolExecutor,
                 on_progress: Callable[[int], None] | None):
        self.config = config
        self.device = device
        self.pool = pool
        self.on_progress = on_progress
        self.futures: dict[Future, int] = {}  # a pool task -> the images it writes
        self.groups: dict[tuple, list[tuple[torch.Tensor, Job]]] = OrderedDict()
        self.written = 0
        self.limit = 4 * max(1, config.workers) + 2 * config.batch_size

    def _save(self, img8: torch.Tensor, job: Job) -> None:
        save_image_atomic(img8, job.path)

    def _cpu_jobs(self, ref8: torch.Tensor, jobs: list[Job]) -> None:
        """The levels of one CPU-only type of one reference, in one call (JPEG2000 encodes the
        image once for all its levels; each level's image does not depend on the others)."""
        x = ref8.unsqueeze(0).float().div_(255.0).expand(len(jobs), -1, -1, -1)
        gens = [generator(self.config.seed, j.stem, j.dist_type, j.level) for j in jobs]
        y = distort_batch(x, torch.tensor([j.dist_type for j in jobs]), torch.tensor([j.level for j in jobs]), gens,
                          mapmm=self.config.mapmm)
        for img, job in zip(to_uint8(y), jobs):
            self._save(img, job)

    def submit(self, fn, *args, images: int = 1) -> None:
        self.futures[self.pool.submit(fn, *args)] = images
        self.drain(self.limit)

    def drain(self, limit: int) -> None:
        while len(self.futures) > limit:
            done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()  # an error writing an output stops the run (disk full, permissions)
                n = self.futures.pop(f)
                self.written += n
                if self.on_progress is not None:
                    self.on_progress(n)

    def add_reference(self, ref8: torch.Tensor, jobs: list[Job]) -> None:
        """All the jobs of one reference: CPU-only types on the pool, one task per type."""
        by_type: dict[int, list[Job]] = OrderedDict()
        for job in jobs:
            if job.dist_type in CPU_ONLY_TYPES:
                by_type.setdefault(job.dist_type, []).append(job)
            else:
                self.add(ref8, job)
        for group in by_type.values():
            self.submit(self._cpu_jobs, ref8, group, images=len(group))

    def add(self, ref8: torch.Tensor, job: Job) -> None:
        key = (job.dist_type, tuple(ref8.shape))
        self.groups.setdefault(key, []).append((ref8, job))
        if len(self.groups[key]) >= self.config.batch_size:
            self.flush(key)

    def flush(self, key: tuple) -> None:
        items = self.groups.pop(key, [])
        if not items:
            return
        x = torch.stack([r for r, _ in items]).to(self.device, non_blocking=True).float().div_(255.0)
        jobs = [j for _, j in items]
        gens = [generator(self.config.seed, j.stem, j.dist_type, j.level, device=self.device) for j in jobs]
        types = torch.tensor([j.dist_type for j in jobs])
        levels = torch.tensor([j.level for j in jobs])
        y8 = to_uint8(distort_batch(x, types, levels, gens, mapmm=self.config.mapmm)).cpu()
        for i, job in enumerate(jobs):
            self.submit(self._save, y8[i], job)

    def finish(self) -> None:
        for key in list(self.groups):
            self.flush(key)
        self.drain(0)


@dataclass
class RunPlan:
    """The jobs of a run, split into those still to do (per reference) and those finished."""

    jobs: list[Job]
    missing: list[str]
    todo: "OrderedDict[Path, list[Job]]"

    @property
    def todo_count(self) -> int:
        return sum(len(v) for v in self.todo.values())

    @property
    def existing(self) -> int:
        return len(self.jobs) - self.todo_count


def plan_run(config: SynthesizeConfig) -> RunPlan:
    """Check the input and list what a run will write (images already present are finished).

    Raises:
        DsmixError: see `plan_jobs`; also bad --batch-size / --workers.
    """
    if config.batch_size < 1 or config.workers < 0:
        raise DsmixError("--batch-size must be >= 1 and --workers >= 0")
    jobs, missing = plan_jobs(config)
    todo: OrderedDict[Path, list[Job]] = OrderedDict()
    for j in jobs:
        if not j.path.is_file():
            todo.setdefault(j.ref, []).append(j)
    return RunPlan(jobs, missing, todo)


def synthesize(config: SynthesizeConfig, on_progress: Callable[[int], None] | None = None,
               plan: RunPlan | None = None) -> SynthesizeResult:
    """Write the distorted images and the manifest of a KADIS/KADID-style folder.

    Args:
        config: the run.
        on_progress: called with the number of images just finished (written, or dropped
            with an unreadable reference).
        plan: the result of `plan_run(config)` when the caller already made it.

    Returns:
        A `SynthesizeResult`; references that could not be decoded are listed in `failed`
        (their images are not written) and the others are complete.

    Raises:
        DsmixError: bad input detected before any work (see `plan_jobs`), a bad `--device` or
            DnCNN checkpoint.
    """
    start = time.monotonic()
    plan = plan or plan_run(config)
    keep_freed_memory()  # large image buffers reused instead of page-faulted in again
    device = resolve_device(config.device)
    set_denoiser(config.dncnn)
    out = Path(config.out).resolve()
    dist_dir = out / DIST_DIR
    dist_dir.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(dist_dir)
    todo = plan.todo
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        runner = _Runner(config, device, pool, on_progress)
        refs = list(todo)
        window = max(2, 2 * max(1, config.workers))
        loads = OrderedDict((r, pool.submit(load_rgb_tensor, r)) for r in refs[:window])
        for i, ref in enumerate(refs):
            if i + window < len(refs):
                nxt = refs[i + window]
                loads[nxt] = pool.submit(load_rgb_tensor, nxt)
            try:
                ref8 = loads.pop(ref).result()
            except ImageReadError as exc:
                failed.append((ref.name, str(exc)))
                if on_progress is not None:
                    on_progress(len(todo[ref]))
                continue
            runner.add_reference(ref8, todo[ref])
        runner.finish()
    manifest = write_manifest(out, plan.jobs)
    write_json(out / SYNTH_RECORD, {"refs": str(Path(config.refs).resolve()), "csv": str(Path(config.csv).resolve())
                                    if config.csv is not None else None, "format": config.fmt, "seed": config.seed})
    return SynthesizeResult(
        out=out, manifest=manifest, device=str(device), denoiser=denoiser_name(),
        references=len({j.ref for j in plan.jobs}), planned=len(plan.jobs), written=runner.written,
        skipped_existing=plan.existing, failed=failed, missing=plan.missing,
        seconds=time.monotonic() - start)
