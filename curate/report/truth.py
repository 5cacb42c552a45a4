"""Ground truth (synthetic or --from-pairs pools): how well each filter, tier and dedup match the planted
noise (synth/pool.parquet's gt_noise and gt_dup_of). Every rate is counted over the whole pool; labels are
dictionary codes, so a 1M-row pool costs seconds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io import list_parts
from curate.report import plots
from curate.report.html import esc, img, missing, note, table
from curate.report.runfiles import read_columns
from curate.report.tiers import ScoreView
from curate.schema import STATUS, UID, Status
from curate.synthetic.quality import dedup_quality, pairs_root, roc_auc

CLEAN = "clean"
BROKEN = "broken"


@dataclass
class Labels:
    """A string column as integer codes (-1 = null) and the names they stand for."""

    codes: np.ndarray
    names: list[str]

    @classmethod
    def of(cls, values: pa.Array | pa.ChunkedArray) -> "Labels":
        if pa.types.is_dictionary(values.type):  # re-encode: stored dictionaries may hold unused or repeated values
            values = values.cast(pa.string())
        encoded = pc.dictionary_encode(values)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(codes, encoded.dictionary.to_pylist())

    def mask(self, name: str) -> np.ndarray:
        return self.codes == (self.names.index(name) if name in self.names else -2)

    def counts(self, mask: np.ndarray | None = None) -> dict[str, int]:
        codes = self.codes if mask is None else self.codes[mask]
        n = np.bincount(codes[codes >= 0], minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, n)}

    def grouped(self) -> "Labels":
        """broken_* kinds folded into one."""
        names = sorted({BROKEN if n.startswith("broken_") else n for n in self.names})
        remap = np.array([names.index(BROKEN if n.startswith("broken_") else n) for n in self.names] + [-1])
        return Labels(remap[self.codes], names)

    def order(self) -> list[str]:
        present = {n for n, c in self.counts().items() if c}
        return [k for k in (CLEAN, *sorted(present - {CLEAN, BROKEN}), BROKEN) if k in present]


def align(gt: pa.Table, uids: pa.Array | pa.ChunkedArray, column: str = "gt_noise") -> pa.Array:
    """gt `column` for each uid (null where the pool does not have it)."""
    idx = pc.index_in(uids, value_set=gt.column(UID).combine_chunks())
    return gt.column(column).combine_chunks().take(idx)


def share(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else ""


def _rates(selectors: dict[str, np.ndarray], kinds: Labels, target: np.ndarray, what: str) -> str:
    """A row per selector (boolean mask over the pool): rows, precision (share of its rows that are `target`),
    recall (share of `target` rows it selects), and the share of each kind's rows it selects."""
    order = kinds.order()
    totals = kinds.counts()
    rows = []
    for label, mask in selectors.items():
        n, hits, picked = int(mask.sum()), int((mask & target).sum()), kinds.counts(mask)
        rows.append([label, n, share(hits, n), share(hits, int(target.sum())),
                     *[share(picked[k], totals[k]) for k in order]])
    head = [what, "rows", "precision", "recall", *[f"{k} ({totals[k]:,}) {what}" for k in order]]
    return table(head, rows)


def _merged_drops(acc: pa.Table) -> dict[str, np.ndarray]:
    """Drop reason -> mask, over every subset's drop_<subset> column; a reason that drops the same rows in
    every subset is one row, else one row per subset."""
    columns = {c.removeprefix("drop_"): Labels.of(acc.column(c)) for c in acc.column_names if c.startswith("drop_")}
    by_reason: dict[str, dict[bytes, tuple[list[str], np.ndarray]]] = {}
    for subset, reasons in columns.items():
        for r in sorted(reasons.names):
            mask = reasons.mask(r)
            by_reason.setdefault(r, {}).setdefault(np.packbits(mask).tobytes(), ([], mask))[0].append(subset)
    out = {}
    for r, variants in by_reason.items():
        for names, mask in variants.values():
            out[r if len(names) == len(columns) else f"{r} ({', '.join(names[:4])}{'…' if len(names) > 4 else ''})"] = mask
    return out


def _download(run_dir: Path, gt: pa.Table) -> str:
    paths = list_parts(Path(run_dir) / "download")
    if not paths:
        return missing("download has not written parts.")
    t = read_columns(paths, [UID, STATUS])
    kinds, statuses = Labels.of(align(gt, t.column(UID))), Labels.of(t.column(STATUS))
    dropped = ~statuses.mask(Status.OK)
    grouped = kinds.grouped()
    body = [_rates({"not ok after download": dropped}, grouped, grouped.mask(BROKEN), "dropped"),
            note("precision: share of the rows the download dropped that were planted broken; recall: share of "
                 "planted broken rows it dropped.")]
    rows = []
    totals = kinds.counts()
    for k in kinds.order():
        mask = kinds.mask(k)
        found = sorted(((c, s) for s, c in statuses.counts(mask).items() if c), reverse=True)[:3]
        rows.append([k, totals[k], share(int((dropped & mask).sum()), totals[k]), ", ".join(f"{s} {c:,}" for c, s in found)])
    body.append(table(["gt kind", "rows", "not ok", "statuses"], rows))
    return "".join(body)


def _scores(view: ScoreView | None, gt: pa.Table) -> str:
    if view is None:
        return missing("No score columns yet.")
    kinds = Labels.of(align(gt, view.table.column(UID)))
    order = [k for k in kinds.order() if k != CLEAN and not k.startswith("broken_")]
    clean = kinds.mask(CLEAN)
    rows = []
    for col in view.score_cols:
        v = view.values(col)
        scored = np.isfinite(v)
        rows.append([col, *[f"{roc_auc(v[clean & scored], v[kinds.mask(k) & scored]):.3f}" for k in order]])
    body = [table(["score", *[f"AUC clean vs {k}" for k in order]], rows),
            note("ROC-AUC: the chance that a clean pair scores above a pair of that kind (scored rows only; 0.5 = "
                 "no separation).")]
    first = view.values(view.score_cols[0])
    by_kind = {k: first[kinds.mask(k)] for k in [CLEAN, *order]}
    body.append(img(plots.by_kind(view.score_cols[0], by_kind), f"{view.score_cols[0]} by ground-truth kind"))
    return "".join(body)


def _dedup(run_dir: Path, gt: pa.Table) -> str:
    """synthetic.quality's dedup_quality (the quality benchmark's figures), per picture."""
    if not (Path(run_dir) / "dedup" / "dup.parquet").exists():
        return missing("dedup has not run.")
    if "gt_dup_of" not in gt.column_names:
        return missing("the pool has no gt_dup_of column: no planted duplicates to check against.")
    pairs = pairs_root(run_dir)
    q = dedup_quality(run_dir, Path(run_dir) / "synth" / "pool.parquet", pairs if pairs and pairs.is_dir() else None)
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    return "".join([
        table(["pictures", "duplicate rows", "recall", "pictures lost", "precision"],
              [[f"{q['pictures']:,}", f"{q['duplicate_rows']:,}", pct(q["recall"]),
                f"{q['pictures_lost']:,} ({pct(q['pictures_lost_share'])})", pct(q["precision"])]]),
        table(["removed as", "rows", "precision"],
              [[reason, f"{v['dropped']:,}", pct(v["precision"])] for reason, v in q["by_reason"].items()]),
        table(["planted", "copies", "paired with their original", "recall"],
              [[edit, f"{v['copies']:,}", f"{v['paired']:,}", pct(v["recall"])] for edit, v in q["by_edit"].items()]),
        note("A picture is one distinct pixel array of the source images (a planted copy, exact or edited, is its "
             "original's picture). recall: duplicate rows (beyond the first of each picture) dropped for a row of the "
             "same picture; pictures lost: pictures with no kept row; precision: dropped rows whose kept row "
             "(dup_of) is the same picture. `python benchmarks/quality_dedup.py --run RUN_DIR` prints the same.")])


def _tiers(run_dir: Path, gt: pa.Table, view: ScoreView | None) -> str:
    if view is None or not view.has_tiers:
        return missing("the tier stage has not run.")
    kinds = Labels.of(align(gt, view.table.column(UID))).grouped()
    body = [_rates(view.members, kinds, kinds.mask(CLEAN), "kept"),
            note("precision: clean share of the subset; recall: share of the pool's clean rows it keeps.")]
    accounting = Path(run_dir) / "tier" / "accounting.parquet"
    if not accounting.exists():
        return "".join(body) + missing("tier/accounting.parquet is missing: no per-reason table.")
    acc = pq.read_table(accounting)
    acc_kinds = Labels.of(align(gt, acc.column(UID))).grouped()
    noisy = (acc_kinds.codes >= 0) & ~acc_kinds.mask(CLEAN)
    body.append("<h3>tier drops by first reason</h3>")
    body.append(_rates(_merged_drops(acc), acc_kinds, noisy, "dropped"))
    body.append(note("precision: share of the rows a reason dropped that carry planted noise of any kind; recall: "
                     "share of all noisy rows it dropped."))
    return "".join(body)


def render(run_dir: Path, gt: pa.Table | None, view: ScoreView | None) -> str:
    if gt is None:
        return missing("This pool has no ground truth (synth/pool.parquet with gt_noise): nothing to check against.")
    planted = Labels.of(gt.column("gt_noise")).counts()
    body = [note("Planted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(planted.items())))]
    for title, html in (("download", _download(run_dir, gt)), ("scores", _scores(view, gt)),
                        ("dedup", _dedup(run_dir, gt)), ("tiers", _tiers(run_dir, gt, view))):
        body.append(f"<h3>{esc(title)}</h3>{html}")
    return "".join(body)
