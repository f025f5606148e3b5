"""Summaries, the table and the pictures of the QEP learning study (`learning.py`).

Means and spreads are over the seeds of a row (the spread is the sample standard deviation,
with n = the number of seeds; with 2 seeds it is |a - b| / sqrt 2). Probe comparisons are
paired: for each seed, the per-split SRCC differences between two encoders probed on the same
10 splits, then their median over splits, then the mean over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

VAL_KEYS = ("val_type_acc", "val_level_acc", "val_pristine_acc", "val_called_pristine", "val_type_acc_no_pristine",
            "val_level_acc_no_pristine")
SHORT = {"val_type_acc": "type", "val_level_acc": "level", "val_pristine_acc": "pristine",
         "val_called_pristine": "called pristine", "val_type_acc_no_pristine": "type (no P)",
         "val_level_acc_no_pristine": "level (no P)"}
BUDGET_S = 90 * 60


def _stats(values: list[float]) -> dict:
    values = [math.nan if x is None else x for x in values]
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return {"mean": math.nan, "sd": math.nan, "n": 0, "values": values}
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
    return {"mean": float(np.mean(v)), "sd": sd, "n": len(v), "values": values}


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan


def _floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def paired(rows: dict, a: str, b: str) -> dict | None:
    """SRCC of row a minus row b on the same probe splits, per seed both rows have."""
    if a not in rows or b not in rows:
        return None
    per_seed, diffs = {}, []
    for seed, ra in rows[a]["seeds"].items():
        rb = rows[b]["seeds"].get(seed)
        if rb is None:
            continue
        d = _floats(ra["probe"]["splits_srcc"]) - _floats(rb["probe"]["splits_srcc"])
        per_seed[seed] = float(np.nanmedian(d)) if np.isfinite(d).any() else math.nan
        diffs.extend(d[np.isfinite(d)].tolist())
    if not per_seed:
        return None
    vals = [v for v in per_seed.values() if math.isfinite(v)]
    return {"median_diff_mean_over_seeds": float(np.mean(vals)) if vals else math.nan, "per_seed": per_seed,
            "splits_positive": int(sum(x > 0 for x in diffs)), "splits": len(diffs)}


def _mean_curve(seeds: dict, key: str) -> tuple[list[int], list[float]]:
    curves = [[(h["step"], h.get(key)) for h in (r["val"] or {}).get("history", [])] for r in seeds.values()]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    steps = sorted({s for c in curves for s, _ in c})
    by_step = [[dict(c).get(s, math.nan) for c in curves] for s in steps]
    return steps, [_nanmean(_floats(v)) for v in by_step]


def summarize(record: dict) -> dict:
    """`summary` (per row: validation and probe statistics over seeds, paired probe differences,
    per-type accuracy) and `acceptance` (the issue's figures and whether each holds)."""
    rows = record["rows"]
    summary = {}
    for name, row in rows.items():
        seeds = row["seeds"]
        s = {"label": row["label"], "seeds": sorted(seeds, key=int),
             "probe_median_srcc": _stats([r["probe"]["median_srcc"] for r in seeds.values()])}
        runs = [r["val"] for r in seeds.values() if r["val"]]
        if runs:
            s["seconds_per_step"] = _stats([v.get("timing", {}).get("seconds_per_step") for v in runs])
        trained = [v for v in runs if "val_type_acc" in v]  # qpt has no pretext accuracy
        if trained:
            for k in VAL_KEYS:
                s[k] = _stats([v.get(k) for v in trained])
            s["best_val_acc"] = _stats([v.get("best_val_acc") for v in trained])
            types = list(trained[0]["per_type"])
            s["per_type_type_acc"] = {t: _nanmean(_floats([v["per_type"][t]["type_acc"] for v in trained]))
                                      for t in types}
            s["per_type_level_acc"] = {t: _nanmean(_floats([v["per_type"][t]["level_acc"] for v in trained]))
                                       for t in types}
            s["per_type_level"] = {k: [[_nanmean(_floats([v["per_type_level"][k][i][j] for v in trained]))
                                        for j in range(5)] for i in range(25)] for k in ("type_acc", "level_acc")}
            s["curves"] = {k: _mean_curve(seeds, k) for k in ("val_type_acc", "val_level_acc", "val_called_pristine")}
            if all(v.get("level_confusion") for v in trained):  # rows: true level 0..5, columns: answer
                s["level_head_pristine_by_level"] = [
                    _nanmean(_floats([v["level_confusion"][lv][0] / max(sum(v["level_confusion"][lv]), 1)
                                      for v in trained])) for lv in range(1, 6)]
        s["probe_vs_random"] = paired(rows, name, "random") if name != "random" else None
        s["probe_vs_dsmix"] = paired(rows, name, "dsmix") if name not in ("dsmix", "random") else None
        summary[name] = s
    out = {"summary": summary, "acceptance": acceptance(summary, study_cost(rows))}
    default = record.get("settings", {}).get("default_rows")
    if default and set(rows) - set(default) and set(rows) & set(default):  # the default study and more
        seeds = [str(v) for v in record["settings"].get("seeds", [])]
        complete = all(name in rows and sorted(rows[name]["seeds"], key=int) == seeds for name in default)
        seconds = study_cost(rows, only=default)
        out["acceptance"]["default_study"] = {"rows": list(default), "complete": complete, "seconds": seconds,
                                              "within_90_minutes": seconds <= BUDGET_S}
    return out


def study_cost(rows: dict, only=None) -> float:
    """Seconds the study's training runs and probes took, summed from their own timings, so a
    study that reused finished runs is still charged for them (a run resumed after a kill
    counts only its resumed part); `only`: these rows alone."""
    total = 0.0
    for name, row in rows.items():
        if only is not None and name not in only:
            continue
        for r in row["seeds"].values():
            total += ((r.get("val") or {}).get("timing") or {}).get("seconds", 0.0)
            sec = r["probe"].get("seconds")
            total += (sec.get("total", 0.0) if isinstance(sec, dict) else (sec or 0.0))
    return round(total, 1)


def acceptance(summary: dict, seconds: float | None) -> dict:
    """The issue's acceptance figures for the headline row (NaN where a row is missing)."""
    d, p = summary.get("dsmix", {}), summary.get("plain", {})
    g = lambda s, k: s.get(k, {}).get("mean", math.nan) if s else math.nan  # noqa: E731
    div = lambda a, b: a / b if b else math.nan  # noqa: E731
    vs = (d.get("probe_vs_random") or {}).get("median_diff_mean_over_seeds", math.nan)
    fig = {"dsmix_type_acc": g(d, "val_type_acc"), "dsmix_level_acc": g(d, "val_level_acc"),
           "type_ratio_to_plain": div(g(d, "val_type_acc"), g(p, "val_type_acc")),
           "level_ratio_to_plain": div(g(d, "val_level_acc"), g(p, "val_level_acc")),
           "probe_srcc_gain_over_random": vs,
           "probe_median_srcc_gap": g(d, "probe_median_srcc") - g(summary.get("random", {}), "probe_median_srcc")}
    need = {"dsmix_type_acc": 0.3, "dsmix_level_acc": 0.3, "type_ratio_to_plain": 0.9, "level_ratio_to_plain": 0.9,
            "probe_srcc_gain_over_random": 0.05, "probe_median_srcc_gap": 0.05}
    out = {"figures": fig, "thresholds": need,
           "holds": {k: (bool(fig[k] >= v) if math.isfinite(fig[k]) else None) for k, v in need.items()}}
    if seconds is not None:
        out["study_seconds"] = seconds
        out["within_90_minutes"] = seconds <= BUDGET_S
    return out


def _fmt(st: dict | None) -> str:
    if not st or not math.isfinite(st.get("mean", math.nan)):
        return "-"
    sd = st.get("sd", math.nan)
    return f"{st['mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None and math.isfinite(sd) else "")


def table_rows(record: dict) -> list[list[str]]:
    """One line per row: validation accuracies, probe SRCC, paired gains (formatted)."""
    out = []
    for name, s in record["summary"].items():
        pr, pd = s.get("probe_vs_random"), s.get("probe_vs_dsmix")
        out.append([name, s["label"], str(len(s["seeds"])), *(_fmt(s.get(k)) for k in VAL_KEYS),
                    _fmt(s["probe_median_srcc"]),
                    f"{pr['median_diff_mean_over_seeds']:+.3f} ({pr['splits_positive']}/{pr['splits']})" if pr else "-",
                    f"{pd['median_diff_mean_over_seeds']:+.3f} ({pd['splits_positive']}/{pd['splits']})" if pd else "-"])
    return out


HEADER = ["row", "configuration", "seeds", "type acc", "level acc", "pristine acc", "called pristine",
          "type (no P)", "level (no P)", "probe SRCC", "vs random", "vs DSMix"]


def format_table(record: dict) -> str:
    """The study as a Markdown table, then the acceptance figures."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(record)]
    acc = record.get("acceptance", {})
    for k, v in acc.get("figures", {}).items():
        lines.append(f"{k}: {v:.3f} (needs >= {acc['thresholds'][k]}; holds: {acc['holds'][k]})")
    lines.append("(no P): the pristine class left out of the argmax; vs random / vs DSMix: the paired median "
                 "SRCC difference over the same probe splits, mean over seeds (splits better / splits)")
    if "study_seconds" in acc:
        lines.append(f"study: {acc['study_seconds'] / 60:.1f} min of training and probing, summed over the runs "
                     f"(within 90: {acc['within_90_minutes']})")
    if "default_study" in acc:
        d = acc["default_study"]
        lines.append(f"default study ({', '.join(d['rows'])}; every seed there: {d['complete']}): "
                     f"{d['seconds'] / 60:.1f} min (within 90: {d['within_90_minutes']})")
    return "\n".join(lines)


def detail_tables(record: dict, rows=None) -> str:
    """Two Markdown tables from the summary: the level head's "pristine" answers per true level,
    and the type / level accuracy per distortion type (rows: these, default every trained row)."""
    summary = record["summary"]
    names = [n for n in (rows or summary) if n in summary and summary[n].get("per_type_type_acc")]
    lines = ['Share of the distorted crops of each level that the level head calls "pristine" (mean over seeds):',
             "", "| row | level 1 | level 2 | level 3 | level 4 | level 5 |", "|---|---|---|---|---|---|"]
    for n in names:
        by = summary[n].get("level_head_pristine_by_level")
        if by:
            lines.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in by) + " |")
    lines += ["", "Type / level accuracy per distortion type (mean over seeds; chance 0.04 / 0.20):", "",
              "| type | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    types = list(summary[names[0]]["per_type_type_acc"]) if names else []
    for t in types:
        lines.append(f"| {t} | " + " | ".join(f"{summary[n]['per_type_type_acc'][t]:.2f} / "
                                             f"{summary[n]['per_type_level_acc'][t]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def stack(charts: list):
    """Charts of one width, one below the other, in one picture."""
    from PIL import Image

    img = Image.new("RGB", (max(c.size[0] for c in charts), sum(c.size[1] for c in charts)), (255, 255, 255))
    y = 0
    for c in charts:
        img.paste(c, (0, y))
        y += c.size[1]
    return img


def write_pictures(record: dict, folder: Path, prefix: str = "learning") -> list[Path]:
    """PREFIX-curves.png, PREFIX-probe.png, PREFIX-pretext-probe.png and, for the headline and plain
    rows, PREFIX-type-level.png and PREFIX-type-level-plain.png."""
    from dsmix_cli.imageio import save_image_atomic
    from dsmix_cli.plots import bar_chart, line_chart, scatter_chart
    from dsmix_cli.stages.qep_validation import type_level_picture

    folder = Path(folder)
    summary, written = record["summary"], []
    charts = []
    for key, title, chance in (("val_type_acc", "held-out type accuracy", 0.04),
                               ("val_level_acc", "held-out level accuracy", 0.2)):
        series = {name: tuple(s["curves"][key]) for name, s in summary.items() if s.get("curves")}
        charts.append(line_chart(series, title=f"{title} (mean over seeds)", x_label="step", size=(640, 300),
                                 y_range=(0.0, 1.0), hlines={f"chance {chance}": chance}))
    save_image_atomic(stack(charts), folder / f"{prefix}-curves.png")
    written.append(folder / f"{prefix}-curves.png")
    names = list(summary)
    probe = bar_chart(names, [summary[n]["probe_median_srcc"]["mean"] for n in names],
                      errors=[summary[n]["probe_median_srcc"]["sd"] for n in names],
                      title="probe median SRCC on the held-out CLIVE part (mean ± sd over seeds)", y_label="SRCC")
    save_image_atomic(probe, folder / f"{prefix}-probe.png")
    written.append(folder / f"{prefix}-probe.png")
    # does a better-learned pretext give a better probe? one dot per trained row
    pretext = {n: (summary[n]["val_type_acc"]["mean"], summary[n]["probe_median_srcc"]["mean"])
               for n in names if "val_type_acc" in summary[n]}
    if pretext:
        floor = summary.get("random", {}).get("probe_median_srcc", {}).get("mean")
        title = "held-out type accuracy against probe SRCC (mean over seeds)"
        if floor is not None and math.isfinite(floor):
            title += f"; random init probes {floor:.3f}"
        chart = scatter_chart(pretext, title=title, x_label="held-out type accuracy", y_label="probe median SRCC")
        save_image_atomic(chart, folder / f"{prefix}-pretext-probe.png")
        written.append(folder / f"{prefix}-pretext-probe.png")
    # which distortions the heads tell apart: the headline, and the calibration row beside it
    for name, file in (("dsmix", f"{prefix}-type-level.png"), ("plain", f"{prefix}-type-level-plain.png")):
        row = summary.get(name)
        if row and row.get("per_type_level"):
            save_image_atomic(type_level_picture(row["per_type_level"], record["settings"]["steps"]), folder / file)
            written.append(folder / file)
    return written


# ------------------------------------------------------------------------------------- budgets

BUDGET_KEYS = ("val_type_acc", "val_level_acc", "val_called_pristine", "probe_median_srcc")
TARGET = 0.3  # the accuracy the study asks of the headline row


def log_fit_crossing(points: list[tuple[int, float]], target: float = TARGET) -> float | None:
    """Steps at which the least-squares line acc = a + b log2(steps) through `points` (steps, acc;
    two budgets at least) reaches `target`; None when it does not rise or has too few points."""
    pts = [(math.log2(s), a) for s, a in points if s > 0 and math.isfinite(a)]
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    b, a = np.polyfit(x, y, 1)
    return float(2 ** ((target - a) / b)) if b > 0 else None


def budget_summary(records: list[dict]) -> dict:
    """Per row found in several records of different `--steps`: each budget's final held-out
    accuracies and probe (mean over that record's seeds), and where a straight line in log2(steps)
    through them reaches 0.3 (`fit_*`; a measured crossing is `reached_*`: the first budget there)."""
    by_row: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["settings"]["steps"]):
        steps = rec["settings"]["steps"]
        for name, s in summarize(rec)["summary"].items():
            if "val_type_acc" not in s:
                continue
            row = by_row.setdefault(name, {"label": s["label"], "budgets": []})
            row["budgets"].append({"steps": steps, "seeds": s["seeds"],
                                   **{k: s[k]["mean"] for k in BUDGET_KEYS if k in s},
                                   "seconds_per_step": s.get("seconds_per_step", {}).get("mean")})
    by_row = {name: row for name, row in by_row.items() if len(row["budgets"]) > 1}
    for row in by_row.values():
        for key in ("val_type_acc", "val_level_acc"):
            pts = [(b["steps"], b[key]) for b in row["budgets"]]
            row[f"reached_{key}"] = next((s for s, a in pts if a >= TARGET), None)
            row[f"fit_{key}"] = log_fit_crossing(pts)
    return by_row


def budget_table(budgets: dict) -> str:
    """The budgets as a Markdown table: one line per (row, budget), then each row's crossings."""
    lines = ["| row | steps | seeds | type acc | level acc | called pristine | probe SRCC |",
             "|---|---|---|---|---|---|---|"]
    f = lambda v: f"{v:.3f}" if v is not None and math.isfinite(v) else "-"  # noqa: E731
    for name, row in budgets.items():
        for b in row["budgets"]:
            lines.append(f"| {name} | {b['steps']:,} | {','.join(b['seeds'])} | {f(b.get('val_type_acc'))} | "
                         f"{f(b.get('val_level_acc'))} | {f(b.get('val_called_pristine'))} | "
                         f"{f(b.get('probe_median_srcc'))} |")
    lines.append("")
    for name, row in budgets.items():
        said = []
        for key, what in (("val_type_acc", "type"), ("val_level_acc", "level")):
            if row[f"reached_{key}"] is not None:
                said.append(f"{what} {TARGET} reached at {row[f'reached_{key}']:,} steps (measured)")
            elif row[f"fit_{key}"] is not None:
                said.append(f"{what} {TARGET} at ~{row[f'fit_{key}']:,.0f} steps (fit in log2 steps, not run)")
            else:
                said.append(f"{what}: no rising fit")
        lines.append(f"{name}: " + "; ".join(said))
    return "\n".join(lines)


def budget_picture(budgets: dict, folder: Path, prefix: str = "learning") -> Path:
    """PREFIX-budgets.png: each row's final held-out type and level accuracy against its budget."""
    from dsmix_cli.imageio import save_image_atomic
    from dsmix_cli.plots import line_chart

    charts = []
    for key, title in (("val_type_acc", "held-out type accuracy at the end of each budget"),
                       ("val_level_acc", "held-out level accuracy at the end of each budget")):
        series = {name: ([b["steps"] for b in row["budgets"]], [b.get(key, math.nan) for b in row["budgets"]])
                  for name, row in budgets.items()}
        charts.append(line_chart(series, title=title, x_label="steps (the run's whole schedule)", size=(640, 300),
                                 y_range=(0.0, 0.7), hlines={f"target {TARGET}": TARGET}))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-budgets.png"
    save_image_atomic(stack(charts), path)
    return path
