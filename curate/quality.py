"""Evaluation against ground truth (synthetic or --from-pairs pools). Not a stage: stages never read gt_*."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


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


def dedup_quality(run_dir: Path, pool_path: Path) -> dict:
    """Precision and recall of dedup/dup.parquet against the planted duplicates of a synthetic pool.

    A planted pair is (copy, original) for every `exact_duplicate` / `near_duplicate` row. Recall: the
    pair ended in one dup_group. Precision, per reason, of the rows dedup dropped for it: `precision`, the
    share whose `dup_of` (the kept row) is of the same planted family (the original and its copies), so the
    picture survives; `link_precision`, the share whose `dup_linked_to` (the pair that found it) is, which
    does not count a right link whose group other links merged with another family. Caption reasons are
    also broken down by the noise kind of the dropped row: boilerplate captions are duplicates by design."""
    pool = pq.read_table(pool_path, columns=["uid", "gt_noise", "gt_dup_of"]).to_pylist()
    noise = {r["uid"]: r["gt_noise"] for r in pool}
    family = {r["uid"]: r["gt_dup_of"] or r["uid"] for r in pool}
    dup = {r["uid"]: r for r in pq.read_table(Path(run_dir) / "dedup" / "dup.parquet").to_pylist()}
    result: dict = {}
    def scored(uid: str) -> bool:
        return dup.get(uid, {}).get("dup_keep") is not None

    for kind in ("exact_duplicate", "near_duplicate"):
        pairs = [(r["uid"], r["gt_dup_of"]) for r in pool
                 if r["gt_noise"] == kind and scored(r["uid"]) and scored(r["gt_dup_of"])]
        found = sum(1 for a, b in pairs if dup[a]["dup_group"] is not None and dup[a]["dup_group"] == dup[b]["dup_group"])
        result[kind] = {"planted_pairs": len(pairs), "found": found, "recall": round(found / max(len(pairs), 1), 4)}
    for reasons, name in ((("exact_image", "exact_pair"), "exact"), (("near_image",), "near_image"),
                          (("near_caption",), "near_caption")):
        dropped = [r for r in dup.values() if r["dup_keep"] is False and r["dup_reason"] in reasons]
        right = sum(1 for r in dropped if family.get(r["uid"]) == family.get(r["dup_of"]))
        linked_right = sum(1 for r in dropped if family.get(r["uid"]) == family.get(r.get("dup_linked_to")))
        by_noise: dict[str, int] = {}
        for r in dropped:
            by_noise[noise.get(r["uid"], "?")] = by_noise.get(noise.get(r["uid"], "?"), 0) + 1
        result[name] = {"dropped": len(dropped), "same_family": right,
                        "precision": round(right / max(len(dropped), 1), 4),
                        "link_precision": round(linked_right / max(len(dropped), 1), 4), "dropped_by_noise": by_noise}
    return result


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
    for reason in ("exact_image", "exact_pair", "near_caption", "near_image"):
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
