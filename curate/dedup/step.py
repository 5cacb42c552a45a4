"""The dedup stage's step: dedup/dup.parquet, redone when the score parts' markers or the config change.
The dedup modules load torch and datasketch (~2 s), so this declaration imports them only when asked for
its config or run: `curate --help`, `curate status` stay instant."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from curate.schema import KEPT
from curate.stage import RunContext, Step


class DedupStep(Step):
    """`dedup`: one global step over every scored row, as bounded-memory tasks (curate/dedup/partitions.py)."""

    name = directory = "dedup"
    reads = ("score", "score/part-*.parquet")
    command = "mark exact and near duplicates: image bytes, captions (MinHash-LSH), embeddings (OUT/dedup)"
    counts_rows = True
    identity = "the dedup config and the score parts' done markers (dedup/_done.json)"

    @property
    def config(self) -> type[BaseModel]:
        from curate.dedup.dedup import DedupConfig

        return DedupConfig

    def run(self, ctx: RunContext) -> dict:
        from curate.dedup.dedup import run_dedup

        return run_dedup(ctx.cfg.dedup, ctx.run_dir, ctx.parallel)

    def done(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory / "_done.json").exists()

    def funnel(self, stats: dict) -> tuple[str, str, int] | None:
        return ("kept by dedup", "dedup_kept", stats["by_status"].get(KEPT, 0))
