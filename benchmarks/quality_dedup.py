"""Dedup quality on a finished synthetic run: precision and recall against the planted duplicates
(the stages never read gt_* columns; only this script does).

    python benchmarks/quality_dedup.py --run runs/demo [--out benchmarks/results]
    python benchmarks/quality_dedup.py --run runs/emoji-compare --pairs ../shared/data/emoji

With --pairs (a run whose pool came from `synth.from_pairs`), also what dedup did to the pairs' own
structure (`natural`): drops whose kept member is the same source pair, a member of its `--family-column`
group (the emoji's skin-tone variants share `base_hexcode`), or another pair; and the share of family pairs
put in one group.

Recall: planted (copy, original) pairs that ended in one dup_group, per kind (exact, near).
Precision: of the rows dropped for a reason, the share whose kept member is of the same planted family.
`ratio` is the smallest of exact recall, near recall and near-image precision (goal: >= 0.95).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with synth and dedup outputs")
    parser.add_argument("--pairs", type=Path, help="the pairs directory the pool was made from")
    parser.add_argument("--family-column", default="base_hexcode")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from curate.io import read_json
    from curate.quality import dedup_quality, natural_structure

    pool = args.run / "synth" / "pool.parquet"
    quality = dedup_quality(args.run, pool)
    if args.pairs:
        quality["natural"] = natural_structure(args.run, pool, args.pairs / "pairs.parquet", args.family_column)
    headline = min(quality["exact_duplicate"]["recall"], quality["near_duplicate"]["recall"],
                   quality["near_image"]["precision"])
    emit({"run": str(args.run), "ratio": headline, "dedup_stats": read_json(args.run / "dedup" / "stats.json")["by_status"],
          **quality}, args.out, "quality_dedup")


if __name__ == "__main__":
    main()
