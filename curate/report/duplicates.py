"""Duplicate groups side by side, by reason (dedup/dup.parquet): a few sampled groups per reason, the kept
member first (green border), each other member with its reason and similarity to what it duplicates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.report.html import esc, fmt, missing, note, table
from curate.report.runfiles import gt_labels, rows_for_uids, rows_parts, score_columns
from curate.report.thumbs import score_lines, thumbnails, tile
from curate.schema import CAPTION, DUP_REASONS, UID

GROUPS_PER_REASON = 5
MEMBERS_PER_GROUP = 8
COLUMNS = [UID, "dup_group", "dup_keep", "dup_reason", "dup_similarity"]


def group_reasons(groups: np.ndarray, ranks: np.ndarray) -> dict[int, int]:
    """group id -> rank of the strongest reason among its members (lower is stronger)."""
    order = np.argsort(groups, kind="stable")
    g, r = groups[order], ranks[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return dict(zip(g[starts].tolist(), np.minimum.reduceat(r, starts).tolist()))


def render(run_dir: Path, gt) -> str:
    path = Path(run_dir) / "dedup" / "dup.parquet"
    if not path.exists():
        return missing("The dedup stage has not run (dedup/dup.parquet is missing).")
    dup = pq.read_table(path, columns=COLUMNS)
    dup = dup.filter(pc.is_valid(dup.column("dup_group")))
    if not dup.num_rows:
        return note("dedup found no duplicate groups.")
    groups = dup.column("dup_group").to_numpy()
    reasons = dup.column("dup_reason").to_pylist()
    ranks = np.array([DUP_REASONS.index(r) if r in DUP_REASONS else len(DUP_REASONS) for r in reasons])
    strongest = group_reasons(groups, ranks)
    rng = np.random.default_rng(0)
    summary, shown = [], {}
    for rank, reason in enumerate(DUP_REASONS):
        ids = np.array(sorted(g for g, r in strongest.items() if r == rank))
        summary.append([reason, len(ids), int((ranks == rank).sum())])
        if len(ids):
            shown[reason] = rng.choice(ids, size=min(GROUPS_PER_REASON, len(ids)), replace=False)
    keep = dup.column("dup_keep").to_pylist()
    similarity = dup.column("dup_similarity").to_pylist()
    members = {int(g): sorted(np.flatnonzero(groups == g).tolist(), key=lambda i: (not keep[i], -(similarity[i] or 0)))
               for ids in shown.values() for g in ids}
    uids = dup.column(UID).to_pylist()
    wanted = sorted({uids[i] for idx in members.values() for i in idx[:MEMBERS_PER_GROUP]})
    paths = rows_parts(run_dir)
    scores = score_columns(paths)
    rows = rows_for_uids(paths, wanted, [CAPTION, "shard", "key", *scores])
    images = thumbnails(Path(run_dir) / "download", [(r.get("shard"), r.get("key")) for r in rows.values()])
    labels = gt_labels(gt, wanted)
    body = [table(["reason (strongest in group)", "groups", "rows removed for it"], summary),
            note(f"{len(strongest):,} groups hold {dup.num_rows:,} rows; showing up to {GROUPS_PER_REASON} random "
                 "groups per reason.")]
    for reason, ids in shown.items():
        body.append(f"<h3>{esc(reason)}</h3>")
        for g in ids:
            idx = members[int(g)]
            tiles = []
            for i in idx[:MEMBERS_PER_GROUP]:
                row = rows.get(uids[i], {})
                lines = [("sc", "kept" if keep[i] else f"{reasons[i]} {fmt(similarity[i], 3)}")]
                lines += score_lines(row, scores)
                if uids[i] in labels:
                    lines.append(("gt", f"gt: {labels[uids[i]]}"))
                tiles.append(tile(images.get((row.get("shard"), row.get("key"))), row.get(CAPTION) or "", lines,
                                  kept=bool(keep[i])))
            more = f'<p class="muted">+{len(idx) - MEMBERS_PER_GROUP} more</p>' if len(idx) > MEMBERS_PER_GROUP else ""
            body.append(f'<div class="group">{"".join(tiles)}{more}</div>')
    return "".join(body)
