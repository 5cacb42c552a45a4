"""Training curves (metrics.jsonl under train/ and filter/), the comparison table with 95% intervals
(results.csv from `curate compare`; whatever columns it has), each cell against the reference cell and the
share of the oracle's gain it recovers (versus_reference.csv), and, when a grid sweeps budgets, each
subset's quality against samples seen."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv

from curate.interval import t_interval
from curate.io import read_json_if, read_jsonl
from curate.report import plots
from curate.report.html import fmt, img, missing, note, table

MAX_CURVES = 24
MAX_TABLE_ROWS = 200
MAX_METRICS = 6
CELL_KEYS = ("subset", "strategy", "model", "regime", "budget")
NOT_METRICS = {"seed", "subset_size", "samples_seen", "wall_s", "samples_per_s", "steps", "records",
               "samples_skipped", "fingerprint"}
HEADLINE_LEAVES = ("r5", "top1")  # retrieval R@5 and classification top-1 first; counts (n, classes) never


def training_runs(run_dir: Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    found = sorted((run_dir / "train").glob("**/metrics.jsonl"))
    if (run_dir / "filter" / "metrics.jsonl").exists():
        found.insert(0, run_dir / "filter" / "metrics.jsonl")
    return {str(p.parent.relative_to(run_dir)): p for p in found}


def curves(run_dir: Path) -> str:
    runs = training_runs(run_dir)
    if not runs:
        return missing("No training ran in this run directory (no metrics.jsonl under train/ or filter/).")
    series, rows = {}, []
    for name, path in list(runs.items())[:MAX_CURVES]:
        lines = [r for r in read_jsonl(path) if "loss" in r]
        if lines:
            series[name] = (np.array([r.get("samples", r.get("step", 0)) for r in lines]),
                            np.array([r["loss"] for r in lines]))
        summary = read_json_if(path.parent / "summary.json") or {}
        rows.append([name, summary.get("model", ""), summary.get("samples_seen", lines[-1].get("samples") if lines else ""),
                     summary.get("samples_per_s", ""), summary.get("wall_s", ""),
                     "finished" if summary else "in progress"])
    body = [img(plots.curves(series, "samples seen", "contrastive loss"), "training loss curves")] if series else []
    body.append(table(["run", "model", "samples seen", "samples/s", "wall s", "state"], rows))
    if len(runs) > MAX_CURVES:
        body.append(note(f"{len(runs) - MAX_CURVES} more runs not shown."))
    return "".join(body)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def headline(metrics: list[str]) -> list[str]:
    """Up to MAX_METRICS quality metrics: R@5 and top-1 first, then other recalls and top-5; metrics of
    other names (a results.csv not from `curate eval`) in their own order."""
    leaves = [m.rsplit("/", 1)[-1] for m in metrics]
    first = [m for wanted in HEADLINE_LEAVES for m, leaf in zip(metrics, leaves) if leaf == wanted]
    then = [m for m, leaf in zip(metrics, leaves) if leaf in ("r1", "r10", "top5")]
    return (first + then or metrics)[:MAX_METRICS]


def versus(run_dir: Path) -> str:
    """Each cell minus the reference cell, paired by seed, for the headline metrics and speed; with an
    oracle, the share of its gain each cell recovers, in a table and in words."""
    path = Path(run_dir) / "versus_reference.csv"
    if not path.exists():
        return ""
    records = pacsv.read_csv(path).to_pylist()
    keys = [k for k in CELL_KEYS if k in records[0]] if records else list(CELL_KEYS)
    metrics = headline(list(dict.fromkeys(r["metric"] for r in records))) + ["samples_per_s"]
    cells: dict[str, dict[str, str]] = {}
    for r in records:
        if r["metric"] in metrics:
            label = " / ".join(str(r[k]) for k in keys if r[k] is not None)
            half = "" if r["ci95"] is None else f" ± {fmt(r['ci95'])}"
            share = _share(r) if r["metric"] != "samples_per_s" else ""
            cells.setdefault(label, {})[r["metric"]] = (f"{r['difference']:+.4g}{half} ({r['verdict']})"
                                                        + (f"; {share} of the oracle's gain" if share else ""))
    rows = [[label, *(found.get(m, "") for m in metrics)] for label, found in cells.items()]
    return ("<h3>Against the reference cell, paired by seed</h3>"
            + note("cell minus reference on the same seed: mean ± 95% interval half-width; `better`/`worse` "
                   "when the interval excludes zero; with an oracle cell, the share of the oracle's gain over the "
                   "reference (1 = a perfect filter, 0 = no better than the reference) (versus_reference.csv)")
            + oracle_words(records, metrics[0] if metrics else "")
            + table(["cell (" + " / ".join(keys) + ")", *metrics], rows))


def _share(record: dict) -> str:
    share = record.get("oracle_gain_share")
    if share is None:
        return ""
    half = record.get("oracle_gain_share_ci95")
    return f"{share:.0%}" + ("" if half is None else f" ± {half:.0%}")


def oracle_words(records: list[dict], metric: str) -> str:
    """Per budget, the cell that recovers most of the oracle's gain on the headline metric, in a sentence."""
    best: dict = {}
    for r in records:
        if r["metric"] == metric and r.get("oracle_gain_share") is not None and r.get("regime") != "one_pass":
            key = r.get("budget")
            if key not in best or r["oracle_gain_share"] > best[key]["oracle_gain_share"]:
                best[key] = r
    lines = [f"At {fmt(budget) if budget else 'the'} samples seen, {r['subset']} ({r['strategy']}) recovers "
             f"{_share(r)} of the oracle's gain in {metric} over the reference."
             for budget, r in sorted(best.items(), key=lambda kv: kv[0] or 0)]
    return "".join(note(line) for line in lines)


def against_budget(records: list[dict], metrics: list[str]) -> str:
    """Each subset's mean and 95% interval against samples seen, when the equal_samples cells sweep budgets."""
    sweep = [r for r in records if r.get("regime") == "equal_samples" and _is_number(r.get("budget"))]
    if len({r["budget"] for r in sweep}) < 2:
        return ""
    panels = {}
    for m in metrics:
        values: dict[tuple, list[float]] = {}
        for r in sweep:
            if _is_number(r.get(m)):
                values.setdefault((f"{r['subset']} / {r['strategy']}", r["budget"]), []).append(float(r[m]))
        lines: dict[str, list] = {}
        for (label, budget), found in values.items():
            mean, half = t_interval(found)
            lines.setdefault(label, []).append((budget, mean, half or 0.0))
        if lines:
            panels[m] = lines
    if not panels:
        return ""
    return ("<h3>Quality against compute</h3>"
            + note("each subset at every equal_samples budget (mean over seeds, 95% interval shaded): where the "
                   "best subset moves as compute grows")
            + img(plots.against_budget(panels), "quality against samples seen"))


def comparison(run_dir: Path) -> str:
    path = Path(run_dir) / "results.csv"
    if not path.exists():
        return missing("No comparison yet (results.csv from `curate compare`).")
    records = pacsv.read_csv(path).to_pylist()
    if not records:
        return missing("results.csv has no rows yet.")
    columns = list(records[0])
    failed = [r for r in records if r.get("error") or r.get("status") == "failed"]
    good = [r for r in records if r not in failed]
    keys = [k for k in CELL_KEYS if k in columns]
    metrics = headline([c for c in columns if c not in NOT_METRICS and c not in keys
                        and any(_is_number(r.get(c)) for r in good)])
    cells: dict[str, dict[str, list[float]]] = {}
    for r in good:
        label = " / ".join(str(r[k]) for k in keys if r[k] is not None) or "all"
        for m in metrics:
            if _is_number(r.get(m)):
                cells.setdefault(m, {}).setdefault(label, []).append(float(r[m]))
    body = []
    summary_rows = []
    panels = {}
    for m in metrics:
        panel = []
        for label, values in cells.get(m, {}).items():
            mean, half = t_interval(values)
            lo, hi = (mean, mean) if half is None else (mean - half, mean + half)
            panel.append((label, mean, lo, hi, len(values)))
            summary_rows.append([m, label, len(values), fmt(mean), f"[{fmt(lo)}, {fmt(hi)}]"])
        if panel:
            panels[m] = panel
    if panels:
        body.append(img(plots.intervals(panels), "comparison with 95% intervals"))
        body.append(table(["metric", "cell (" + " / ".join(keys) + ")", "runs", "mean", "95% interval"], summary_rows))
    else:
        body.append(missing("results.csv has no numeric metric columns to compare."))
    body.append(against_budget(good, metrics))
    body.append(versus(run_dir))
    if failed:
        body.append(note(f"{len(failed)} run(s) failed and are left out of the means."))
    shown = records[:MAX_TABLE_ROWS]
    body.append(f"<h3>results.csv ({len(records):,} rows)</h3>")
    body.append(table(columns, [[r.get(c) for c in columns] for r in shown]))
    if len(records) > MAX_TABLE_ROWS:
        body.append(note(f"first {MAX_TABLE_ROWS} rows shown"))
    return "".join(body)
