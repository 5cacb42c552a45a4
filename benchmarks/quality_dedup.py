"""Dedup quality on finished runs of pools with ground truth (the stages never read gt_* columns; only this
script does): what dedup did to each picture.

    curate run configs/dedup/emoji.yaml --out runs/dedup-emoji      # the twitter emoji + planted copies
    curate run configs/dedup/icons.yaml --out runs/dedup-icons      # three icon sets + planted copies
    python benchmarks/quality_dedup.py --run runs/dedup-emoji --run runs/dedup-icons --run runs/demo

Per run: pictures (distinct pixel arrays of the source images; a planted copy, exact or edited, is its
original's picture), duplicate rows (rows beyond the first of each picture), recall (of those, the share
dropped for a row of the same picture), pictures lost (no row kept), precision (dropped rows whose kept row is
the same picture), per reason and per planted edit. Goals on every pool: pictures lost <= 1%, precision >= 0.95,
recall >= 0.95. `ratio` is the smallest of recall, precision and 1 - 5 x the lost share over the pools: at
least 0.95 when every goal is met on every pool. With a pairs pool whose `--family-column` names lookalike
families (the emoji's skin tones share `base_hexcode`), also `natural`: drops by kind of kept row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", help="a run with synth and dedup outputs (repeat)")
    parser.add_argument("--family-column", default="base_hexcode")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from curate.io import read_json
    from curate.synthetic.quality import dedup_quality, natural_structure, pairs_root

    pools = {}
    for run in args.run or [Path("runs/demo")]:
        pool, pairs = run / "synth" / "pool.parquet", pairs_root(run)
        quality = dedup_quality(run, pool, pairs)
        if pairs and args.family_column in pq.read_schema(pairs / "pairs.parquet").names:
            quality["natural"] = natural_structure(run, pool, pairs / "pairs.parquet", args.family_column)
        dedup = read_json(run / "dedup" / "stats.json")
        pools[run.name] = {**quality, "dedup_wall_s": dedup["wall_s"], "dedup_stats": dedup["by_status"]}
    headline = min(min(q["recall"], q["precision"], 1 - 5 * q["pictures_lost_share"]) for q in pools.values())
    emit({"ratio": round(headline, 4), "pools": pools}, args.out, "quality_dedup")


if __name__ == "__main__":
    main()
