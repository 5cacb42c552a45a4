"""Each grid cell against a reference cell, paired by seed: does a tier or strategy beat, say, the whole pool
trained with plain CLIP, by how much, and is the difference larger than its 95% interval?

Pairing by seed (the same initialisation and data order seed in both cells) removes most of the
seed-to-seed spread that the per-cell intervals of summary.csv carry."""
from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field

from curate.interval import t_interval

VERSUS = ["subset", "strategy", "model", "regime", "metric", "seeds", "reference_mean", "mean", "difference",
          "ci95", "relative", "verdict"]


class Reference(BaseModel):
    """The cell every other cell is measured against (same model and regime)."""

    model_config = ConfigDict(extra="forbid")
    subset: str = Field("top100", description="e.g. the whole pool after dedup")
    strategy: str = Field("clip", description="a strategy label of the grids")


def verdict(difference: float, half: float | None) -> str:
    if half is None:
        return "too few seeds"
    if difference - half > 0:
        return "better"
    if difference + half < 0:
        return "worse"
    return "no clear difference"


def versus_reference(rows: list[dict], reference: Reference, metrics: list[str]) -> list[dict]:
    """Per cell (subset, strategy, model, regime) other than the reference and per metric (higher is
    better): the mean over seeds of cell - reference on the same seed, its 95% interval and a verdict."""
    by_cell: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            by_cell.setdefault((r["subset"], r["strategy"], r["model"], r["regime"]), {})[r["seed"]] = r
    out = []
    for (subset, strategy, model, regime), seeds in by_cell.items():
        base = by_cell.get((reference.subset, reference.strategy, model, regime))
        if base is None or (subset, strategy) == (reference.subset, reference.strategy):
            continue
        for metric in metrics:
            paired = [(seeds[s][metric], base[s][metric]) for s in sorted(seeds.keys() & base.keys())
                      if seeds[s].get(metric) is not None and base[s].get(metric) is not None]
            if not paired:
                continue
            difference, half = t_interval([float(a) - float(b) for a, b in paired])
            reference_mean = statistics.fmean(float(b) for _, b in paired)
            out.append({"subset": subset, "strategy": strategy, "model": model, "regime": regime, "metric": metric,
                        "seeds": len(paired), "reference_mean": round(reference_mean, 5),
                        "mean": round(statistics.fmean(float(a) for a, _ in paired), 5),
                        "difference": round(difference, 5), "ci95": None if half is None else round(half, 5),
                        "relative": round(difference / reference_mean, 3) if reference_mean else None,
                        "verdict": verdict(difference, half)})
    return out
