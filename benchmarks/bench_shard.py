"""Shard writing against a plain copy of the same bytes, and tiering a large score table.

    python benchmarks/bench_shard.py [--n 20000] [--rounds 3] [--tier-rows 10000000] [--out benchmarks/results]

- shard: plan + write every sample of a run's download tars (random-size JPEGs) as shuffled
  WebDataset shards (image, caption, json), local runner;
- copy: `shutil.copyfile` of the same download tars (the ceiling: the same bytes, no shuffle);
  both fsync what they wrote before their clock stops;
- each measured cold (every file of the run written back and dropped from the page cache with
  posix_fadvise(DONTNEED) first, so the reads come from disk) and warm (every file read just before);
  the four take turns, `--rounds` times each. `ratio` = shard MB/s / copy MB/s, warm (the copy at its
  best), per round, median over rounds (goal >= 0.5); `ratio_cold` the same cold;
- tier: the five standard tiers plus dedup_keep and a heuristic filter over a `--tier-rows` score
  table, timed in a child process whose peak RSS is reported (goals: < 60 s, < 4 GB).
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, emit, median_range  # noqa: E402

PART_ROWS = 1_000_000


def random_uids(n: int, rng):
    """n distinct-looking 32-hex uids as an Arrow string array, built without Python strings."""
    import binascii

    import numpy as np
    import pyarrow as pa

    data = binascii.hexlify(rng.bytes(16 * n))
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def random_dedup_marks(uids, rng):
    """dup.parquet rows for `uids`: 80% kept, the rest dropped as near_image."""
    import numpy as np
    import pyarrow as pa

    keep = rng.random(len(uids)) < 0.8
    return pa.table({"uid": uids, "dup_keep": keep,
                     "dup_reason": pa.array(np.where(keep, None, "near_image"), pa.string())})


def make_download_run(root: Path, n: int, per_tar: int = 5000) -> float:
    """A run dir with download tars of n JPEGs and score parts; returns the tars' total MB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (64, 96, 128, 160)]
    blobs = []
    for tile in tiles:
        buf = io.BytesIO()
        tile.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    (root / "download" / "shards").mkdir(parents=True)
    for stage in ("score", "download/_input"):
        (root / stage).mkdir(parents=True, exist_ok=True)
    uids = random_uids(n, rng).to_pylist()
    for p, start in enumerate(range(0, n, per_tar)):
        rows = []
        with tarfile.open(root / "download" / "shards" / f"{p:05d}.tar", "w") as tar:
            for i in range(start, min(n, start + per_tar)):
                data = blobs[i % len(blobs)] + rng.bytes(int(rng.integers(0, 4096)))  # JPEG ignores a tail
                key = f"{i:09d}"
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                rows.append({"uid": uids[i], "caption": f"picture number {i}", "status": "ok",
                             "shard": f"shards/{p:05d}.tar", "key": key, "score_x": float(rng.random())})
        table = pa.Table.from_pylist(rows)
        pq.write_table(table.select(["uid", "status"]), root / "download" / "_input" / f"part-{p:05d}.parquet")
        pq.write_table(table, root / "download" / f"part-{p:05d}.parquet")
        pq.write_table(table, root / "score" / f"part-{p:05d}.parquet")
    return sum(t.stat().st_size for t in (root / "download" / "shards").glob("*.tar")) / 1e6


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def fsync_all(root: Path, drop: bool = False) -> None:
    """Write every file under root back to disk; with `drop`, evict it from the page cache too."""
    for path in files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(root: Path) -> None:
    """Bring every file under root into the page cache."""
    for path in files(root):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def shard(root: Path, n: int) -> None:
    from curate.shard import ShardConfig, run_shard
    from pipelines.runners import LocalRunner

    stats = run_shard(ShardConfig(samples_per_shard=1000), root, LocalRunner())
    assert stats["subsets"]["top100"] == n, stats
    fsync_all(root / "shards")


def copy(root: Path) -> None:
    dest = root / "copy"
    dest.mkdir()
    for tar in sorted((root / "download" / "shards").glob("*.tar")):
        shutil.copyfile(tar, dest / tar.name)
    fsync_all(dest)


def time_shard_and_copy(root: Path, n: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of shard and copy, cold and warm, round by round, after the tier stage and one untimed run
    of each (imports, first calls)."""
    from curate.tier.tier import TierConfig, run_tier

    run_tier(TierConfig(standard_fractions=[1.0]), root)
    shard(root, n)
    copy(root)

    def prepare(side: str, r: int) -> None:
        for out in ("shards", "copy"):
            shutil.rmtree(root / out, ignore_errors=True)
        if side.endswith("cold"):
            fsync_all(root, drop=True)
        else:
            read_all(root)

    seconds, _ = alternate({"shard_cold": lambda r: shard(root, n), "copy_cold": lambda r: copy(root),
                            "shard_warm": lambda r: shard(root, n), "copy_warm": lambda r: copy(root)},
                           rounds, prepare)
    return seconds


def make_score_table(root: Path, rows: int) -> None:
    """`rows` scored rows in 1M-row parts, their input parts and a dup.parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    for stage in ("score", "download/_input", "dedup"):
        (root / stage).mkdir(parents=True, exist_ok=True)
    dups = []
    for p, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        uids = random_uids(n, rng)
        status = pa.array(np.where(rng.random(n) < 0.9, "ok", "http_error"))
        table = pa.table({"uid": uids, "status": status, "score_x": rng.random(n, dtype=np.float32),
                          "caption_words": rng.integers(0, 30, n, dtype=np.int32),
                          "caption_boilerplate": rng.random(n) < 0.05})
        pq.write_table(table.select(["uid", "status"]), root / "download" / "_input" / f"part-{p:05d}.parquet")
        pq.write_table(table, root / "score" / f"part-{p:05d}.parquet")
        dups.append(random_dedup_marks(uids, rng))
    pq.write_table(pa.concat_tables(dups), root / "dedup" / "dup.parquet")


def tier_child(root: Path) -> None:
    """Run in a child process: tier the table and print the wall seconds."""
    from curate.tier.tier import TierConfig, run_tier
    from curate.tier.tier_rules import DedupKeep, Equals, Threshold

    start = time.perf_counter()
    counts = run_tier(TierConfig(base=[DedupKeep(), Equals(column="caption_boilerplate", value=False),
                                       Threshold(column="caption_words", min=2)], holdout_fraction=0.01), root)
    print(time.perf_counter() - start, counts["subsets"]["top20"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="samples sharded")
    parser.add_argument("--rounds", type=int, default=3, help="the four runs take turns; medians count")
    parser.add_argument("--tier-rows", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tier-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tier_child:
        tier_child(args.tier_child)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    try:
        mb = make_download_run(work / "run", args.n)
        seconds = time_shard_and_copy(work / "run", args.n, args.rounds)
        shutil.rmtree(work / "run")
        make_score_table(work / "table", args.tier_rows)
        child = subprocess.run([sys.executable, __file__, "--tier-child", str(work / "table")],
                               capture_output=True, text=True, check=True)
        tier_s = float(child.stdout.split()[0])
        tier_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"samples": args.n, "mb": round(mb, 1), "rounds": args.rounds, "ratio_cache": "warm"}
    for cache, suffix in (("warm", ""), ("cold", "_cold")):
        shard_s, copy_s = seconds[f"shard_{cache}"], seconds[f"copy_{cache}"]
        result.update(median_range(f"ratio{suffix}", [c / s for s, c in zip(shard_s, copy_s)]))
        result.update(median_range(f"shard{suffix}_mb_per_s", [mb / s for s in shard_s], 1))
        result.update(median_range(f"copy{suffix}_mb_per_s", [mb / s for s in copy_s], 1))
        result[f"shard{suffix}_samples_per_s"] = round(args.n / statistics.median(shard_s), 1)
        result[f"shard{suffix}_s_each"] = [round(t, 2) for t in shard_s]
        result[f"copy{suffix}_s_each"] = [round(t, 2) for t in copy_s]
    result.update({"tier_rows": args.tier_rows, "tier_wall_s": round(tier_s, 1),
                   "tier_peak_rss_gb": round(tier_rss_gb, 2)})
    emit(result, args.out, "bench_shard")


if __name__ == "__main__":
    main()
