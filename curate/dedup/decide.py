"""Dedup's decisions from the links its tasks found (curate.dedup.partitions), in the driver. Only rows with
a link take part: a row that shares nothing is kept and alone in its caption group, so the driver holds
the linked rows (their uid, preference and hashes), never the pool. dup.parquet is then written part by
part: one row per input row, in the score parts' order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.dedup.partitions import Plan, read_partition
from curate.dedup.pictures import Links, decide, find_root
from curate.schema import UID

DUP_SCHEMA = pa.schema([(UID, pa.string()), ("dup_group", pa.int64()), ("dup_keep", pa.bool_()),
                        ("dup_reason", pa.string()), ("dup_of", pa.string()), ("dup_similarity", pa.float32()),
                        ("dup_linked_to", pa.string()), ("caption_dup_count", pa.int32()),
                        ("caption_dup_of", pa.string())])


def _all(plan: Plan, kind: str) -> pa.Table | None:
    """Every partition's records of `kind` (links: a few per duplicated row)."""
    tables = [t for folder in sorted((plan.work / kind).glob("p-*")) if (t := read_partition(folder))]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def _links(plan: Plan, same: pa.Table | None, kinds: tuple[str, ...], extra: str | None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, similarity, strength) of the identity links (`same`) of `kinds` (both 1) and of the links
    in the `extra` folder (strength: their similarity where they have none)."""
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    sims, strengths = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
    if same is not None and kinds:
        mine = np.isin(same.column("kind").to_numpy(zero_copy_only=False), kinds)
        firsts.append(np.asarray(same.column("first"))[mine]), seconds.append(np.asarray(same.column("second"))[mine])
        ones = np.ones(int(mine.sum()), np.float32)
        sims.append(ones), strengths.append(ones)
    found = _all(plan, extra) if extra else None
    if found is not None:
        firsts.append(np.asarray(found.column("first"))), seconds.append(np.asarray(found.column("second")))
        sim = (np.asarray(found.column("similarity"), np.float32) if "similarity" in found.column_names
               else np.ones(found.num_rows, np.float32))
        sims.append(sim)
        strengths.append(np.asarray(found.column("strength"), np.float32) if "strength" in found.column_names
                         else sim)
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    _, once = np.unique(np.stack([first, second], 1), axis=0, return_index=True)  # found in two partitions
    once = np.sort(once)
    return first[once], second[once], np.concatenate(sims)[once], np.concatenate(strengths)[once]


def linked_rows(plan: Plan, gs: np.ndarray) -> pa.Table:
    """The rows/ records (g, uid, pref, sha256, caption_hash) of the sorted row numbers `gs`."""
    tables = []
    for path in sorted((plan.work / "rows").glob("part-*.parquet")):
        rows = pq.read_table(path, columns=["g", UID, "pref", "sha256", "caption_hash"])
        tables.append(rows.filter(pa.array(np.isin(np.asarray(rows.column("g")), gs))))
    return pa.concat_tables(tables).sort_by("g")


def _preference(plan: Plan, rows: pa.Table) -> np.ndarray:
    """Higher is kept first: the keep score, or (farthest_from_centroid) minus the cosine to the centroid,
    read for the linked rows from every image partition's 12 bytes a row."""
    if plan.cfg.keep != "farthest_from_centroid":
        return np.asarray(rows.column("pref"))
    centroid = _all(plan, "centroid")
    g = np.asarray(rows.column("g"))
    sim = np.full(len(g), np.nan)
    if centroid is not None:
        cg = np.asarray(centroid.column("g"))
        found = np.isin(cg, g)
        sim[np.searchsorted(g, cg[found])] = np.asarray(centroid.column("centroid_sim"))[found]
    return np.nan_to_num(-sim, nan=-np.inf)


class Decisions:
    """Per linked row (sorted row numbers `g`): what dup.parquet says of it."""

    def __init__(self, plan: Plan):
        same = _all(plan, "same")
        same_image = _links(plan, same, ("image",), None)  # rows of one sha256: joined inside `decide`
        near = _links(plan, same, (), "links")
        caption = _links(plan, same, ("caption", "shingles"), "captions") if plan.cfg.captions else None
        ends = [np.concatenate(e[:2]) for e in (same_image, near, caption) if e is not None]
        self.g = np.unique(np.concatenate(ends)) if ends else np.zeros(0, np.int64)
        rows = linked_rows(plan, self.g)
        self.uid = rows.column(UID).to_pylist()
        preference = _preference(plan, rows)
        self.order = np.lexsort((np.array(self.uid), -preference))  # most preferred first, ties by uid
        sha = rows.column("sha256").to_pylist() if plan.cfg.exact else [None] * len(self.g)
        self.image = decide(sha, rows.column("caption_hash").to_pylist(),
                            Links(self.local(near[0]), self.local(near[1]), near[2], near[3]), self.order)
        self.caption = self._captions(caption) if caption is not None else None
        kept_for = self.image.kept_for
        self.dropped_for = np.bincount(kept_for[kept_for != np.arange(len(self.g))], minlength=len(self.g))

    def local(self, g: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.g, g)

    def _captions(self, links) -> tuple[np.ndarray, np.ndarray]:
        """(size of each linked row's caption group, the group's most preferred row), local numbers."""
        first, second = links[:2]
        n = len(self.g)
        parent = np.arange(n)
        for i, j in zip(self.local(first).tolist(), self.local(second).tolist()):
            a, b = find_root(parent, i), find_root(parent, j)
            parent[max(a, b)] = min(a, b)
        roots = np.array([find_root(parent, k) for k in range(n)], np.int64)
        head: dict[int, int] = {}
        for k in self.order.tolist():
            head.setdefault(int(roots[k]), k)
        return np.bincount(roots, minlength=n)[roots], np.array([head[int(r)] for r in roots], np.int64)


def write_dup(plan: Plan, decisions: Decisions, path: Path) -> None:
    """dup.parquet, one row group per score part; rows that took no part (not `ok`) have nulls."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(tmp, DUP_SCHEMA) as writer:
        for part in sorted((plan.work / "rows").glob("part-*.parquet")):
            writer.write_table(_dup_part(decisions, pq.read_table(part, columns=["g", UID, "ok"])))
    tmp.replace(path)


def _dup_part(d: Decisions, rows: pa.Table) -> pa.Table:
    """dup.parquet's rows for one score part's rows/ records (g, uid, ok)."""
    g, ok = np.asarray(rows.column("g")), np.asarray(rows.column("ok"))
    n = len(g)
    at = np.searchsorted(d.g, g).clip(0, max(len(d.g) - 1, 0))
    linked = (d.g[at] == g) & ok if len(d.g) else np.zeros(n, bool)
    mine, where = np.flatnonzero(linked), at[linked]
    keep = np.where(ok, True, None).astype(object)
    group, reason, dup_of, sim, linked_to = (np.full(n, None, object) for _ in range(5))
    for k, w in zip(mine.tolist(), where.tolist()):
        kept = int(d.image.kept_for[w])
        keep[k] = kept == w
        if kept != w or d.dropped_for[w]:
            group[k] = int(d.g[kept])
        if kept != w:
            reason[k], dup_of[k] = d.image.reason[w], d.uid[kept]
            sim[k], linked_to[k] = float(d.image.similarity[w]), d.uid[int(d.image.linked_to[w])]
    count, caption_of = np.full(n, None, object), np.full(n, None, object)
    if d.caption is not None:
        count[ok] = 1
        for k, w in zip(mine.tolist(), where.tolist()):
            count[k] = int(d.caption[0][w])
            head = int(d.caption[1][w])
            caption_of[k] = d.uid[head] if head != w else None
    columns = [rows.column(UID), group, keep, reason, dup_of, sim, linked_to, count, caption_of]
    return pa.table([c if isinstance(c, pa.ChunkedArray) else pa.array(c.tolist(), f.type)
                     for c, f in zip(columns, DUP_SCHEMA)], schema=DUP_SCHEMA)
