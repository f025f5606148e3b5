"""QEP validation: the held-out pretext set, scoring the heads on it, and what a run shows of it.

The set is made once per run from references the training never sees:

* from references (on the fly, or `--val-refs`): every held-out reference (up to
  `max_images // (types x levels)` of them) is distorted *whole* with every type and level, as
  the MATLAB dispatcher makes KADIS-700k, then cropped; one pristine crop per (reference, type);
* from a pair folder (`--data`): the pairs of the held-out references (at most `max_images`),
  cropped at the same place in the distorted image and its reference; one pristine crop per
  (reference, type).

Crops are unmixed, unflipped, and placed (and, for the random types, distorted) by a generator
seeded per (reference, type, level) with `VAL_SEED`, not with the run's `--seed`: runs with
different seeds are scored on the same crops. `PretextValidator` is the `validate` callback of
`engine.loop.fit`: it scores the heads (each rank its share, the counts summed), returns the
scalars `fit` logs, and on rank 0 writes `results.json`, `val_confusion.png`,
`val_type_level.png` and `curves.png` into the run folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dsmix_cli.data.references import load_reference
from dsmix_cli.engine.runtime import DistInfo, autocast, generator, trim_memory
from dsmix_cli.errors import DatasetError
from dsmix_cli.evaluation.pretext import SCALARS, PretextCounts, count_predictions, pretext_metrics
from dsmix_cli.fileio import write_json
from dsmix_cli.imageio import save_image_atomic, to_float

VAL_SEED = 0
RESULTS_FILE, CONFUSION_FILE, TYPE_LEVEL_FILE, CURVES_FILE = ("results.json", "val_confusion.png",
                                                             "val_type_level.png", "curves.png")
BEST_RULE = "best.pt: the validation step with the highest val_acc (mean of val_type_acc and val_level_acc)"
_MEMO: dict[tuple, "ValidationSet"] = {}


@dataclass
class ValidationSet:
    """This rank's share of the held-out crops (uint8), with their true type and level."""

    dist: torch.Tensor
    types: torch.Tensor
    levels: torch.Tensor
    pristine: torch.Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dist) + len(self.pristine)


def _offsets(h: int, w: int, size: int, *key) -> tuple[int, int]:
    g = generator(VAL_SEED, "qep-val", *key)
    return int(torch.randint(h - size + 1, (1,), generator=g)), int(torch.randint(w - size + 1, (1,), generator=g))


def _stack(crops: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack(crops) if crops else torch.empty(0, 3, size, size, dtype=torch.uint8)


def _file_key(paths: list[Path]) -> tuple:
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_mtime_ns, st.st_size))
    return tuple(out)


def reference_validation_set(paths: list[Path], keys: list[str], types: list[int], levels: list[int], size: int, *,
                             resize: int | None = None, max_images: int = 2000, dist_info: DistInfo | None = None,
                             on_progress: Callable[[int, int], None] | None = None) -> ValidationSet:
    """Held-out references distorted whole with every (type, level), then cropped.

    Args:
        paths: the held-out references; the first `max(1, max_images // (types x levels))` are used.
        keys: a stable name per path (its path below the references folder) for the seeds.
        types, levels: the distortions of the run.
        size: the crop size; `resize` as the training references (`load_reference`).
        max_images: the most distorted crops.
        dist_info: this rank's share is every world_size-th (reference, type).
    """
    from dsmix_cli.distortions import distort_batch

    info = dist_info or DistInfo()
    n_refs = min(len(paths), max(1, max_images // (len(types) * len(levels))))
    memo_key = ("refs", _file_key(paths[:n_refs]), tuple(keys[:n_refs]), tuple(types), tuple(levels), size, resize,
                info.rank, info.world_size)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    units = [(r, t) for r in range(n_refs) for t in types]
    mine = units[info.rank::info.world_size]
    dist, d_types, d_levels, pristine = [], [], [], []
    loaded: dict[int, torch.Tensor] = {}
    for done, (r, t) in enumerate(mine, start=1):
        if r not in loaded:
            loaded = {r: to_float(load_reference(paths[r], size, resize))[None]}
        x = loaded[r]
        h, w = x.shape[-2:]
        gens = [generator(VAL_SEED, "qep-val-noise", keys[r], t, lv) for lv in levels]
        y = distort_batch(x.expand(len(levels), -1, -1, -1).contiguous(), torch.full((len(levels),), t),
                          torch.tensor(levels), generator=gens)
        for i, lv in enumerate(levels):
            top, left = _offsets(h, w, size, keys[r], t, lv)
            dist.append((y[i, :, top:top + size, left:left + size] * 255).round().clamp(0, 255).to(torch.uint8))
            d_types.append(t)
            d_levels.append(lv)
        top, left = _offsets(h, w, size, keys[r], t, "pristine")
        pristine.append((x[0, :, top:top + size, left:left + size] * 255).round().to(torch.uint8))
        del y
        trim_memory()  # whole images come and go, crops stay: keep the heap from fragmenting
        if on_progress is not None:
            on_progress(done, len(mine))
    vs = ValidationSet(_stack(dist, size), torch.tensor(d_types, dtype=torch.long),
                       torch.tensor(d_levels, dtype=torch.long), _stack(pristine, size),
                       {"source": "held-out references, each distorted whole with every type and level, then cropped",
                        "references": n_refs, "held_out_references": len(paths),
                        "distorted_crops": n_refs * len(types) * len(levels), "pristine_crops": n_refs * len(types),
                        "types": list(types), "levels": list(levels), "crop": size, "seed": VAL_SEED})
    _MEMO.clear()  # one set kept: a study calling run_qep again and again reuses it
    _MEMO[memo_key] = vs
    return vs


def pair_validation_set(pairs: list, keys: list[str], size: int, *, max_images: int = 2000,
                        dist_info: DistInfo | None = None,
                        on_progress: Callable[[int, int], None] | None = None) -> ValidationSet:
    """The held-out pairs (at most `max_images`, seeded), cropped at the same place in both images.

    Args:
        pairs: `data.pairs.Pair`s of the held-out references.
        keys: a stable name per pair's reference (below the data folder), for the seeds.
    """
    info = dist_info or DistInfo()
    order = list(range(len(pairs)))
    if 0 < max_images < len(pairs):
        order = sorted(torch.randperm(len(pairs), generator=generator(VAL_SEED, "qep-val-subset"))[:max_images].tolist())
    first_of: dict[tuple, int] = {}
    for i in order:
        first_of.setdefault((keys[i], pairs[i].type), i)
    mine = order[info.rank::info.world_size]
    dist, d_types, d_levels, pristine = [], [], [], []
    for done, i in enumerate(mine, start=1):
        p = pairs[i]
        d, r = load_reference(p.dist, size), load_reference(p.ref, size)
        if d.shape != r.shape:
            raise DatasetError(f"is {d.shape[2]}x{d.shape[1]} but its reference {Path(p.ref).name} is "
                               f"{r.shape[2]}x{r.shape[1]}", p.dist)
        top, left = _offsets(d.shape[1], d.shape[2], size, keys[i], p.type, p.level)
        dist.append(d[:, top:top + size, left:left + size].contiguous())
        d_types.append(p.type)
        d_levels.append(p.level)
        if first_of[(keys[i], p.type)] == i:
            pristine.append(r[:, top:top + size, left:left + size].contiguous())
        if on_progress is not None:
            on_progress(done, len(mine))
    return ValidationSet(_stack(dist, size), torch.tensor(d_types, dtype=torch.long),
                         torch.tensor(d_levels, dtype=torch.long), _stack(pristine, size),
                         {"source": "the pairs of held-out references, cropped at the same place in both images",
                          "references": len({keys[i] for i in order}), "distorted_crops": len(order),
                          "pristine_crops": len(first_of), "crop": size, "seed": VAL_SEED})


@torch.no_grad()
def score_heads(model: torch.nn.Module, vs: ValidationSet, device: torch.device, normalize: Callable, *,
                amp: str = "off", batch_size: int = 64, memory_format=torch.contiguous_format) -> PretextCounts:
    """Tally the type and level heads' answers on this rank's share of the validation set."""
    was_training = model.training
    model.eval()
    counts = PretextCounts.zeros(device)
    parts = [(vs.dist, vs.types, vs.levels),
             (vs.pristine, torch.zeros(len(vs.pristine), dtype=torch.long), torch.zeros(len(vs.pristine), dtype=torch.long))]
    try:
        for images, types, levels in parts:
            for i in range(0, len(images), batch_size):
                x = normalize(to_float(images[i:i + batch_size].to(device, non_blocking=True)))
                with autocast(device, amp):
                    logits = model(x.contiguous(memory_format=memory_format))
                counts.add(count_predictions(logits["type"].float(), logits["level"].float(),
                                             types[i:i + batch_size], levels[i:i + batch_size]))
    finally:
        model.train(was_training)
    return counts


def _sum_over_ranks(counts: PretextCounts, dist_info: DistInfo) -> PretextCounts:
    if not dist_info.enabled:
        return counts
    flat = counts.as_tensor()
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    return PretextCounts.from_tensor(flat)


class PretextValidator:
    """`fit`'s validate callback for QEP: scores, logs, remembers, and draws.

    Args:
        vs: this rank's share of the validation set.
        run_dir: where rank 0 writes results.json and the pictures.
        score: `model -> PretextCounts` on this rank's share (`score_heads` with the stage's settings).
        step: `() -> int`, the step just taken.
        dist_info: ranks; the counts are summed over them.
        summary: extra fields of results.json (the validation set's description, the encoder path).
    """

    def __init__(self, vs: ValidationSet, run_dir: Path, score: Callable[[torch.nn.Module], PretextCounts],
                 step: Callable[[], int], dist_info: DistInfo, summary: dict):
        self.vs, self.run_dir, self.score, self.step, self.dist = vs, Path(run_dir), score, step, dist_info
        self.summary = summary
        self.history: list[dict] | None = None
        self.latest: dict = {}

    def _read_history(self) -> list[dict]:
        """Earlier validations of a resumed run, from its (already truncated) metrics.jsonl."""
        path = self.run_dir / "metrics.jsonl"
        rows = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "val_acc" in rec:
                    rows.append({k: rec[k] for k in ("step", *SCALARS) if k in rec})
        return rows

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        if self.dist.enabled:  # every rank scores with rank 0's BatchNorm statistics (the saved ones)
            for buf in model.buffers():
                torch.distributed.broadcast(buf, 0)
        counts = _sum_over_ranks(self.score(model), self.dist)
        metrics = pretext_metrics(counts)
        scalars = {k: metrics[k] for k in SCALARS}
        if self.history is None:
            self.history = self._read_history()
        self.history.append({"step": self.step(), **scalars})
        self.latest = {"metrics": metrics, "counts": counts}
        if self.dist.is_main:
            self.write(finished=False)
        return scalars

    def shown(self) -> dict[str, float]:
        """The last validation's accuracies, short-named for a progress line."""
        if not self.history:
            return {}
        last = self.history[-1]
        return {"val type/level/pristine": "/".join(
            f"{last[k]:.2f}" for k in ("val_type_acc", "val_level_acc", "val_pristine_acc"))}

    def best(self) -> dict | None:
        """The validation with the highest val_acc (the earliest of equals), as best.pt holds."""
        rows = [r for r in (self.history or []) if math.isfinite(r.get("val_acc", math.nan))]
        return max(rows, key=lambda r: (r["val_acc"], -r["step"])) if rows else None

    def write(self, finished: bool, extra: dict | None = None) -> None:
        """results.json and the pictures, from the last validation (rank 0)."""
        if not self.latest:
            return
        metrics, counts = self.latest["metrics"], self.latest["counts"]
        best = self.best()
        last = self.history[-1]
        record = {"step": last["step"], "finished": finished, **{k: metrics[k] for k in SCALARS},
                  "best_step": best["step"] if best else None, "best_val_acc": best["val_acc"] if best else None,
                  "best_checkpoint": BEST_RULE, **self.summary, **(extra or {}),
                  "per_type": _named(metrics["per_type"]), "per_type_level": metrics["per_type_level"],
                  "type_confusion": counts.type_confusion.tolist(), "level_confusion": counts.level_confusion.tolist(),
                  "history": self.history}
        write_json(self.run_dir / RESULTS_FILE, record)
        save_image_atomic(confusion_picture(counts.type_confusion, last["step"]), self.run_dir / CONFUSION_FILE)
        save_image_atomic(type_level_picture(metrics["per_type_level"], last["step"]), self.run_dir / TYPE_LEVEL_FILE)
        save_image_atomic(curves_picture(self.run_dir / "metrics.jsonl", self.history), self.run_dir / CURVES_FILE)


def _named(per_type: dict) -> dict:
    from dsmix_cli.distortions import TYPE_NAMES

    return {f"{t} {TYPE_NAMES[t]}": v for t, v in per_type.items()}


# ------------------------------------------------------------------------------------- pictures

def confusion_picture(type_confusion: torch.Tensor, step: int) -> Image.Image:
    """The type head's answers per true type (rows normalised), pristine crops in the first row."""
    from dsmix_cli.distortions import TYPE_NAMES
    from dsmix_cli.plots import heatmap

    m = type_confusion.double().cpu().numpy()
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)
    labels = ["pristine"] + [f"{t} {TYPE_NAMES[t]}" for t in range(1, len(m))]
    return heatmap(frac, row_labels=labels, col_labels=["P"] + [str(t) for t in range(1, len(m))], cell=16,
                   vmin=0.0, vmax=1.0, title=f"held-out type confusion at step {step} (rows: true, row-normalised)",
                   x_label="answer", y_label="true type")


def type_level_picture(per_type_level: dict, step: int) -> Image.Image:
    """Type and level accuracy per (true type, true level), side by side."""
    from dsmix_cli.distortions import TYPE_NAMES
    from dsmix_cli.plots import heatmap

    names = [f"{t} {TYPE_NAMES[t]}" for t in range(1, 26)]
    panels = [heatmap(np.array(per_type_level[key], dtype=np.float64), row_labels=names if i == 0 else None,
                      col_labels=[str(lv) for lv in range(1, 6)], cell=18, vmin=0.0, vmax=1.0, annotate=True,
                      title=f"{what} accuracy, step {step}", x_label="level")
              for i, (key, what) in enumerate((("type_acc", "type"), ("level_acc", "level")))]
    img = Image.new("RGB", (sum(p.size[0] for p in panels) + 10, max(p.size[1] for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        img.paste(p, (x, img.size[1] - p.size[1]))
        x += p.size[0] + 10
    return img


def curves_picture(metrics_path: Path, history: list[dict]) -> Image.Image:
    """Training loss (top) and held-out accuracies with their chance levels (bottom)."""
    from dsmix_cli.plots import line_chart

    steps, losses = [], []
    if Path(metrics_path).exists():
        for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec:
                steps.append(rec["step"])
                losses.append(rec["loss"])
    top = line_chart({"loss": (steps, losses)}, title="training loss", x_label="step", size=(640, 260))
    xs = [r["step"] for r in history]
    series = {name: (xs, [r.get(key, math.nan) for r in history]) for name, key in (
        ("type acc", "val_type_acc"), ("level acc", "val_level_acc"), ("pristine acc", "val_pristine_acc"),
        ("called pristine", "val_called_pristine"))}
    bottom = line_chart(series, title="held-out accuracy (distorted crops; pristine: reference crops)", x_label="step",
                        size=(640, 300), y_range=(0.0, 1.0), hlines={"type chance 0.04": 0.04, "level chance 0.2": 0.2})
    img = Image.new("RGB", (640, top.size[1] + bottom.size[1]), (255, 255, 255))
    img.paste(top, (0, 0))
    img.paste(bottom, (0, top.size[1]))
    return img
