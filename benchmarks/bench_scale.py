"""Dedup and tier at web scale: synthetic score tables of 1M, 3M and 10M rows on a local Ray.

    python benchmarks/bench_scale.py [--sizes 1000000 3000000 10000000] [--work /tmp/bench_scale]
                                     [--baseline-rows 1000000] [--out benchmarks/results]

Each pool is a run directory of score parts (100k rows each: uid, status, caption, sha256, caption_hash, a 256-d
float16 `image_embedding` drawn around 2,000 topics, `score_clip`), with 1% planted copies of a row of the
same 100k block: a third exact (same bytes and caption), a third near (the embedding moved to cosine ~0.98-0.998,
same caption), a third near with one caption word changed. Per size it runs the dedup stage (the default config
without the pixel check, which needs images) and the tier stage (dedup_keep, caption_dup_count <= 4,
caption_group_best, the five standard fractions) under Ray, and prints: wall time per stage and per dedup phase,
the peak RSS of the largest process (the driver and every Ray worker, sampled every 0.5 s), and recall: of the
pairs a brute force finds at cosine >= 1 - eps or the same bytes among the first block's 100k rows, the share
dedup put in one group. At the smallest size it also times SemDeDup alone (exact and captions off).

Baseline (`ratio`): SemDeDup on the smallest pool in one process, the whole pool's embeddings in memory (the stage
before it was partitioned); `ratio` = baseline wall / ours (SemDeDup alone), higher is better. Goals (issue 20):
10M rows within 4 GB in every process, 10M / 1M wall <= 12x, recall >= 0.95, SemDeDup at 1M <= 60 s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402

BLOCK = 100_000  # rows per score part; copies come from their own block
DIM, TOPICS, VOCAB, COPY_SHARE = 256, 2000, 20_000, 0.01


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_block(block: int, rows: int = BLOCK):
    """One score part's table: rows of block `block`, 1% of them copies of an earlier row of the block."""
    import pyarrow as pa

    rng = np.random.default_rng(1000 + block)
    topics = _unit(np.random.default_rng(7).normal(size=(TOPICS, DIM)))
    emb = _unit(topics[rng.integers(0, TOPICS, rows)] + 0.8 * rng.normal(size=(rows, DIM)) / np.sqrt(DIM))
    words = rng.integers(0, VOCAB, size=(rows, 9))
    sha = [hashlib.sha256(f"{block}:{k}".encode()).hexdigest() for k in range(rows)]
    copies = np.sort(rng.choice(np.arange(1, rows), size=int(rows * COPY_SHARE), replace=False))
    for n, k in enumerate(copies.tolist()):
        src = int(rng.integers(0, k))
        words[k] = words[src]
        if n % 3 == 0:
            emb[k], sha[k] = emb[src], sha[src]
        else:
            moved = emb[src] + rng.uniform(0.05, 0.2) * rng.normal(size=DIM) / np.sqrt(DIM)
            emb[k] = moved / np.linalg.norm(moved)
        if n % 3 == 2:
            words[k, rng.integers(0, 9)] = rng.integers(0, VOCAB)
    captions = [" ".join(f"w{w}" for w in row) for row in words.tolist()]
    start = block * BLOCK
    return pa.table({
        "uid": [f"{start + k:032x}" for k in range(rows)], "status": ["ok"] * rows, "caption": captions,
        "sha256": sha, "caption_hash": [hashlib.md5(c.encode()).hexdigest() for c in captions],
        "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), DIM),
        "score_clip": pa.array(rng.normal(0.3, 0.05, rows).astype(np.float32))})


def _write_block(args) -> None:
    """Score part `block` and its input part (uids; tier lists the pool's rows by the download's input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run, block = args
    path = run / "score" / f"part-{block:05d}.parquet"
    if not path.exists():
        table = make_block(block)
        pq.write_table(table.select(["uid"]).append_column("status", pa.nulls(table.num_rows, pa.string())),
                       run / "download" / "_input" / path.name)
        pq.write_table(table, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        (run / "score" / "_done" / f"part-{block:05d}.json").write_text(json.dumps({"rows": table.num_rows}))


def make_pool(run: Path, rows: int) -> None:
    """The run directory's score parts, made once (in worker processes, so this one stays small)."""
    (run / "score" / "_done").mkdir(parents=True, exist_ok=True)
    (run / "download" / "_input").mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_write_block, [(run, b) for b in range(rows // BLOCK)])


def _tree_rss(root: int) -> list[tuple[int, int, str]]:
    """(pid, RSS bytes, command) of `root` and every process below it, from /proc (Linux)."""
    parent, rss, name = {}, {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # a process that ended between listing and reading
            continue
        pid = int(status.parent.name)
        parent[pid], name[pid] = int(fields["PPid"]), fields["Name"].strip()
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    mine, frontier = {root}, [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in mine]
        mine.update(frontier)
    return [(p, rss.get(p, 0), name.get(p, "")) for p in mine]


class PeakRss:
    """The largest RSS any process of this tree reached (this process, Ray's and its workers), sampled."""

    def __init__(self):
        self.peak, self.name, self._stop = 0, "", threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for _, rss, name in _tree_rss(os.getpid()):
                if rss > self.peak:
                    self.peak, self.name = rss, name

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def recall(run: Path, eps: float) -> dict:
    """Pairs among the first block's rows that brute force finds (cosine >= 1 - eps, or the same sha256),
    and the share of them in one dedup group."""
    import pyarrow.parquet as pq

    part = pq.read_table(run / "score" / "part-00000.parquet", columns=["sha256", "image_embedding"])
    emb = part.column("image_embedding").combine_chunks()
    x = np.asarray(emb.values.to_numpy(zero_copy_only=False), np.float32).reshape(-1, DIM)
    x = _unit(x)
    pairs = set()
    for lo in range(0, len(x), 4096):
        i, j = np.nonzero(x[lo:lo + 4096] @ x.T >= 1 - eps)
        pairs |= {(a, b) for a, b in zip((i + lo).tolist(), j.tolist()) if a < b}
    sha = part.column("sha256").to_pylist()
    first: dict = {}
    for k, s in enumerate(sha):
        if s in first:
            pairs.add((first[s], k))
        first.setdefault(s, k)
    dup = pq.ParquetFile(run / "dedup" / "dup.parquet").read_row_group(0, columns=["dup_group"])
    group = dup.column("dup_group").to_pylist()
    found = sum(1 for a, b in pairs if group[a] is not None and group[a] == group[b])
    return {"brute_force_pairs": len(pairs), "found": found, "recall": round(found / max(1, len(pairs)), 4)}


def run_size(run: Path, rows: int, semdedup_only: bool) -> dict:
    from curate.dedup.dedup import DedupConfig, run_dedup
    from curate.tier.tier import TierConfig, run_tier
    from pipelines.ray_runner import RayRunner

    dedup_cfg = DedupConfig(image_match_min=None, copy_search_k=0)
    tier_cfg = TierConfig.model_validate({"base": [{"kind": "dedup_keep"}, {"kind": "threshold", "column":
                                          "caption_dup_count", "max": 4}, {"kind": "caption_group_best"}]})
    out: dict = {"rows": rows}
    runner = RayRunner(num_cpus=2)
    runner.ensure_ray()
    try:
        with PeakRss() as peak:
            for folder in ("dedup", "tier"):
                for f in (run / folder).glob("_done.json"):
                    f.unlink()
            start = time.time()
            stats = run_dedup(dedup_cfg, run, runner.parallel)
            out["dedup_s"], out["dedup_phases_s"] = round(time.time() - start, 1), stats["phases_s"]
            start = time.time()
            counts = run_tier(tier_cfg, run)
            out["tier_s"] = round(time.time() - start, 1)
            if semdedup_only:
                (run / "dedup" / "_done.json").unlink()
                start = time.time()
                alone = run_dedup(dedup_cfg.model_copy(update={"exact": False, "captions": False}), run,
                                  runner.parallel)
                out["semdedup_alone_s"] = round(time.time() - start, 1)
                out["semdedup_alone_phases_s"] = alone["phases_s"]
                (run / "dedup" / "_done.json").unlink()
                run_dedup(dedup_cfg, run, runner.parallel)  # the full dup.parquet again, for recall
        out["peak_rss_gb"], out["peak_process"] = round(peak.peak / 2**30, 2), peak.name
    finally:
        runner.close()
    out["dedup_by_status"] = stats["by_status"]
    out["tier_top100_rows"] = counts["subsets"]["top100"]
    out.update(recall(run, dedup_cfg.image_eps))
    return out


def baseline_semdedup(run: Path, rows: int) -> dict:
    """The old way: every embedding in one process, one k-means, pairs inside its clusters."""
    import pyarrow.parquet as pq

    from curate.dedup.semdedup import near_duplicate_images

    with PeakRss() as peak:
        start = time.time()
        x = np.concatenate([np.asarray(pq.read_table(p, columns=["image_embedding"]).column("image_embedding")
                                       .combine_chunks().values.to_numpy(zero_copy_only=False), np.float32)
                            .reshape(-1, DIM) for p in sorted((run / "score").glob("part-*.parquet"))])
        pairs, _ = near_duplicate_images(x, 0.05, 1000)
        wall = time.time() - start
    return {"rows": rows, "wall_s": round(wall, 1), "pairs": len(pairs), "peak_rss_gb": round(peak.peak / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--baseline-rows", type=int, default=1_000_000, help="0: no baseline")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results = []
    for rows in sorted(args.sizes):
        run = args.work / f"rows{rows}"
        make_pool(run, rows)
        results.append(run_size(run, rows, semdedup_only=rows == min(args.sizes)))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    base = baseline_semdedup(args.work / f"rows{args.baseline_rows}", args.baseline_rows) \
        if args.baseline_rows else None
    small, large = results[0], results[-1]
    summary = {"sizes": results, "baseline_semdedup": base,
               "growth_wall": round((large["dedup_s"] + large["tier_s"]) / (small["dedup_s"] + small["tier_s"]), 2),
               "growth_rows": large["rows"] / small["rows"], "max_peak_rss_gb": max(r["peak_rss_gb"] for r in results),
               "min_recall": min(r["recall"] for r in results)}
    summary["ratio"] = round(base["wall_s"] / small["semdedup_alone_s"], 3) if base else None
    emit(summary, args.out, "scale")


if __name__ == "__main__":
    main()
