"""The QEP learning study on CPU: does `dsmix qep` learn its pretext, and does that help the probe?

    python benchmarks/learning.py --quick                       # one seed of the headline row
    python benchmarks/learning.py --json benchmarks/results/learning-cpu.json --docs-img docs/img
    python benchmarks/learning.py --budgets RECORD_2000 RECORD_8000 ...   # accuracy against budget

The CLIVE JPEGs of the shared data are split once (a fixed seed, the same for every row):
`--val-refs` references for the held-out pretext accuracy, a scored probe part, and the rest to
pre-train on. Every row is one `dsmix qep` configuration (`run_qep`, on the fly, from the
training references) trained with each seed, then probed (`run_probe`: frozen encoder, MLP head,
10 splits, the same splits for every row) on the probe part; `random` probes untrained encoders
(one random initialisation per seed). Adding a row is one entry of `ROWS`.

Headline configuration (fixed by the study): ResNet-18 from scratch, 64 px crops, batch 32,
2,000 steps, ground-truth DSMs, KD off; `HEADLINE` has the rest. Runs and probes land in
`--work` (default `/tmp/dsmix-learning`) and are reused: a killed study resumes its unfinished
run exactly and skips what is done. The record (`--json`) holds every run's final validation
metrics, per-type accuracy, curves and probe splits; `learning_report.py` turns it into the
tables and pictures of docs/learning.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from learning_report import (budget_picture, budget_summary, budget_table, detail_tables,  # noqa: E402,F401
                             format_table, log_fit_crossing, summarize, write_pictures)
from run import choose_threads, environment  # noqa: E402

ROOT = _HERE.parent
# the shared data beside the checkout (a worktree one level deeper looks one more level up)
CLIVE = next((p for p in (ROOT / ".." / "shared" / "data" / "clive-subset",
                          ROOT / ".." / ".." / "shared" / "data" / "clive-subset") if p.is_dir()),
             ROOT / ".." / "shared" / "data" / "clive-subset")
SPLIT_SEED = 0


@dataclass
class Row:
    """One configuration of the study: a label and the `QEPConfig` fields it changes (None: random init)."""

    label: str
    overrides: dict | None


# The headline row and its variants; a new pretext is one more entry, as "qpt" is.
ROWS: dict[str, Row] = {
    "random": Row("random init (no pre-training)", None),
    "dsmix": Row("DSMix (Mix 3, normalized labels)", {}),
    "area": Row("area CutMix (--label-mode area)", {"label_mode": "area"}),
    "nomix": Row("no mixing (--mix 1)", {"mix": 1}),
    "plain": Row("plain supervision (--mix 1 --pristine-share 0)", {"mix": 1, "pristine_share": 0.0}),
    "share-half": Row("DSMix, pristine share 1/2", {"pristine_share": 0.5}),
    "rescale-crop": Row("DSMix, per-crop rescale (--rescale crop)", {"rescale": "crop"}),
    # box seams only in distorted crops tell them from references: remove the cue
    "mix-refs": Row("DSMix, references mixed among themselves (--mix-refs)", {"mix_refs": True}),
    "paste-half": Row("DSMix, each paste with probability 1/2 (--paste-prob 0.5)", {"paste_prob": 0.5}),
    "mix-refs-paste-half": Row("DSMix, --mix-refs and --paste-prob 0.5 together",
                               {"mix_refs": True, "paste_prob": 0.5}),
    # no content seams: the pasted boxes are other distortions of the sample's own crop
    "same-crop": Row("DSMix, partners from the same crop (--mix-partners same)", {"mix_partners": "same"}),
    "same-crop-share-zero": Row("DSMix, --mix-partners same without the references (--pristine-share 0)",
                                {"mix_partners": "same", "pristine_share": 0.0}),
    # the references' cross-entropy off: is the pristine class what keeps DSMix's heads back?
    "share-zero": Row("DSMix without the references (--pristine-share 0)", {"pristine_share": 0.0}),
    # the second pretext: no type/level heads, so no pretext accuracy; only the probe compares
    # 16 regions x 4 patches: the 64 encoder images of a DSMix step (32 mixed crops + 32 references);
    # a queue of 4,096 keys, as the 2,000 steps make 32,000 (the default 65,536 would stay half random)
    "qpt": Row("QPT-style contrastive (--pretext qpt, 16 regions x 4 patches)", {"pretext": "qpt", "batch_size": 16,
                                                                                   "qpt_queue": 4096}),
    # the levers, before and after (not in the default study; --rows picks them)
    "paper-recipe": Row("DSMix, the paper's optimiser and schedule as --epochs 120 would run them",
                        {"optimizer": "sgd", "lr": 0.01, "lr_schedule": "step", "warmup_steps": 0, "epochs": 120,
                         "epoch_size": None, "pristine_share": 0.5, "rescale": "crop"}),
    "sgd-constant": Row("DSMix, SGD 0.01 constant, no warm-up", {"optimizer": "sgd", "lr": 0.01,
                                                                  "lr_schedule": "step", "warmup_steps": 0}),
    "native": Row("DSMix, references at their own 500 px (no --ref-resize)", {"ref_resize": None}),
}
# what the study runs without --rows: the headline row, its ablations and one pristine-share and
# one rescale variant, two seeds each, within 90 minutes on 2 cores; the other rows of ROWS
# (share-half, mix-refs, paste-half, qpt, ...) are one --rows away
DEFAULT_ROWS = ("random", "dsmix", "area", "nomix", "plain", "share-zero", "rescale-crop")


@dataclass
class Settings:
    """Everything the study runs (recorded in the JSON)."""

    steps: int = 2000
    seeds: tuple[int, ...] = (0, 1)
    rows: tuple[str, ...] = DEFAULT_ROWS
    default_rows: tuple[str, ...] = DEFAULT_ROWS  # recorded: the summary charges the default study apart
    val_refs: int = 24
    probe_images: int = 250
    probe_splits: int = 10
    probe_epochs: int = 100
    probe_size: int = 224
    probe_train_views: int = 4
    headline: dict = field(default_factory=lambda: dict(HEADLINE))


HEADLINE = dict(
    arch="resnet18", pretrained=False, image_size=64, batch_size=32, dsm_source="gt", kd_alpha=0.0, kd_beta=0.0,
    mix=3, label_mode="normalized", rescale="image", pristine_share=1 / 6,
    optimizer="adamw", lr=2e-3, weight_decay=0.05, lr_schedule="cosine", warmup_steps=100,
    ref_resize=144, val_every=250, cache_refs=True, workers=0, device="cpu", amp="bf16", log_every=10,
    checkpoint_every=500,
)


def split_clive(clive: Path, s: Settings, work: Path) -> dict:
    """The three disjoint parts of the shared CLIVE images (fixed seed): symlinked reference folders
    for training and validation, and a label CSV (name, MOS) for the probe."""
    from dsmix_cli.data.catalog import load_dataset
    from dsmix_cli.engine.runtime import generator

    ds = load_dataset("clive", clive, skip_missing=True)
    items = sorted(ds.items, key=lambda it: it.name)
    need = s.val_refs + s.probe_images + 1
    if len(items) < need:
        raise SystemExit(f"{len(items)} CLIVE images under {clive}, the study needs at least {need}")
    order = torch.randperm(len(items), generator=generator(SPLIT_SEED, "learning-study-split")).tolist()
    parts = {"probe": [items[i] for i in order[:s.probe_images]],
             "val": [items[i] for i in order[s.probe_images:s.probe_images + s.val_refs]],
             "train": [items[i] for i in order[s.probe_images + s.val_refs:]]}
    for part in ("train", "val"):
        folder = work / "refs" / part
        folder.mkdir(parents=True, exist_ok=True)
        want = {Path(it.path).name for it in parts[part]}
        for old in folder.iterdir():
            if old.name not in want:
                old.unlink()
        for it in parts[part]:
            link = folder / Path(it.path).name
            if not link.exists():
                link.symlink_to(Path(it.path).resolve())
    csv = work / "probe.csv"
    csv.write_text("name,score\n" + "".join(f"{Path(it.path).resolve()},{it.score}\n" for it in parts["probe"]))
    return {"train": work / "refs" / "train", "val": work / "refs" / "val", "probe_csv": csv,
            "counts": {k: len(v) for k, v in parts.items()}}


def qep_config(row: Row, seed: int, s: Settings, split: dict, out: Path):
    from dsmix_cli.stages.qep import QEPConfig

    batch = row.overrides.get("batch_size", s.headline["batch_size"])
    fields = {**s.headline, "epochs": 1, "epoch_size": s.steps * batch, **row.overrides}
    if fields.get("epoch_size") is None:  # an epoch of the references, as a plain run would have it
        fields.pop("epoch_size")
        fields["max_steps"] = s.steps
    qpt = {k[4:]: fields.pop(k) for k in list(fields) if k.startswith("qpt_")}  # the nested --qpt-* options
    cfg = QEPConfig(out=out, refs=split["train"], on_the_fly=True, val_refs=split["val"],
                    val_max_images=s.val_refs * 125, seed=seed, **fields)
    return replace(cfg, qpt=replace(cfg.qpt, **qpt)) if qpt else cfg


def train(row: Row, seed: int, s: Settings, split: dict, work: Path, log) -> dict:
    """Run (or resume, or reuse) one QEP run; its final validation and timing."""
    from dsmix_cli.stages.qep import run_qep

    out = work / "runs" / f"{row_name(row)}-s{seed}"
    # a DSMix run's results.json holds its validation; the study adds its timing there. A qpt
    # run has no pretext validation: the study keeps its step and timing beside it.
    results = out / ("study.json" if row.overrides.get("pretext") == "qpt" else "results.json")
    done = json.loads(results.read_text()) if results.exists() else {}
    if done.get("step") == s.steps and done.get("timing"):
        log(f"  {out.name}: done already (step {done['step']})")
        return done
    cfg = qep_config(row, seed, s, split, out)
    if not (out / "last.pt").exists() and (out / "metrics.jsonl").exists():  # killed before its first checkpoint
        aside = out.with_name(f"{out.name}.killed-{int(time.time())}")
        out.rename(aside)
        log(f"  {out.name}: stopped before its first checkpoint; moved aside to {aside.name}, starting over")
    cfg = replace(cfg, resume=(out / "last.pt").exists())
    t0 = time.perf_counter()
    last = [t0]

    def progress(p: dict) -> None:
        if p.get("phase") == "qep-val-set" and p["step"] in (1, p["total"]):
            log(f"  validation set: {p['step']}/{p['total']} (reference, type) units")
        if "loss" in p and (time.perf_counter() - last[0] > 60 or p["step"] == p["total"]):
            last[0] = time.perf_counter()
            log(f"  {out.name}: step {p['step']}/{p['total']} loss {p['loss']:.3f} "
                + " ".join(f"{k}={v}" for k, v in p.get("val", {}).items()))

    summary = run_qep(cfg, on_progress=progress)
    seconds = time.perf_counter() - t0
    record = json.loads(results.read_text()) if results.exists() else {"step": summary["step"], "finished": True}
    record["timing"] = {"seconds": round(seconds, 1), "steps_run": summary["step"],
                        "seconds_per_step": round(seconds / max(summary["step"], 1), 4),
                        "resumed": cfg.resume, "torch_threads": torch.get_num_threads()}
    from dsmix_cli.fileio import write_json

    write_json(results, record)
    return record


def _num(v) -> float:
    """A figure read back from a results.json, where NaN was written as null."""
    return math.nan if v is None else float(v)


def row_name(row: Row) -> str:
    return next(k for k, v in ROWS.items() if v is row)


def random_encoder(seed: int, s: Settings, work: Path) -> Path:
    """An untrained encoder in the qep-encoder format (one random initialisation per seed)."""
    from dsmix_cli.engine.checkpoint import export_weights
    from dsmix_cli.engine.runtime import derive_seed
    from dsmix_cli.models.resnet import build_resnet
    from dsmix_cli.stages.qep import ENCODER_FILE, QEPConfig, encoder_meta

    out = work / "runs" / f"random-s{seed}"
    if not (out / ENCODER_FILE).exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "learning-study-random-init"))
            net = build_resnet(s.headline["arch"], pretrained=False)
        cfg = QEPConfig(out=out, arch=s.headline["arch"], image_size=s.headline["image_size"])
        export_weights(out / ENCODER_FILE, net.state_dict(), encoder_meta(cfg, {"random_init_seed": seed}, 0))
    return out


def probe(encoder: Path, s: Settings, split: dict, work: Path, name: str) -> dict:
    """Probe an encoder on the probe part (the same splits for every encoder); reused when done."""
    from dsmix_cli.stages.probe import ProbeConfig, run_probe

    out = work / "probes" / name
    if (out / "results.json").exists():
        res = json.loads((out / "results.json").read_text())
        if res.get("encoder_digest") and res.get("config", {}).get("encoder") == str(encoder):
            return res
    cfg = ProbeConfig(encoder=str(encoder), dataset="csv", csv=str(split["probe_csv"]), out=str(out),
                      splits=s.probe_splits, epochs=s.probe_epochs, image_size=s.probe_size,
                      train_views=s.probe_train_views, device="cpu", seed=0, record=False, final_head=False,
                      allow_outside_root=True)  # the CSV names the shared images by absolute path
    return run_probe(cfg)


def finished(name: str, seed: int, s: Settings, work: Path) -> bool:
    """Whether row `name` with `seed` has its run and its probe in `work` already."""
    row = ROWS[name]
    if not (work / "probes" / f"{name}-s{seed}" / "results.json").exists():
        return False
    if row.overrides is None:
        return True
    out = work / "runs" / f"{name}-s{seed}"
    done = out / ("study.json" if row.overrides.get("pretext") == "qpt" else "results.json")
    if not done.exists():
        return False
    rec = json.loads(done.read_text())
    return rec.get("step") == s.steps and bool(rec.get("timing"))


def run_study(s: Settings, clive: Path, work: Path, log=print, checkpoint=None, only_finished: bool = False) -> dict:
    """Train and probe every row with every seed; the record (not yet summarised).

    Seed by seed (every row's first seed before any row's second), so a study stopped early
    still has every row; `checkpoint(record)` is called after each run and probe. With
    `only_finished`, nothing is trained: the record holds the runs `work` has finished."""
    os.environ.setdefault("DSMIX_HOME", str(work / "home"))  # no default model of the user changes
    t0 = time.perf_counter()
    split = split_clive(clive, s, work)
    log(f"CLIVE split: {split['counts']} (train / val references, scored probe images)")
    rows: dict[str, dict] = {name: {"label": ROWS[name].label, "overrides": ROWS[name].overrides, "seeds": {}}
                             for name in s.rows}

    def record() -> dict:
        return {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()},
                "split": {"counts": split["counts"], "seed": SPLIT_SEED}, "rows": rows,
                "seconds": round(time.perf_counter() - t0, 1)}

    for seed in s.seeds:
        for name in s.rows:
            row = ROWS[name]
            if only_finished and not finished(name, seed, s, work):
                log(f"{name} seed {seed}: not run yet, left out")
                continue
            log(f"{name} seed {seed}")
            if row.overrides is None:
                run, encoder = None, random_encoder(seed, s, work)
            else:
                run = train(row, seed, s, split, work, log)
                encoder = Path(work / "runs" / f"{name}-s{seed}")
            res = probe(encoder, s, split, work, f"{name}-s{seed}")
            rows[name]["seeds"][str(seed)] = {
                "val": None if run is None else {k: v for k, v in run.items() if k not in ("type_confusion",)},
                "probe": {"median_srcc": _num(res["median"]["srcc"]), "median_plcc": _num(res["median"]["plcc"]),
                          "splits_srcc": [_num(r["srcc"]) for r in res["splits"]], "seconds": res["seconds"]}}
            log(f"  probe median SRCC {_num(res['median']['srcc']):.3f}")
            if checkpoint is not None:
                checkpoint(record())
    return record()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed of the headline row (and random init)")
    ap.add_argument("--rows", help=f"comma-separated rows (default: {','.join(DEFAULT_ROWS)}; all: {','.join(ROWS)})")
    ap.add_argument("--seeds", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--steps", type=int, default=2000, help="QEP steps per run (the headline: 2000)")
    ap.add_argument("--clive", type=Path, default=CLIVE, help="the CLIVE folder (with ChallengeDB_release/)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dsmix-learning"), help="runs and probes (reused)")
    ap.add_argument("--json", help="write the record here ('-' for stdout)")
    ap.add_argument("--docs-img", type=Path, help="write the study's pictures into this folder")
    ap.add_argument("--details", action="store_true",
                    help="with --report: also the per-level 'pristine' answers and the per-type accuracy tables")
    ap.add_argument("--img-prefix", default="learning", help="file names of the pictures: PREFIX-curves.png, ...")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, 1 on a busy machine)")
    ap.add_argument("--only-finished", action="store_true",
                    help="train nothing: record the rows and seeds --work has finished (a study cut short)")
    ap.add_argument("--report", type=Path, metavar="RECORD",
                    help="print the table of a record again (with --docs-img: redraw its pictures) and stop")
    ap.add_argument("--budgets", type=Path, nargs="+", metavar="RECORD",
                    help="records of the same study at different --steps: each row's accuracy per budget and "
                         "where a line in log2(steps) reaches 0.3 (with --docs-img: PREFIX-budgets.png); then stop")
    args = ap.parse_args(argv)
    if args.budgets:
        records = []
        for path in args.budgets:
            try:
                records.append(json.loads(path.read_text()))
                records[-1]["rows"], records[-1]["settings"]["steps"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                ap.error(f"{path}: not a learning-study record ({e.__class__.__name__}: {e})")
        budgets = budget_summary(records)
        print(budget_table(budgets))
        if args.docs_img:
            budget_picture(budgets, args.docs_img, args.img_prefix)
        return 0
    if args.report:
        try:
            record = json.loads(args.report.read_text())
            record["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"{args.report}: not a learning-study record ({e.__class__.__name__}: {e})")
        record.update(summarize(record))
        print(format_table(record))
        if args.details:
            print("\n" + detail_tables(record))
        if args.docs_img:
            write_pictures(record, args.docs_img, args.img_prefix)
        return 0
    s = Settings(steps=args.steps)
    if args.quick:
        s = replace(s, seeds=(0,), rows=("random", "dsmix"))
    if args.rows:
        s = replace(s, rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()))
    if args.seeds:
        s = replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    unknown = [r for r in s.rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    threads, why = choose_threads(torch.device("cpu"), args.threads)
    torch.set_num_threads(threads)
    from dsmix_cli.fileio import write_json

    command = " ".join(["python", "benchmarks/learning.py", *(argv if argv is not None else sys.argv[1:])])

    def finish(record: dict) -> dict:
        record.update(summarize(record), environment=environment(torch.device("cpu")), threads_reason=why,
                      command=command, timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return record

    def checkpoint(record: dict) -> None:  # the record so far, for a study stopped early
        if args.json and args.json != "-":
            write_json(args.json, {**finish(record), "partial": True})

    record = finish(run_study(s, args.clive, args.work, checkpoint=checkpoint, only_finished=args.only_finished))
    if args.only_finished:
        record["only_finished"] = True
    print(format_table(record))
    if args.docs_img:
        write_pictures(record, args.docs_img, args.img_prefix)
    if args.json:  # strict JSON (NaN as null), written atomically; '-' is stdout
        write_json(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
