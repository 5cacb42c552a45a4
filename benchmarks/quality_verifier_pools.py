"""Copy verifier weights and bars judged on finished pools, without rerunning dedup:

    python benchmarks/quality_verifier_pools.py --run runs/dedup-emoji --run runs/demo-new \\
        --weights curate/dedup/copy_verifier.pt --weights my.pt --bar 0.99 --bar 0.985 [--colour-max 40]

Per run, once (kept in `<run>/dedup/verifier_pairs-<key>.npz`): the candidate pairs dedup's image task proposes
(SemDeDup on the embeddings and the copy search on the pixels, under the run's own dedup config), aligned, with
their shape correlation and colour gap. Then per weights and bar: the verifier's verdicts, dedup's keep/drop
decision (curate.dedup.pictures.decide, rows preferred by the keep score) and `quality_dedup.py`'s figures per pool
(recall, pictures lost, precision, recall by edit). The verifier is asked about the pairs past the shape bar and
the colour guard, as in the stage (pairs of one rare size, `dedup.image_rare_size_rows`, held to the lower of the
bar and curate.dedup.rare_sizes.RARE_SIZE_VERIFIER_MIN; lone pairs, curate.dedup.lone_pairs, at the run's
`dedup.image_lone_pair_verifier_min`), and the pool is one partition (the runs of
`configs/dedup/*.yaml` and the demo are), so the figures are the stage's own (the same on the emoji and demo
pools, within 2 pictures on the icons pool, where batches of other sizes move a few probabilities at the bar).
With `--rotations` (default the run's `dedup.image_rotations`) the pairs that fail come back turned, as in the
stage's `pixel_match`: the pairs within ROTATION_SLACK of the shape bar are aligned again with the first image
turned by each angle and its opposite (kept too), and a turned pair counts where it passes every test and
`image_match.turn_counts` (`--rotation-mirror`: its share; the stage's ROTATION_MIRROR by default). About 70 s a
weights file for the three pools here once the pairs are kept, against 17 min for a dedup run of the icons pool;
turns `[4, -4]` add the verifier on the turned pairs (12 min for the three pools). `ratio`: quality_dedup's
headline (the smallest of recall, precision and 1 - 5 x the lost share over the pools) of the first weights at the
first bar.
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
    1 for identical embeddings) and `aligned_pairs`' values."""
    from curate.dedup.copy_search import copy_candidates
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
    return aligned_pairs(thumbs, first, second, store.log_aspect, cfg.image_match_min) | {"cosine": cosine}


def aligned_pairs(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, log_aspect, minimum: float) -> dict:
    """Each pair (thumbs[first[p]], thumbs[second[p]]) aligned as the stage does: the shape correlation (-2 below
    the coarse slack), the colour gap, and the alignment (mine, other, cuts)."""
    import torch

    from curate.dedup.image_match import CHUNK_PAIRS, align, colour_gap, resample

    close, sims, mine, other, cuts = align(thumbs, first, second, minimum, log_aspect)
    out = {"first": first, "second": second, "shape": np.full(len(first), -2.0, np.float32),
           "colour": np.full(len(first), np.inf, np.float32), "mine": np.full(len(first), -1),
           "other": np.full(len(first), -1), "cuts": np.zeros((len(first), 4), np.float32)}
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
        return dict(np.load(path)) | {"key": key}
    values = aligned_candidates(store, table, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **values)
    return values | {"key": key}


def turned_candidates(run: Path, thumbs: np.ndarray, log_aspect: np.ndarray, pairs: dict, cfg,
                      degrees: float) -> dict:
    """The candidate pairs a turn could rescue (`index`: shape within ROTATION_SLACK of the bar) aligned again with
    the first image turned back by `degrees`: `aligned_pairs`' values, where mine and other index
    `turned_thumbs(..., rows)`. Kept beside the unturned pairs."""
    from curate.dedup.image_match import ROTATION_SLACK

    path = run / "dedup" / f"verifier_pairs-{pairs['key']}-turned{degrees:g}.npz"
    if path.exists():
        return dict(np.load(path))
    index = np.flatnonzero(pairs["shape"] >= cfg.image_match_min - ROTATION_SLACK)
    rows = np.unique(pairs["first"][index])
    first, second = np.searchsorted(rows, pairs["first"][index]), len(rows) + pairs["second"][index]
    turned = turned_thumbs(thumbs, log_aspect, rows, degrees)
    values = aligned_pairs(turned, first, second, np.concatenate([log_aspect[rows], log_aspect]),
                           cfg.image_match_min) | {"index": index, "rows": rows}
    np.savez(path, **values)
    return values


def turned_thumbs(thumbs: np.ndarray, log_aspect: np.ndarray, rows: np.ndarray, degrees: float) -> np.ndarray:
    """`rows`' thumbnails turned by `degrees`, then every thumbnail unturned: what turned pairs index."""
    from curate.dedup.image_match import rotate

    return np.concatenate([rotate(thumbs[rows], log_aspect[rows], degrees), thumbs])


def lenient_pairs(table, store, pairs: dict, cfg) -> np.ndarray:
    """Per candidate pair, as the stage: of one rare size (curate.dedup.rare_sizes), counted over the run's scored
    rows, with no third picture of that size like either (curate.dedup.images.SameRareSize)."""
    from curate.dedup.images import SameRareSize
    from curate.dedup.rare_sizes import rare_sizes, size_keys

    if not cfg.image_rare_size_rows:
        return np.zeros(len(pairs["first"]), bool)
    keys = size_keys(table)
    rare = rare_sizes([np.unique(keys[keys >= 0], return_counts=True)], cfg.image_rare_size_rows)
    same_size = SameRareSize(table, store, rare, cfg.image_match_min, cfg.image_colour_max)
    return same_size.lenient(pairs["first"], pairs["second"])


def link_strengths(pairs: dict, prob: np.ndarray, turned: dict, cfg, guard: float, bar: float,
                   rotations: tuple[float, ...], share: float, lenient: np.ndarray) -> np.ndarray:
    """Per candidate pair, as the stage's `pixel_match`: the aligned shape where it passes every test (the
    `lenient` pairs: the verifier at RARE_SIZE_VERIFIER_MIN or `bar`, the lower), else the best shape of the turns
    (`turned[degrees]` = (pairs, probabilities)) that pass and count (`image_match.turn_counts` with `share`);
    -inf where nothing passes."""
    from curate.dedup.image_match import turn_counts
    from curate.dedup.rare_sizes import RARE_SIZE_VERIFIER_MIN

    bars = np.where(lenient, min(RARE_SIZE_VERIFIER_MIN, bar), bar)

    def passing(d: dict, p: np.ndarray, at=slice(None)) -> np.ndarray:
        return (d["shape"] >= cfg.image_match_min) & (d["colour"] <= guard) & (p >= bars[at])

    strength = np.where(passing(pairs, prob), pairs["shape"], -np.inf).astype(np.float32)
    failed = ~np.isfinite(strength)
    for degrees in rotations:
        (t, p), mirror = turned[degrees], turned[-degrees][0]["shape"]
        rescued = (passing(t, p, t["index"]) & turn_counts(pairs["shape"][t["index"]], t["shape"], mirror, share)
                   & failed[t["index"]])
        at = t["index"][rescued]
        strength[at] = np.maximum(strength[at], t["shape"][rescued])
    return strength


def with_lone_pairs(thumbs: np.ndarray, log_aspect: np.ndarray, pairs: dict, prob: np.ndarray,
                    strength: np.ndarray, cfg, guard: float) -> np.ndarray:
    """`link_strengths` with the lone pairs (curate.dedup.lone_pairs, at the run's
    `dedup.image_lone_pair_verifier_min`) passing at their aligned shape, as the stage decides them."""
    from curate.dedup.image_match import Verdicts, pixel_match
    from curate.dedup.lone_pairs import LonePairs

    if cfg.image_lone_pair_verifier_min is None:
        return strength
    first, second, shape = pairs["first"], pairs["second"], pairs["shape"]
    alike = (shape >= cfg.image_match_min) & (pairs["colour"] <= guard)
    passed = np.isfinite(strength)
    lone = LonePairs(cfg.image_lone_pair_verifier_min)
    lone.record(np.arange(len(thumbs)), thumbs, first, second,
                Verdicts(np.where(passed, strength, -1.0), shape, alike, np.where(alike, prob, np.nan)))

    def third_alike(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        rows = np.unique(np.concatenate([a, b]))
        return pixel_match(thumbs[rows], np.searchsorted(rows, a), np.searchsorted(rows, b), cfg.image_match_min,
                           guard, None, log_aspect[rows]) >= cfg.image_match_min

    a, b, _ = lone.found(set(zip(first[passed].tolist(), second[passed].tolist())), third_alike)
    at = {(min(i, j), max(i, j)): k for k, (i, j) in enumerate(zip(first.tolist(), second.tolist()))}
    index = np.array([at[pair] for pair in zip(a.tolist(), b.tolist())], np.int64)
    strength = strength.copy()
    strength[index] = shape[index]
    return strength


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


def pool_figures(truth, table, keep: str | None, pairs: dict, strength: np.ndarray) -> dict:
    """quality_dedup's figures of dedup's decision on the links that passed (finite `strength`)."""
    from curate.dedup.pictures import Links, decide
    from curate.synthetic.quality import decisions_quality

    uid = table.column("uid").to_pylist()
    preference = (np.nan_to_num(table.column(keep).to_numpy(zero_copy_only=False).astype(float), nan=-np.inf)
                  if keep else np.zeros(len(uid)))
    accepted = np.isfinite(strength)
    links = Links(pairs["first"][accepted], pairs["second"][accepted], pairs["cosine"][accepted], strength[accepted])
    d = decide(table.column("sha256").to_pylist(), table.column("caption_hash").to_pylist(), links,
               np.lexsort((np.array(uid), -preference)))
    dup = {u: {"uid": u, "dup_keep": bool(d.kept_for[k] == k), "dup_reason": d.reason[k],
               "dup_of": uid[d.kept_for[k]] if d.kept_for[k] != k else None} for k, u in enumerate(uid)}
    q = decisions_quality(dup, *truth)
    return {k: q[k] for k in ("pictures", "duplicate_rows", "recall", "pictures_lost", "pictures_lost_share",
                              "precision")} | {"recall_by_edit": {e: c["recall"] for e, c in q["by_edit"].items()}}


def angles(text: str) -> tuple[float, ...]:
    """'4,-4' -> (4.0, -4.0); '' -> () (no turns)."""
    return tuple(float(a) for a in text.split(",") if a.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", required=True, help="a finished pool run (repeat)")
    parser.add_argument("--weights", type=Path, action="append", help="verifier weights (repeat; default shipped)")
    parser.add_argument("--bar", type=float, action="append", help="verifier bars (repeat; default the run's)")
    parser.add_argument("--colour-max", type=float, action="append",
                        help="colour guards, levels (repeat; default the run's dedup.image_colour_max)")
    parser.add_argument("--rotations", type=angles, action="append",
                        help="angles a failing pair is turned back by, e.g. 4,-4 or '' for none (repeat; default "
                             "the run's dedup.image_rotations)")
    parser.add_argument("--rotation-mirror", type=float, action="append",
                        help="a turn counts where its mismatch is at most this share of the opposite turn's "
                             "(repeat; default the stage's ROTATION_MIRROR)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from curate.dedup import VERIFIER_WEIGHTS
    from curate.dedup.image_match import ROTATION_MIRROR, ThumbnailStore

    weights = args.weights or [VERIFIER_WEIGHTS]
    results: dict[str, dict] = {}
    for run in args.run:
        cfg = run_config(run)
        table, keep = load_rows(run, cfg)
        store = ThumbnailStore(table, run / "download")
        pairs = cached_candidates(run, store, table, cfg)
        thumbs, truth = store.get(np.arange(table.num_rows)), ground_truth(run)
        lenient = lenient_pairs(table, store, pairs, cfg)
        guards = args.colour_max or [cfg.image_colour_max if cfg.image_colour_max is not None else np.inf]
        turn_sets = args.rotations or [tuple(cfg.image_rotations)]
        turned = {deg: turned_candidates(run, thumbs, store.log_aspect, pairs, cfg, deg)
                  for deg in sorted({s * deg for turns in turn_sets for deg in turns for s in (1, -1)})}
        for w in weights:  # as the stage: the verifier decides the pairs past shape and colour
            prob = verifier_probabilities(thumbs, pairs, w, (pairs["shape"] >= cfg.image_match_min)
                                          & (pairs["colour"] <= max(guards)))
            turned_prob = {deg: (t, verifier_probabilities(
                turned_thumbs(thumbs, store.log_aspect, t["rows"], deg), t, w,
                (t["shape"] >= cfg.image_match_min) & (t["colour"] <= max(guards))
                & (t["shape"] > pairs["shape"][t["index"]]))) for deg, t in turned.items()}  # turn_counts needs it
            for guard in guards:
                for bar in args.bar or [cfg.image_verifier_min or 0.0]:  # 0: the run has no verifier
                    for turns in turn_sets:
                        for share in args.rotation_mirror or [ROTATION_MIRROR]:
                            strength = with_lone_pairs(thumbs, store.log_aspect, pairs, prob, link_strengths(
                                pairs, prob, turned_prob, cfg, guard, bar, turns, share, lenient), cfg, guard)
                            name = (f"{w.name} @ {bar}" + (f" colour {guard}" if args.colour_max else "")
                                    + (f" turned {list(turns)}" if args.rotations else "")
                                    + (f" mirror {share}" if args.rotation_mirror else ""))
                            results.setdefault(name, {})[run.name] = pool_figures(truth, table, keep, pairs,
                                                                                  strength)
    headline = {name: round(min(min(q["recall"], q["precision"], 1 - 5 * q["pictures_lost_share"])
                                for q in pools.values()), 4) for name, pools in results.items()}
    emit({"ratio": next(iter(headline.values())), "headline": headline, "results": results}, args.out,
         "quality_verifier_pools")


if __name__ == "__main__":
    main()
