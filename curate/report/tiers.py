"""Scores per tier: which rows each subset holds, and score histograms per tier with the thresholds marked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.io import read_json_if
from curate.report import plots
from curate.report.html import esc, img, missing, note
from curate.report.runfiles import read_columns, rows_parts, schema_names, score_columns, subsets
from curate.schema import STATUS, UID

MAX_HISTOGRAM_COLUMNS = 6
ALL_SCORED = "all scored"


@dataclass
class ScoreView:
    """The run's per-row scores (uid, status, score_* and threshold columns; no captions or embeddings) and
    each subset's membership as a boolean mask over those rows."""

    table: pa.Table
    score_cols: list[str]
    thresholds: dict[str, dict[str, float]]
    members: dict[str, np.ndarray]
    has_tiers: bool

    def values(self, column: str) -> np.ndarray:
        col = self.table.column(column)
        return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy()

    def numeric(self, column: str) -> bool:
        if column not in self.table.column_names:
            return False
        t = self.table.schema.field(column).type
        return pa.types.is_integer(t) or pa.types.is_floating(t)

    def threshold(self, subset: str, column: str) -> float | None:
        value = self.thresholds.get(subset, {}).get(column)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def sort_column(self, subset: str) -> str | None:
        """The column a subset's gallery is ordered by: its first thresholded score, else the first score."""
        cols = [c for c in self.thresholds.get(subset, {}) if c.startswith("score_") and self.numeric(c)]
        return (cols or self.score_cols or [None])[0]


def load(run_dir: Path) -> ScoreView | None:
    paths = rows_parts(run_dir)
    scores = score_columns(paths)
    if not scores:
        return None
    thresholds = read_json_if(Path(run_dir) / "tier" / "thresholds.json") or {}
    extra = [c for t in thresholds.values() for c in t if c in schema_names(paths)]
    table = read_columns(paths, [UID, STATUS, *scores, *extra])
    uids = table.column(UID)
    tiers = subsets(run_dir)
    members = {name: pc.is_in(uids, value_set=ids).to_numpy(zero_copy_only=False) for name, ids in tiers.items()}
    if not members:
        first = pc.fill_null(table.column(scores[0]).cast(pa.float64()), np.nan).to_numpy()
        members = {ALL_SCORED: np.isfinite(first)}
    return ScoreView(table, scores, thresholds, members, bool(tiers))


def histogram_columns(view: ScoreView) -> list[str]:
    thresholded = [c for t in view.thresholds.values() for c in t if view.numeric(c)]
    return list(dict.fromkeys([*view.score_cols, *thresholded]))[:MAX_HISTOGRAM_COLUMNS]


def render(view: ScoreView | None) -> str:
    if view is None:
        return missing("No score columns yet: the score stage has not written parts (score/part-*.parquet).")
    body = []
    if not view.has_tiers:
        body.append(missing("The tier stage has not run (tier/subsets/ is empty): histograms show all scored rows."))
    elif not view.thresholds:
        body.append(missing("tier/thresholds.json is missing: no threshold lines."))
    for column in histogram_columns(view):
        everything = view.values(column)
        groups = {name: everything[mask] for name, mask in view.members.items()}
        cuts = {name: view.threshold(name, column) for name in view.members}
        uri = plots.histograms(column, everything, groups, {k: v for k, v in cuts.items() if v is not None},
                               background=view.has_tiers)
        body.append(f"<h3>{esc(column)}</h3>" + img(uri, f"histogram of {column} per tier"))
    body.append(note("Grey: every scored row. Colour: the subset's rows. Dashed: the subset's threshold on this "
                     "column (tier/thresholds.json)."))
    return "".join(body)
