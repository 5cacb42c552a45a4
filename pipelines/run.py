"""Run a pipeline config stage by stage into a run directory."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from curate.io import read_json
from curate.download import DownloadConfig, DownloadStage, write_stats
from curate.pool_input import split_input
from curate.serve import PoolServer
from curate.synth import SynthConfig, is_synthesized, serve_settings, synthesize
from pipelines.config import PipelineConfig, RunnerConfig, write_resolved
from pipelines.runners import LocalRunner, PartsFailed

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


def run_download(cfg: DownloadConfig, out_dir: Path, runner, serve_dir: Path | None = None) -> dict:
    """Split the input into parts, download the parts not yet done, and write stats.json.

    Raises PartsFailed (after writing stats) when some parts failed for good."""
    stage_dir = Path(out_dir).resolve() / "download"  # absolute: workers may run elsewhere
    parts = split_input(cfg, stage_dir)
    start = time.time()
    failure: PartsFailed | None = None
    with serving(serve_dir):
        try:
            runner.map_parts(DownloadStage(cfg), parts)
        except PartsFailed as err:
            failure = err
    stats = write_stats(stage_dir, parts, sorted(failure.failed) if failure else [], time.time() - start)
    if failure:
        raise failure
    return stats


def run_pipeline(cfg: PipelineConfig, out_dir: Path) -> dict[str, dict]:
    """Run `cfg.stages` in order; returns each stage's stats."""
    out_dir = Path(out_dir)
    write_resolved(cfg, out_dir)
    synth_dir = out_dir / "synth"
    download_cfg = cfg.download
    if download_cfg.input is None:
        download_cfg = download_cfg.model_copy(update={"input": synth_dir / "pool.parquet"})
    serve_dir = synth_dir if cfg.serve_synth and download_cfg.input == synth_dir / "pool.parquet" else None
    runner = make_runner(cfg.runner)
    stats: dict[str, dict] = {}
    try:
        for stage in cfg.stages:
            log.info("stage %s", stage)
            if stage == "synth":
                stats[stage] = run_synth(cfg.synth, synth_dir)
            elif stage == "download":
                stats[stage] = run_download(download_cfg, out_dir, runner, serve_dir)
    finally:
        runner.close()
    return stats
