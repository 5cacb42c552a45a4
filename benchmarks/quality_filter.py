"""Filter quality on pools with ground truth: per score column, ROC-AUC of clean pairs against each
caption-noise kind and the clean share at the oracle's size (the top N rows dedup kept, N = the clean rows
it kept); per tier subset, rows and clean share. The stages never read gt_*; only this script does.

    python benchmarks/quality_filter.py [--emoji-run DIR] [--demo-run DIR] [--set KEY=VALUE ...] [--out DIR]

--set changes the pipeline of both pools before they are made (a filter recipe, e.g. --set filter.model=tiny-vit-64
or --set 'filter.strategy={name: negclip}'); it has no effect on a run directory given.

Without a run directory, each pool is made and run up to tier here (emoji: configs/compare/emoji_compute.yaml's
pipeline; demo: configs/demo.yaml without training). `ratio`: on the emoji pool, the clean share of the
`curated` tier over that of `top100` (the whole pool after dedup), higher is better.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from benchmarks.common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"emoji": (ROOT / "configs" / "compare" / "emoji_compute.yaml", "pipeline"),
         "demo": (ROOT / "configs" / "demo.yaml", None)}
STAGES = "stages=[synth,download,filter,score,dedup,tier]"


def pipeline_config(name: str, overrides: list[str]):
    """The pool's pipeline config with `overrides`, run up to tier (no shards, no training)."""
    import yaml

    from pipelines.config import PipelineConfig, apply_overrides, load_config

    path, section = POOLS[name]
    if section is None:
        return load_config(path, [STAGES, *overrides])
    raw = apply_overrides(yaml.safe_load(path.read_text())[section], [STAGES, *overrides])
    return PipelineConfig.model_validate(raw)


def measure(name: str, run_dir: Path | None, work: Path, overrides: list[str]) -> dict:
    from curate.synthetic.quality import filter_quality
    from pipelines.run import run_pipeline

    start = time.time()
    if run_dir is None:
        run_dir = work / name
        os.chdir(ROOT)  # the configs' relative paths (../shared) are from the project root
        run_pipeline(pipeline_config(name, overrides), run_dir)
    return {**filter_quality(run_dir, run_dir / "synth" / "pool.parquet"), "run": str(run_dir),
            "wall_s": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-run", type=Path, help="a finished run of the emoji pool (default: make one)")
    parser.add_argument("--demo-run", type=Path, help="a finished run of the demo pool (default: make one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quality-filter-"))
    emoji = measure("emoji", args.emoji_run, work, args.overrides)
    demo = measure("demo", args.demo_run, work, args.overrides)
    subsets = emoji["subsets"]
    ratio = subsets["curated"]["clean_share"] / subsets["top100"]["clean_share"]
    emit({"overrides": args.overrides, "emoji": emoji, "demo": demo, "ratio": round(ratio, 4)}, args.out,
         "quality_filter")


if __name__ == "__main__":
    main()
