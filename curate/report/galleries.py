"""Galleries per tier: the highest, the lowest and the at-threshold samples, with caption and scores.
Only the shown samples are read (caption, image), so the page costs the same for any pool size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.report.html import esc, fmt, missing, note
from curate.report.runfiles import gt_labels, rows_for_uids, rows_parts
from curate.report.thumbs import score_lines, thumbnails, tile
from curate.report.tiers import ScoreView
from curate.schema import CAPTION, UID

PER_STRIP = 8
MAX_SUBSETS = 8


def pick(values: np.ndarray, mask: np.ndarray, k: int, threshold: float | None) -> dict[str, np.ndarray]:
    """Row indices: the subset's highest k and lowest k, and the k scored rows nearest the threshold on
    either side of it (in the subset or not), each strip ordered by value."""
    scored = np.isfinite(values)
    idx = np.flatnonzero(mask & scored)
    if not len(idx):
        return {}
    order = idx[np.argsort(values[idx], kind="stable")]
    strips = {"highest": order[::-1][:k], "lowest": order[:k]}
    if threshold is not None:
        everyone = np.flatnonzero(scored)
        near = everyone[np.argsort(np.abs(values[everyone] - threshold), kind="stable")[:k]]
        strips["at threshold (either side)"] = near[np.argsort(values[near], kind="stable")[::-1]]
    return strips


def render(run_dir: Path, view: ScoreView | None, gt: pa.Table | None) -> str:
    if view is None:
        return missing("No scored rows yet: galleries need the score stage's parts.")
    names = list(view.members)[:MAX_SUBSETS]
    scores = {c: view.values(c) for c in view.score_cols}
    uids = view.table.column(UID).to_numpy(zero_copy_only=False)
    plan: list[tuple[str, str, float | None, dict[str, np.ndarray]]] = []
    for name in names:
        column = view.sort_column(name)
        threshold = view.threshold(name, column) if column else None
        values = scores[column] if column in scores else view.values(column)
        plan.append((name, column, threshold, pick(values, view.members[name], PER_STRIP, threshold)))
    wanted = sorted({str(uids[i]) for *_, strips in plan for s in strips.values() for i in s})
    rows = rows_for_uids(rows_parts(run_dir), wanted, [CAPTION, "shard", "key"])
    images = thumbnails(Path(run_dir) / "download", [(r.get("shard"), r.get("key")) for r in rows.values()])
    labels = gt_labels(gt, wanted)
    body = []
    if not view.has_tiers:
        body.append(missing("The tier stage has not run: showing all scored rows."))
    for name, column, threshold, strips in plan:
        cut = f", threshold {fmt(threshold)}" if threshold is not None else ", no threshold on it"
        body.append(f"<h3>{esc(name)}</h3>" + note(f"{int(view.members[name].sum()):,} rows, ordered by {column}{cut}"))
        for strip, indices in strips.items():
            tiles = []
            for i in indices:
                uid = str(uids[i])
                row = rows.get(uid, {})
                lines = score_lines({c: scores[c][i] for c in scores}, list(scores))
                if strip.startswith("at threshold"):
                    lines.insert(0, ("sc", "in subset" if view.members[name][i] else "not in subset"))
                if uid in labels:
                    lines.append(("gt", f"gt: {labels[uid]}"))
                tiles.append(tile(images.get((row.get("shard"), row.get("key"))), row.get(CAPTION) or "", lines))
            body.append(f'<p class="note">{esc(strip)}</p><div class="gallery">{"".join(tiles)}</div>')
    if len(view.members) > MAX_SUBSETS:
        body.append(note(f"{len(view.members) - MAX_SUBSETS} more subsets not shown."))
    return "".join(body)
