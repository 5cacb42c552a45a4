"""Load: a large synthetic pool end to end, and a 1M-row pool through tier and shard planning.

    python benchmarks/load_pool.py [--pool-rows 100000] [--meta-rows 1000000] [--out benchmarks/results]

- pool: `configs/demo.yaml` with `synth.n = --pool-rows`, every stage run as its own `curate run --stages S
  --no-report` child process (then `curate report`), each timed, with the peak resident memory of its process tree
  sampled every 0.2 s. Checks that every pool row ends in `tier/accounting.parquet`.
- meta: a run directory of `--meta-rows` downloaded and scored rows (tiny images in 100 download tars),
  then the tier stage (five standard tiers after dedup) and the shard stage's planning for every subset
  (read every row's source, index every tar, write the plan parts; no image bytes copied), in one child
  process whose peak memory is reported (goal: under 8 GB).
Both use the local runner, so all of a stage's memory lies in the measured process tree.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_shard import random_dedup_marks, random_uids  # noqa: E402
from benchmarks.common import emit, tree_rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["synth", "download", "filter", "score", "dedup", "tier", "shard"]


def run_measured(cmd: list[str], log_path: Path) -> dict:
    """Run `cmd`; its wall seconds and the peak RSS of its process tree (GB). Raises if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    start, peak = time.perf_counter(), 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT, env=env)
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.2)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log_path}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gb": round(peak / 2**30, 2)}


def load_pool(rows: int, work: Path) -> dict:
    """The demo pipeline on a `rows`-pair synthetic pool, stage by stage."""
    import pyarrow.parquet as pq

    run, log = work / "run", work / "pool.log"
    cli = [sys.executable, "-m", "pipelines.cli"]
    sets = [f"synth.n={rows}", "runner.kind=local", "download.rows_per_part=5000", "shard.samples_per_shard=5000"]
    stages = {}
    for stage in STAGES:
        cmd = [*cli, "run", "configs/demo.yaml", "--out", str(run), "--stages", stage, "--no-report"]
        stages[stage] = run_measured(cmd + [arg for s in sets for arg in ("--set", s)], log)
        print(stage, stages[stage], file=sys.stderr)
    stages["report"] = run_measured([*cli, "report", str(run)], log)
    pool_rows = pq.read_metadata(run / "synth" / "pool.parquet").num_rows
    accounted = pq.read_metadata(run / "tier" / "accounting.parquet").num_rows
    counts = json.loads((run / "tier" / "counts.json").read_text())
    return {"pool_rows": pool_rows, "rows_accounted": accounted, "rows_lost": pool_rows - accounted,
            "top100_rows": counts["subsets"]["top100"], "stages": stages,
            "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
            "peak_rss_gb": max(s["peak_rss_gb"] for s in stages.values())}


def make_meta_run(root: Path, rows: int, tars: int = 100) -> None:
    """`rows` downloaded + scored rows whose images (a few bytes each) lie in `tars` download tars,
    and a dup.parquet keeping 80% of them. Score parts carry the download columns, as the stage's do."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.shard import TarWriter

    rng = np.random.default_rng(2)
    for stage in ("download/shards", "download/_input", "score", "dedup"):
        (root / stage).mkdir(parents=True, exist_ok=True)
    per_tar, dups = -(-rows // tars), []
    for p, start in enumerate(range(0, rows, per_tar)):
        n = min(per_tar, rows - start)
        keys = [f"{p:05d}{i:05d}" for i in range(n)]
        writer = TarWriter(root / "download" / "shards" / f"{p:05d}.tar")
        for key in keys:
            writer.add(f"{key}.jpg", b"\xff\xd8" + rng.bytes(30))
        writer.close()
        uids = random_uids(n, rng)
        ok = rng.random(n) < 0.9
        table = pa.table({"uid": uids, "status": pa.array(np.where(ok, "ok", "http_error")),
                          "caption": pa.array([f"caption {start + i}" for i in range(n)]),
                          "shard": pa.array(np.where(ok, f"shards/{p:05d}.tar", None), pa.string()),
                          "key": pa.array(keys), "width": pa.array(np.full(n, 64, np.int32)),
                          "score_filter": rng.random(n, dtype=np.float32)})
        pq.write_table(table.select(["uid", "status"]), root / "download" / "_input" / f"part-{p:05d}.parquet")
        pq.write_table(table.drop_columns(["score_filter"]), root / "download" / f"part-{p:05d}.parquet")
        pq.write_table(table, root / "score" / f"part-{p:05d}.parquet")
        dups.append(random_dedup_marks(uids, rng))
    pq.write_table(pa.concat_tables(dups), root / "dedup" / "dup.parquet")


def meta_child(root: Path) -> None:
    """In a child process: tier, then plan every subset's shards; writes the timings to ROOT/timings.json."""
    from curate.shard import ShardConfig, known_subsets, plan_subset, read_sources
    from curate.tier.tier import TierConfig, run_tier
    from curate.tier.tier_rules import DedupKeep

    start = time.perf_counter()
    counts = run_tier(TierConfig(base=[DedupKeep()], holdout_fraction=0.01), root)
    tier_s, start = time.perf_counter() - start, time.perf_counter()
    cfg, sources, tar_index, planned = ShardConfig(samples_per_shard=10_000), read_sources(root), {}, {}
    for subset in known_subsets(root):
        _, plan = plan_subset(root, subset, cfg, sources, tar_index)
        planned[subset] = plan["samples"]
    timings = {"tier_s": round(tier_s, 1), "shard_plan_s": round(time.perf_counter() - start, 1),
               "top100": counts["subsets"]["top100"], "planned": planned}
    (root / "timings.json").write_text(json.dumps(timings))


def load_meta(rows: int, work: Path) -> dict:
    root = work / "meta"
    start = time.perf_counter()
    make_meta_run(root, rows)
    build_s = time.perf_counter() - start
    measured = run_measured([sys.executable, __file__, "--meta-child", str(root)], work / "meta.log")
    result = json.loads((root / "timings.json").read_text())
    assert result["planned"]["top100"] == result["top100"], result
    return {"rows": rows, "build_s": round(build_s, 1), **result, **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-rows", type=int, default=100_000, help="synthetic pairs end to end (0: skip)")
    parser.add_argument("--meta-rows", type=int, default=1_000_000, help="rows through tier + shard plan (0: skip)")
    parser.add_argument("--out", type=Path, help="write load_pool.json here")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    parser.add_argument("--meta-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.meta_child:
        meta_child(args.meta_child)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {}
    try:
        if args.meta_rows:
            result["meta"] = load_meta(args.meta_rows, work)
            shutil.rmtree(work / "meta")
        if args.pool_rows:
            result["pool"] = load_pool(args.pool_rows, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out, "load_pool")


if __name__ == "__main__":
    main()
