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
