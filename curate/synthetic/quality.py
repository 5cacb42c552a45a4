"""Evaluation against ground truth (synthetic or --from-pairs pools). Not a stage: stages never read gt_*."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from curate.schema import DUP_REASONS
from curate.synthetic.synth import CAPTION_NOISE


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def score_auc(run_dir: Path, pool_path: Path, noise_kinds=("mismatched_caption", "boilerplate_caption",
                                                            "partial_caption")) -> dict:
    """ROC-AUC of every score column for clean pairs against each caption-noise kind (scored rows only)."""
    run_dir = Path(run_dir)
    pool = pq.read_table(pool_path, columns=["uid", "gt_noise"]).to_pandas().set_index("uid")["gt_noise"]
    parts = sorted((run_dir / "score").glob("part-*.parquet"))
    names = [c for c in pq.read_schema(parts[0]).names if c.startswith("score_")]
    table = pa.concat_tables([pq.read_table(p, columns=["uid", *names]) for p in parts]).to_pandas()
    table["gt_noise"] = table["uid"].map(pool)
    result = {}
    for name in names:
        scored = table[table[name].notna()]
        clean = scored.loc[scored.gt_noise == "clean", name].to_numpy()
        result[name] = {kind: round(roc_auc(clean, scored.loc[scored.gt_noise == kind, name].to_numpy()), 4)
                        for kind in noise_kinds}
        result[name]["clean_rows"] = int(len(clean))
    return result


def picture_ids(pool: pa.Table, pairs_root: Path | None = None) -> dict[str, str]:
    """uid -> picture: one id per distinct pixel array of the source images (a pairs pool: aliases and identical
    renderings are one picture), else per planted family (a drawn pool: a copy is its original's picture).
    A planted copy, exact or edited, is always its original's picture."""
    rows = pool.select(["uid", "gt_dup_of"] + (["src_key"] if pairs_root else [])).to_pylist()
    family = {r["uid"]: r["gt_dup_of"] or r["uid"] for r in rows}
    if pairs_root is None:
        return family
    pairs = pq.read_table(Path(pairs_root) / "pairs.parquet", columns=["key", "path"]).to_pydict()
    path_of = dict(zip(pairs["key"], pairs["path"]))
    pixels: dict[str, str] = {}

    def picture(key: str) -> str:
        path = path_of[key]
        if path not in pixels:
            with Image.open(Path(pairs_root) / path) as im:
                pixels[path] = hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()
        return pixels[path]

    by_uid = {r["uid"]: r for r in rows}
    return {uid: picture(by_uid[root]["src_key"]) for uid, root in family.items()}


def filter_quality(run_dir: Path, pool_path: Path, noise_kinds=CAPTION_NOISE) -> dict:
    """How well each score and each tier separates clean pairs from caption noise, on the rows dedup kept
    (scored and `dup_keep`; every row when the run has no dedup).

    Per score column: ROC-AUC of clean against each noise kind, and the clean share at the oracle's size (the
    top N kept rows by the score, N = the clean kept rows: 1.0 for a perfect score). Per tier subset: rows,
    clean share and rows per ground-truth kind."""
    run_dir = Path(run_dir)
    noise = dict(zip(*pq.read_table(pool_path, columns=["uid", "gt_noise"]).to_pydict().values()))
    parts = sorted((run_dir / "score").glob("part-*.parquet"))
    names = [c for c in pq.read_schema(parts[0]).names if c.startswith("score_")]
    table = pa.concat_tables([pq.read_table(p, columns=["uid", "status", *names]) for p in parts]).to_pandas()
    table = table[table.status == "ok"]
    dup_path = run_dir / "dedup" / "dup.parquet"
    if dup_path.exists():
        kept = {u for u, k in zip(*pq.read_table(dup_path, columns=["uid", "dup_keep"]).to_pydict().values()) if k}
        table = table[table.uid.isin(kept)]
    kind = table.uid.map(noise).to_numpy()
    clean = kind == "clean"
    scores = {}
    for name in names:
        values = table[name].to_numpy(dtype=float)
        top = np.argsort(-values, kind="stable")[:int(clean.sum())]
        scores[name] = {**{k: round(roc_auc(values[clean], values[kind == k]), 4) for k in noise_kinds},
                        "clean_share_at_oracle_size": _share(int(clean[top].sum()), len(top))}
    subsets = {}
    for path in sorted((run_dir / "tier" / "subsets").glob("*.parquet")):
        kinds = [noise.get(u) for u in pq.read_table(path, columns=["uid"]).column("uid").to_pylist()]
        counts = {k: kinds.count(k) for k in sorted(set(kinds), key=str)}
        subsets[path.stem] = {"rows": len(kinds), "clean_share": _share(counts.get("clean", 0), len(kinds)),
                              "by_noise": counts}
    return {"kept_rows": int(len(table)), "oracle_rows": int(clean.sum()), "scores": scores, "subsets": subsets}


def pairs_root(run_dir: Path) -> Path | None:
    """The pairs directory a run's pool was made from (config.resolved.yaml's synth.from_pairs), if any."""
    config_path = Path(run_dir) / "config.resolved.yaml"
    if not config_path.exists():
        return None
    source = ((yaml.safe_load(config_path.read_text()) or {}).get("synth") or {}).get("from_pairs")
    return Path(source) if source else None


def dedup_quality(run_dir: Path, pool_path: Path, pairs_root: Path | None = None) -> dict:
    """dedup/dup.parquet against the pictures of a pool with ground truth (rows dedup saw: `ok` ones).

    pictures: distinct pictures; duplicate_rows: rows beyond the first of each picture; recall: of those, the
    share dropped in favour of a row of the same picture; pictures_lost: pictures with no kept row; precision:
    dropped rows whose kept row (`dup_of`) is the same picture, overall and per reason; by_edit: per planted
    edit kind, the share of copies that dedup paired with their original (one dropped for the other)."""
    pool = pq.read_table(pool_path)
    dup = {r["uid"]: r for r in pq.read_table(Path(run_dir) / "dedup" / "dup.parquet").to_pylist()
           if r["dup_keep"] is not None}
    return decisions_quality(dup, pool, picture_ids(pool, pairs_root))


def decisions_quality(dup: dict[str, dict], pool: pa.Table, picture: dict[str, str]) -> dict:
    """`dedup_quality`'s figures for decisions `dup` (uid -> dup_keep, dup_of, dup_reason of each row dedup saw)
    on `pool` (with its gt_* columns), whose rows are the pictures `picture` (uid -> picture id)."""
    rows_of: dict[str, list[dict]] = {}
    for uid, r in dup.items():
        rows_of.setdefault(picture[uid], []).append(r)
    duplicate_rows = sum(len(rs) - 1 for rs in rows_of.values())
    found = sum(min(len(rs) - 1, sum(1 for r in rs if r["dup_keep"] is False and picture.get(r["dup_of"]) == pic))
                for pic, rs in rows_of.items())
    lost = sum(1 for rs in rows_of.values() if not any(r["dup_keep"] for r in rs))
    dropped = [r for r in dup.values() if r["dup_keep"] is False]
    right = {r["uid"] for r in dropped if picture[r["uid"]] == picture.get(r["dup_of"])}
    by_reason = {}
    for reason in sorted({r["dup_reason"] for r in dropped}):
        of = [r for r in dropped if r["dup_reason"] == reason]
        by_reason[reason] = {"dropped": len(of), "precision": _share(sum(1 for r in of if r["uid"] in right), len(of))}
    by_edit: dict[str, dict] = {}
    columns = ["uid", "gt_dup_of", "gt_noise"] + (["gt_edit"] if "gt_edit" in pool.column_names else [])
    for r in pool.select(columns).to_pylist():
        copy, original = dup.get(r["uid"]), dup.get(r["gt_dup_of"] or "")
        if copy is None or original is None:
            continue
        edit = r.get("gt_edit") or ("exact" if r["gt_noise"] == "exact_duplicate" else r["gt_noise"])
        paired = copy["dup_of"] == original["uid"] or original["dup_of"] == copy["uid"] or (
            copy["dup_of"] is not None and copy["dup_of"] == original["dup_of"])
        counts = by_edit.setdefault(edit, {"copies": 0, "paired": 0})
        counts["copies"], counts["paired"] = counts["copies"] + 1, counts["paired"] + int(paired)
    for counts in by_edit.values():
        counts["recall"] = _share(counts["paired"], counts["copies"])
    return {"rows": len(dup), "pictures": len(rows_of), "duplicate_rows": duplicate_rows, "dropped": len(dropped),
            "recall": _share(found, duplicate_rows), "pictures_lost": lost,
            "pictures_lost_share": round(lost / max(len(rows_of), 1), 4),
            "precision": _share(len(right), len(dropped)), "by_reason": by_reason, "by_edit": dict(sorted(by_edit.items()))}


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 1.0


def natural_structure(run_dir: Path, pool_path: Path, pairs_path: Path, family_column: str = "base_hexcode") -> dict:
    """What dedup did to a --from-pairs pool's own structure (e.g. the emoji's skin-tone variants, which
    share `base_hexcode`). Per drop reason: dropped rows whose kept member is the same source pair (a
    planted copy), another member of its family (e.g. a skin-tone sibling), or something else. Family
    recall: of the pairs of distinct source pairs of one family (originals only, both scored), the share
    that dedup put in one group."""
    pool = pq.read_table(pool_path, columns=["uid", "src_key", "gt_noise"]).to_pylist()
    family_of_key = dict(zip(*pq.read_table(pairs_path, columns=["key", family_column]).to_pydict().values()))
    source = {r["uid"]: r["src_key"] for r in pool}
    dup = {r["uid"]: r for r in pq.read_table(Path(run_dir) / "dedup" / "dup.parquet").to_pylist()}
    result: dict = {}
    for reason in DUP_REASONS:
        counts = {"same_source": 0, "same_family": 0, "other": 0}
        for r in dup.values():
            if r["dup_keep"] is False and r["dup_reason"] == reason:
                a, b = source.get(r["uid"]), source.get(r["dup_of"])
                kind = "same_source" if a == b else "same_family" if family_of_key.get(a) == family_of_key.get(b) else "other"
                counts[kind] += 1
        result[reason] = counts
    members: dict = {}
    for r in pool:
        if r["gt_noise"] not in ("exact_duplicate", "near_duplicate") and dup.get(r["uid"], {}).get("dup_keep") is not None:
            members.setdefault(family_of_key.get(r["src_key"]), []).append(r["uid"])
    pairs = [(a, b) for uids in members.values() for i, a in enumerate(uids) for b in uids[i + 1:]]
    found = sum(1 for a, b in pairs if dup[a]["dup_group"] is not None and dup[a]["dup_group"] == dup[b]["dup_group"])
    result["family_pairs"] = {"pairs": len(pairs), "in_one_group": found, "recall": round(found / max(len(pairs), 1), 4)}
    return result
