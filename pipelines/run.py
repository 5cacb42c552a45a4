"""Run a pipeline config stage by stage into a run directory: each stage is the registry's Step."""
from __future__ import annotations

import logging
from pathlib import Path

from curate.download.pool_input import InputError
from curate.mirror import WorkingCopy, open_copy
from curate.registry import BY_NAME
from curate.report.build import write_report, write_report_after_failure
from curate.stage import RunContext, StageFailed
from curate.storage import StorageConfig, is_url
from pipelines.config import PipelineConfig, RunnerConfig, write_resolved
from pipelines.runners import LocalRunner

log = logging.getLogger(__name__)


def make_runner(cfg: RunnerConfig, copy: WorkingCopy | None = None):
    """The configured runner; `copy` is the working copy of a run on a store (parts are published there)."""
    if cfg.kind == "local":
        return LocalRunner(cfg.part_retries, copy)
    from pipelines.ray_runner import RayRunner

    return RayRunner(cfg.ray_address, cfg.num_cpus, cfg.part_retries, copy)


def open_run(out, storage: StorageConfig | None = None) -> tuple[Path, WorkingCopy | None]:
    """Where a command works on the run directory `out`: the folder itself, or for a URL its working copy
    (the store checked, then pulled: StorageError, exit 2, when the store does not answer)."""
    if is_url(out):
        copy = open_copy(str(out), storage)
        return copy.local, copy
    return Path(out), None


def train_filter(cfg, out_dir: Path) -> dict:
    """The trainer, imported once a stage trains (torch loads only then)."""
    from train.train import train

    return train(cfg, out_dir)


def context(cfg: PipelineConfig, out_dir: Path, runner) -> RunContext:
    """What the steps run with: this layer provides the trainer and the runner's way to run a global step's
    tasks (Ray tasks, or in this process)."""
    return RunContext(cfg, Path(out_dir), runner, train=train_filter, parallel=runner.parallel)


def check_pipeline(cfg: PipelineConfig, out_dir: Path, only: list[str] | None = None) -> None:
    """Raise InputError or ConfigError, before any stage runs, when a stage needs the output of an earlier
    stage that is not requested and has not run, or a step's own check fails (its input or config)."""
    out_dir = Path(out_dir).resolve()
    stages = only or cfg.stages
    for stage in stages:
        need = BY_NAME[stage].needs(cfg)
        if need is None or need[0] in stages:
            continue
        before, pattern = need
        if not any(out_dir.glob(pattern)):
            raise InputError(f"stage {stage!r} needs the {before} stage's output ({out_dir / pattern}), which "
                             f"does not exist: run the {before} stage first")
    for stage in stages:
        BY_NAME[stage].check(cfg, out_dir, stages)


def run_pipeline(cfg: PipelineConfig, out, only: list[str] | None = None, report: bool = True,
                 copy: WorkingCopy | None = None) -> dict[str, dict]:
    """Check the run (`check_pipeline`), then run `cfg.stages` (or just `only`) in order; returns each
    stage's stats, and raises StageFailed naming the stage that failed. A whole run (not `only`) ends by
    writing the report, also after a failed stage, unless `report` is false. `out` is a folder or a URL
    (`s3://bucket/prefix`); `copy` is its working copy when the caller opened it (`open_run`)."""
    out_dir, copy = (copy.local, copy) if copy is not None else open_run(out, cfg.storage)
    check_pipeline(cfg, out_dir, only)
    write_resolved(cfg, out_dir)
    runner = make_runner(cfg.runner, copy)
    ctx = context(cfg, out_dir, runner)
    stats: dict[str, dict] = {}
    try:
        for stage in only or cfg.stages:
            log.info("stage %s", stage)
            try:
                stats[stage] = run_step(stage, ctx, copy)
            except Exception as err:
                raise StageFailed(stage, err) from err
    except Exception:
        if only is None and report:  # a whole run: show what exists, then fail as before
            write_report_after_failure(out_dir)
        raise
    finally:
        runner.close()
        if copy is not None:
            copy.push()
    if only is None and report:
        write_report(out_dir)
        if copy is not None:
            copy.push()
    return stats


def run_step(stage: str, ctx: RunContext, copy: WorkingCopy | None) -> dict:
    """One step; on a store, its outputs are uploaded when it ends (parts as each is committed)."""
    stats = BY_NAME[stage].run(ctx)
    if copy is not None:
        copy.push()
    return stats
