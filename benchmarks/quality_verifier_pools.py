"""Copy verifier weights and bars judged on finished pools, without rerunning dedup:

    python benchmarks/quality_verifier_pools.py --run runs/dedup-emoji --run runs/demo-new \\
        --weights curate/dedup/copy_verifier.pt --weights my.pt --bar 0.99 --bar 0.985 [--colour-max 40]

Per run, once (kept in `<run>/dedup/verifier_pairs-<key>.npz`): the candidate pairs dedup's image task proposes
(SemDeDup on the embeddings and the copy search on the pixels, under the run's own dedup config), aligned, with
their shape correlation and colour gap. Then per weights and bar: the verifier's verdicts, dedup's keep/drop
decision (curate.dedup.pictures.decide, rows preferred by the keep score) and `quality_dedup.py`'s figures per pool
(recall, pictures lost, precision, recall by edit). The verifier is asked about the pairs past the shape bar and
the colour guard, as in the stage, and the pool is one partition (the runs of `configs/dedup/*.yaml` and the demo
are), so the figures are the stage's own (the same on the emoji and demo pools, within 2 pictures on the icons pool,
where batches of other sizes move a few probabilities at the bar) when the run's dedup turns no pair back
(`dedup.image_rotations: []`, the default); with rotations set the stage finds some rotated copies these figures miss
(pairs are judged at their own angle here). About 70 s a weights file for the three pools
here once the pairs are kept, against 17 min for a dedup run of the icons pool. `ratio`: quality_dedup's headline
(the smallest of recall, precision and 1 - 5 x the lost share over the pools) of the first weights at the first
bar.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402

COLUMNS = ["uid", "status", "shard", "key", "width", "height", "sha256", "caption_hash", "image_embedding"]


def run_config(run: Path):
    import yaml

    from curate.dedup.dedup import DedupConfig

    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text()) or {}
    cfg = DedupConfig(**(resolved.get("dedup") or {}))
    if cfg.image_match_min is None or cfg.keep != "score":
        raise SystemExit(f"{run}: needs a run whose dedup has the pixel check on and keep: score")
    return cfg


def load_rows(run: Path, cfg):
    """The run's scored (`ok`) rows with what dedup reads, and the name of the keep score."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.dedup.dedup import keep_column

    parts = sorted((run / "score").glob("part-*.parquet"))
    keep = keep_column(parts, cfg.keep_score)
    table = pa.concat_tables([pq.read_table(p, columns=COLUMNS + ([keep] if keep else [])) for p in parts])
    return table.filter(pc.equal(table.column("status"), "ok")), keep


def aligned_candidates(store, table, cfg) -> dict:
    """Every candidate pair of the image task, aligned once: first, second, their similarity (SemDeDup's cosine,
    1 for identical embeddings), the shape correlation (-2 below the coarse slack), the colour gap, and the
    alignment (mine, other, cuts)."""
    import torch

    from curate.dedup.copy_search import copy_candidates
    from curate.dedup.image_match import CHUNK_PAIRS, align, colour_gap, resample
    from curate.dedup.semdedup import embedding_matrix, near_duplicate_images

    vectors = embedding_matrix(table.column("image_embedding"))
    semdedup, _ = near_duplicate_images(vectors, cfg.image_eps, cfg.cluster_size)
    a, b = copy_candidates(store, table.num_rows, cfg.copy_search_k) if cfg.copy_search_k else ([], [])
    found = np.array([p[:2] for p in semdedup] + list(zip(a, b)), np.int64).reshape(-1, 2)
    first, second = np.unique(found, axis=0).T
    cosine = np.nan_to_num(np.einsum("ij,ij->i", vectors[first], vectors[second])).astype(np.float32)
    n = table.num_rows
    at = np.searchsorted(first * n + second, [i * n + j for i, j, _ in semdedup]).astype(np.int64)
    cosine[at] = [sim for _, _, sim in semdedup]
    thumbs = store.get(np.arange(n))
    close, sims, mine, other, cuts = align(thumbs, first, second, cfg.image_match_min, store.log_aspect)
    out = {"first": first, "second": second, "shape": np.full(len(first), -2.0, np.float32),
           "colour": np.full(len(first), np.inf, np.float32), "mine": np.full(len(first), -1),
           "other": np.full(len(first), -1), "cuts": np.zeros((len(first), 4), np.float32), "cosine": cosine}
    rgb32 = resample(torch.from_numpy(np.ascontiguousarray(thumbs)).float().permute(0, 3, 1, 2), 32)
    gaps = [colour_gap(rgb32, mine[lo:lo + CHUNK_PAIRS], other[lo:lo + CHUNK_PAIRS], cuts[lo:lo + CHUNK_PAIRS])
            for lo in range(0, len(close), CHUNK_PAIRS)]
    out["shape"][close], out["mine"][close], out["other"][close] = sims.numpy(), mine.numpy(), other.numpy()
    out["cuts"][close] = cuts.numpy()
    out["colour"][close] = torch.cat(gaps).numpy() if gaps else []
    return out


def cached_candidates(run: Path, store, table, cfg) -> dict:
    parts = sorted((run / "score").glob("part-*.parquet")) + sorted((run / "download").glob("part-*.parquet"))
    key = hashlib.sha256(repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parts]).encode()
                         + cfg.model_dump_json().encode()).hexdigest()[:16]
    path = run / "dedup" / f"verifier_pairs-{key}.npz"
    if path.exists():
        return dict(np.load(path))
    values = aligned_candidates(store, table, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **values)
    return values


def verifier_probabilities(thumbs: np.ndarray, pairs: dict, weights: Path, asked: np.ndarray) -> np.ndarray:
    """The verifier's probability (curate.dedup.copy_verifier.Verifier.probabilities) of each `asked` pair, else 0."""
    import torch

    from curate.dedup.copy_verifier import Verifier
    from curate.dedup.image_match import CHUNK_PAIRS

    verifier, ask = Verifier(0.5, weights), np.flatnonzero(asked)  # its bar is not used: the bars are ours
    prob = np.zeros(len(pairs["first"]), np.float32)
    for lo in range(0, len(ask), CHUNK_PAIRS):
        part = ask[lo:lo + CHUNK_PAIRS]
        mine, other, cuts = (torch.as_tensor(pairs[k][part]) for k in ("mine", "other", "cuts"))
        prob[part] = verifier.probabilities(thumbs, mine, other, cuts)
    return prob


def ground_truth(run: Path):
    """The run's pool (with its gt_* columns) and each uid's picture, read once per run."""
    import pyarrow.parquet as pq

    from curate.synthetic.quality import pairs_root, picture_ids

    pool = pq.read_table(run / "synth" / "pool.parquet")
    return pool, picture_ids(pool, pairs_root(run))


def pool_figures(truth, table, keep: str | None, pairs: dict, accepted: np.ndarray) -> dict:
    from curate.dedup.pictures import Links, decide
    from curate.synthetic.quality import decisions_quality

    uid = table.column("uid").to_pylist()
    preference = (np.nan_to_num(table.column(keep).to_numpy(zero_copy_only=False).astype(float), nan=-np.inf)
                  if keep else np.zeros(len(uid)))
    links = Links(pairs["first"][accepted], pairs["second"][accepted], pairs["cosine"][accepted],
                  pairs["shape"][accepted])
    d = decide(table.column("sha256").to_pylist(), table.column("caption_hash").to_pylist(), links,
               np.lexsort((np.array(uid), -preference)))
    dup = {u: {"uid": u, "dup_keep": bool(d.kept_for[k] == k), "dup_reason": d.reason[k],
               "dup_of": uid[d.kept_for[k]] if d.kept_for[k] != k else None} for k, u in enumerate(uid)}
    q = decisions_quality(dup, *truth)
    return {k: q[k] for k in ("pictures", "duplicate_rows", "recall", "pictures_lost", "pictures_lost_share",
                              "precision")} | {"recall_by_edit": {e: c["recall"] for e, c in q["by_edit"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", required=True, help="a finished pool run (repeat)")
    parser.add_argument("--weights", type=Path, action="append", help="verifier weights (repeat; default shipped)")
    parser.add_argument("--bar", type=float, action="append", help="verifier bars (repeat; default the run's)")
    parser.add_argument("--colour-max", type=float, action="append",
                        help="colour guards, levels (repeat; default the run's dedup.image_colour_max)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from curate.dedup import VERIFIER_WEIGHTS
    from curate.dedup.image_match import ThumbnailStore

    weights = args.weights or [VERIFIER_WEIGHTS]
    results: dict[str, dict] = {}
    for run in args.run:
        cfg = run_config(run)
        table, keep = load_rows(run, cfg)
        store = ThumbnailStore(table, run / "download")
        pairs = cached_candidates(run, store, table, cfg)
        thumbs, truth = store.get(np.arange(table.num_rows)), ground_truth(run)
        guards = args.colour_max or [cfg.image_colour_max if cfg.image_colour_max is not None else np.inf]
        shaped = pairs["shape"] >= cfg.image_match_min
        for w in weights:
            prob = verifier_probabilities(thumbs, pairs, w, shaped & (pairs["colour"] <= max(guards)))
            for guard in guards:  # as the stage: the verifier decides the pairs past shape and colour
                passed = shaped & (pairs["colour"] <= guard)
                for bar in args.bar or [cfg.image_verifier_min or 0.0]:  # 0: the run has no verifier
                    figures = pool_figures(truth, table, keep, pairs, passed & (prob >= bar))
                    name = f"{w.name} @ {bar}" + (f" colour {guard}" if args.colour_max else "")
                    results.setdefault(name, {})[run.name] = figures
    headline = {name: round(min(min(q["recall"], q["precision"], 1 - 5 * q["pictures_lost_share"])
                                for q in pools.values()), 4) for name, pools in results.items()}
    emit({"ratio": next(iter(headline.values())), "headline": headline, "results": results}, args.out,
         "quality_verifier_pools")


if __name__ == "__main__":
    main()
