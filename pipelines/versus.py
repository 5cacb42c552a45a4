"""Each grid cell against a reference cell, paired by seed: does a tier or strategy beat, say, the whole pool
trained with plain CLIP, by how much, and is the difference larger than its 95% interval?

Pairing by seed (the same initialisation and data order seed in both cells) removes most of the
seed-to-seed spread that the per-cell intervals of summary.csv carry. With an oracle cell (an evaluation-only
subset, e.g. the pool's clean rows by ground truth), each cell's gain is also read as a share of the oracle's
gain on the same seed: 1 = as good as a perfect filter, 0 = no better than the reference."""
from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field

from curate.interval import t_interval

VERSUS = ["subset", "strategy", "model", "regime", "budget", "metric", "seeds", "reference_mean", "mean", "difference",
          "ci95", "relative", "verdict", "oracle_gain_share", "oracle_gain_share_ci95"]


class Reference(BaseModel):
    """A cell of the grids by subset and strategy (matched in model, regime and budget)."""

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


def versus_reference(rows: list[dict], reference: Reference, metrics: list[str],
                     oracle: Reference | None = None) -> list[dict]:
    """Per cell (subset, strategy, model, regime, budget) other than the reference and per metric (higher
    is better): the mean over seeds of cell - reference on the same seed, its 95% interval and a verdict;
    with an oracle, the per-seed share (cell - reference) / (oracle - reference), its mean and interval."""
    by_cell: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["subset"], r["strategy"], r["model"], r["regime"], r.get("budget"))
            by_cell.setdefault(key, {})[r["seed"]] = r
    out = []
    for (subset, strategy, model, regime, budget), seeds in by_cell.items():
        base = by_cell.get((reference.subset, reference.strategy, model, regime, budget))
        is_oracle = oracle is not None and (subset, strategy) == (oracle.subset, oracle.strategy)
        best = by_cell.get((oracle.subset, oracle.strategy, model, regime, budget)) if oracle and not is_oracle else None
        if base is None or (subset, strategy) == (reference.subset, reference.strategy):
            continue
        for metric in metrics:
            paired = {s: (float(seeds[s][metric]), float(base[s][metric])) for s in sorted(seeds.keys() & base.keys())
                      if seeds[s].get(metric) is not None and base[s].get(metric) is not None}
            if not paired:
                continue
            difference, half = t_interval([a - b for a, b in paired.values()])
            reference_mean = statistics.fmean(b for _, b in paired.values())
            share, share_half = oracle_share(paired, best, metric)
            out.append({"subset": subset, "strategy": strategy, "model": model, "regime": regime, "budget": budget,
                        "metric": metric, "seeds": len(paired), "reference_mean": round(reference_mean, 5),
                        "mean": round(statistics.fmean(a for a, _ in paired.values()), 5),
                        "difference": round(difference, 5), "ci95": None if half is None else round(half, 5),
                        "relative": round(difference / reference_mean, 3) if reference_mean else None,
                        "verdict": verdict(difference, half), "oracle_gain_share": share,
                        "oracle_gain_share_ci95": share_half})
    return out


def oracle_share(paired: dict[int, tuple[float, float]], oracle: dict[int, dict] | None,
                 metric: str) -> tuple[float | None, float | None]:
    """Mean and 95% half-width over seeds of (cell - reference) / (oracle - reference); seeds where the
    oracle does not beat the reference carry no share (None when no seed does, and for the oracle itself)."""
    if not oracle:
        return None, None
    shares = []
    for seed, (value, base) in paired.items():
        best = oracle.get(seed, {}).get(metric)
        if best is not None and float(best) > base:
            shares.append((value - base) / (float(best) - base))
    if not shares:
        return None, None
    mean, half = t_interval(shares)
    return round(mean, 3), None if half is None else round(half, 3)
