"""Run a pipeline config stage by stage into a run directory."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import pyarrow.compute as pc

from curate.dedup import run_dedup
from curate.download import DownloadConfig, DownloadStage
from curate.io import Part, atomic_write_json, read_column, read_json
from curate.netguard import resolve_endpoints
from curate.pool_input import InputError, split_input
from curate.report.build import write_report, write_report_after_failure
from curate.score import ScoreConfig, ScoreStage
from curate.serve import PoolServer
from curate.shard import (ShardConfig, ShardError, ShardWriter, finish_subset, known_subsets, plan_subset,
                          read_sources)
from curate.stage import MapStage, write_stage_stats
from curate.synth import SEED_SPLIT, SynthConfig, is_synthesized, serve_settings, synthesize, write_seed_pairs
from curate.tier import run_tier
from pipelines.config import ConfigError, FilterConfig, PipelineConfig, RunnerConfig, write_resolved
from pipelines.runners import LocalRunner, PartsFailed, StageFailed

log = logging.getLogger(__name__)


def make_runner(cfg: RunnerConfig):
    if cfg.kind == "local":
        return LocalRunner(cfg.part_retries)
    from pipelines.ray_runner import RayRunner

    return RayRunner(cfg.ray_address, cfg.num_cpus, cfg.part_retries)


def serving(synth_dir: Path | None):
    """Serve a synthetic pool's files on the loopback address its URLs name (or do nothing)."""
    if synth_dir is None:
        return contextlib.nullcontext()
    settings = serve_settings(synth_dir)
    return PoolServer(Path(synth_dir) / "files", settings["host"], settings["port"], settings["hang_s"])


def run_synth(cfg: SynthConfig, synth_dir: Path) -> dict:
    if is_synthesized(cfg, synth_dir):
        log.info("synth: %s already holds this pool, keeping it", synth_dir)
    else:
        synthesize(cfg, synth_dir)
    return read_json(Path(synth_dir) / "stats.json")


def map_stage(stage: MapStage, parts: list[Part], runner, stage_dir: Path, **extra) -> dict:
    """Run the parts not yet done, then write stats.json; raises PartsFailed (after the stats) when
    some parts failed for good."""
    start = time.time()
    failure: PartsFailed | None = None
    try:
        runner.map_parts(stage, parts)
    except PartsFailed as err:
        failure = err
    failed = sorted(failure.failed) if failure else []
    stats = write_stage_stats(stage_dir, parts, failed, time.time() - start, **{k: f() for k, f in extra.items()})
    if failure:
        raise failure
    return stats


def run_download(cfg: DownloadConfig, out_dir: Path, runner, serve_dir: Path | None = None) -> dict:
    """Split the input into parts once, then download the parts not yet done."""
    stage_dir = Path(out_dir).resolve() / "download"  # absolute: workers may run elsewhere
    parts = split_input(cfg, stage_dir)
    with serving(serve_dir):
        return map_stage(DownloadStage(cfg, served_endpoints(serve_dir)), parts, runner, stage_dir)


def served_endpoints(synth_dir: Path | None) -> frozenset[tuple[str, int]]:
    """The loopback server curate starts for a synthetic pool is reachable whatever
    download.allow_private_networks says (it serves only that pool's files)."""
    if synth_dir is None:
        return frozenset()
    settings = serve_settings(synth_dir)
    return resolve_endpoints(settings["host"], settings["port"])


def run_filter(cfg: FilterConfig, out_dir: Path) -> dict:
    """Train the filter network on a trusted seed set into OUT/filter (resumes like `curate train`)."""
    from train.config import TrainConfig
    from train.train import train

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


def run_score(cfg: ScoreConfig, out_dir: Path, runner) -> dict:
    """Score every download part (same part boundaries); rows not downloaded pass through unscored."""
    out_dir = Path(out_dir).resolve()
    download_dir, stage_dir = out_dir / "download", out_dir / "score"
    inputs = sorted(download_dir.glob("part-*.parquet"))
    if not inputs:
        raise FileNotFoundError(f"{download_dir} holds no parts: run the download stage first")
    parts = [Part(int(p.stem.split("-")[1]), p, stage_dir) for p in inputs]
    stage = ScoreStage(cfg, download_dir, out_dir)
    first = f"score_{cfg.scorers[0].name}"

    def scored_rows() -> int:
        done = [p.output_path for p in parts if p.output_path.exists()]
        return int(pc.sum(read_column(done, first).is_valid()).as_py() or 0) if done else 0

    return map_stage(stage, parts, runner, stage_dir, scored_rows=scored_rows)


def dedup_shuffle(cfg, runner) -> dict:
    """With `dedup.lsh_shuffle: ray`, the LSH buckets come from a Ray shuffle on the runner's cluster."""
    if cfg.lsh_shuffle != "ray":
        return {}
    from pipelines.ray_lsh import ray_buckets

    if hasattr(runner, "ensure_ray"):
        runner.ensure_ray()
    return {"buckets": ray_buckets}


def run_shard(cfg: ShardConfig, out_dir: Path, runner) -> dict:
    """Write every requested tier subset as WebDataset shards; a subset whose tars are done is skipped."""
    run_dir = Path(out_dir).resolve()
    subsets = cfg.subsets or known_subsets(run_dir)
    if not subsets:
        raise ShardError(f"{run_dir}/tier/subsets holds no subsets: run the tier stage first")
    start, tar_index, sources = time.time(), {}, read_sources(run_dir)
    manifests, failed = {}, {}
    for subset in subsets:
        parts, plan = plan_subset(run_dir, subset, cfg, sources, tar_index)
        try:
            runner.map_parts(ShardWriter(), parts)
        except PartsFailed as err:
            failed.update({f"{subset}/{name}": error for name, error in err.failed.items()})
            continue
        manifests[subset] = finish_subset(run_dir, subset, parts, plan, cfg)
    stats = {"subsets": {s: m["samples"] for s, m in manifests.items()},
             "shards": {s: len(m["shards"]) for s, m in manifests.items()},
             "missing_images": {s: m["missing_images"] for s, m in manifests.items()},
             "failed_parts": sorted(failed), "wall_s": round(time.time() - start, 2)}
    atomic_write_json(run_dir / "shards" / "stats.json", stats)
    if failed:
        raise PartsFailed("shard", failed)
    return stats


# What a stage reads that an earlier stage writes: that stage, and a pattern in the run directory.
NEEDS = {"download": ("synth", "synth/pool.parquet"), "score": ("download", "download/part-*.parquet"),
         "dedup": ("score", "score/part-*.parquet"), "tier": ("download", "download/_input/part-*.parquet"),
         "shard": ("tier", "tier/subsets/*.parquet")}


def check_pipeline(cfg: PipelineConfig, out_dir: Path, only: list[str] | None = None) -> None:
    """Raise InputError or ConfigError, before any stage runs, when a given download input cannot be
    read or lacks its columns, or a stage needs the output of an earlier stage that is not requested
    and has not run."""
    out_dir = Path(out_dir).resolve()
    stages = only or cfg.stages
    for stage in stages:
        before, pattern = NEEDS.get(stage, (None, None))
        if before is None or before in stages or (stage == "download" and cfg.download.input is not None):
            continue
        if not any(out_dir.glob(pattern)):
            raise InputError(f"stage {stage!r} needs the {before} stage's output ({out_dir / pattern}), which "
                             f"does not exist: run the {before} stage first")
    if "shard" in stages and cfg.shard.subsets is not None:  # None: every subset the tier stage makes
        known = [s.name for s in cfg.tier.all_subsets()] if "tier" in stages else known_subsets(out_dir)
        unknown = [s for s in cfg.shard.subsets if s not in known]
        if unknown:
            raise ConfigError(f"shard.subsets names {unknown}, which the tier stage does not make (it makes "
                              f"{known}): change shard.subsets or the tier subsets")
    if "download" in stages and cfg.download.input is not None:
        split_input(cfg.download, out_dir / "download")  # reads and checks the input (once per run)


def run_pipeline(cfg: PipelineConfig, out_dir: Path, only: list[str] | None = None,
                 report: bool = True) -> dict[str, dict]:
    """Check the run (`check_pipeline`), then run `cfg.stages` (or just `only`) in order; returns each
    stage's stats, and raises StageFailed naming the stage that failed. A whole run (not `only`) ends by
    writing the report, also after a failed stage, unless `report` is false."""
    out_dir = Path(out_dir)
    check_pipeline(cfg, out_dir, only)
    write_resolved(cfg, out_dir)
    synth_dir = out_dir / "synth"
    download_cfg = cfg.download
    if download_cfg.input is None:
        download_cfg = download_cfg.model_copy(update={"input": synth_dir / "pool.parquet"})
    serve_dir = synth_dir if cfg.serve_synth and download_cfg.input == synth_dir / "pool.parquet" else None
    runner = make_runner(cfg.runner)
    steps = {"synth": lambda: run_synth(cfg.synth, synth_dir),
             "download": lambda: run_download(download_cfg, out_dir, runner, serve_dir),
             "filter": lambda: run_filter(cfg.filter, out_dir),
             "score": lambda: run_score(cfg.score, out_dir, runner),
             "dedup": lambda: run_dedup(cfg.dedup, out_dir, **dedup_shuffle(cfg.dedup, runner)),
             "tier": lambda: run_tier(cfg.tier, out_dir, cfg.score),
             "shard": lambda: run_shard(cfg.shard, out_dir, runner)}
    stats: dict[str, dict] = {}
    try:
        for stage in only or cfg.stages:
            log.info("stage %s", stage)
            try:
                stats[stage] = steps[stage]()
            except Exception as err:
                raise StageFailed(stage, err) from err
    except Exception:
        if only is None and report:  # a whole run: show what exists, then fail as before
            write_report_after_failure(out_dir)
        raise
    finally:
        runner.close()
    if only is None and report:
        write_report(out_dir)
    return stats
