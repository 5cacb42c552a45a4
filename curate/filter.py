"""The filter stage: a CLIP trained on a trusted seed set (the filter network), which the score stage then
runs over the pool. Training itself is the trainer's (`train/`), handed in by the orchestration layer."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from curate.io import read_json_if, read_jsonl
from curate.mirror import local
from curate.models.train_config import ClipStrategy, Strategy, TrainConfig
from curate.stage import RunContext, Step
from curate.storage import Location
from curate.synthetic.synth import SEED_SPLIT, write_seed_pairs


class FilterConfig(BaseModel):
    """The filter network: a CLIP trained on a trusted seed set, which then scores the pool."""

    model_config = ConfigDict(extra="forbid")
    seed_pairs: Location | None = Field(None, description="trusted pairs directory (or its URL); none = the "
                                        "synth stage's seed split (synth.seed_split_fraction) if it made one, "
                                        "else draw clean scenes")
    seed_n: int = Field(2000, ge=10, description="drawn seed pairs (when seed_pairs is none)")
    seed: int = Field(1000, description="seed of the drawn set; differs from synth.seed, so it is disjoint")
    model: str = "tiny-vit-32"
    samples_seen: int = Field(20480, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(5e-4, gt=0)
    workers: int = Field(1, ge=0)
    strategy: Strategy = Field(default_factory=ClipStrategy, description="the training strategy, as in "
                               "`curate train` (e.g. {name: slip}: SimCLR views make crops of one image agree)")


def run_filter(cfg: FilterConfig, out_dir: Path, train: Callable[[TrainConfig, Path], dict]) -> dict:
    """Train the filter network on a trusted seed set into OUT/filter with `train` (resumes like `curate train`)."""
    filter_dir = Path(out_dir).resolve() / "filter"
    pairs = cfg.seed_pairs
    synth_split = Path(out_dir).resolve() / "synth" / SEED_SPLIT  # synth.seed_split_fraction's rows
    if pairs is None and (synth_split / "pairs.parquet").exists():
        pairs = synth_split
    elif pairs is None:
        pairs = filter_dir / "seed"
        if not (pairs / "pairs.parquet").exists():
            write_seed_pairs(cfg.seed_n, cfg.seed, pairs)
    train_cfg = TrainConfig.model_validate({
        "model": cfg.model, "samples_seen": cfg.samples_seen, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "seed": cfg.seed, "data": {"pairs": str(pairs), "workers": cfg.workers},
        "strategy": cfg.strategy.model_dump()})
    return train(train_cfg, filter_dir)


class FilterStep(Step):
    """`filter`: done once training wrote summary.json."""

    name = directory = "filter"
    config = FilterConfig
    default = True
    identity = "the train config it makes; an interrupted run resumes from filter/checkpoint.pt"

    def run(self, ctx: RunContext) -> dict:
        cfg = ctx.cfg.filter.model_copy(update={"seed_pairs": local(ctx.cfg.filter.seed_pairs, ctx.cfg.storage)})
        return run_filter(cfg, ctx.run_dir, ctx.train)

    def done(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory / "summary.json").exists()

    def started(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory / "metrics.jsonl").exists()

    def detail(self, run_dir: Path) -> str:
        summary = read_json_if(Path(run_dir) / self.directory / "summary.json")
        if summary:
            return f"{summary.get('samples_seen', 0):,} samples seen"
        lines = read_jsonl(Path(run_dir) / self.directory / "metrics.jsonl") if self.started(run_dir) else []
        return f"{lines[-1].get('samples', 0):,} samples so far" if lines else ""
