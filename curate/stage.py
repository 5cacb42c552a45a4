"""The stage contract. A `Step` is one pipeline stage (name, folder, config, what it reads, when it is done,
its status row and funnel step, how it runs); `curate/registry.py` lists them in pipeline order. A stage whose
work splits into parts runs a `MapStage` over them: each part in, a part with the same uids plus its columns
out, under either runner (local or Ray)."""
from __future__ import annotations

import logging
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from curate.io import (DONE_DIR, Part, atomic_write_json, file_fingerprint, move_staged, read_column, read_done,
                       read_json_if, write_done)
from curate.schema import PENDING, STATUS, UID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. `actors` > 0 asks for a pool of long-lived workers."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1024
    actors: int = 0


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what to change."""


class StageOutputError(RuntimeError):
    """A stage broke the map contract (lost, reordered or invented rows, or missed a column)."""


class MapStage:
    """Arrow table in, Arrow table out: the same uids in the same order, plus `provides` columns.

    Subclasses keep `__init__` cheap (it is pickled to workers), load heavy things in `setup()`
    (called once per worker) into attributes whose names start with `_` (never pickled), and do
    the work in `process()`. A part-parallel stage that writes
    side files (tars) overrides `process_part()` to learn which part it is working on, and writes
    them under `part.staging_dir` when they must appear only once the part is committed.
    """

    name: str = "map"
    requires: tuple[str, ...] = (UID,)
    provides: tuple[str, ...] = ()
    resources: Resources = Resources()
    # Its part reads only its input (and its earlier output) and writes only under `staging_dir`, so it can
    # run on a node that does not mount the run directory (pipelines/ray_runner.py, curate/mirror.py).
    portable: bool = False

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def setup(self) -> None:
        """Load models or build clients; called once per worker before the first part."""

    def ensure_setup(self) -> None:
        if not getattr(self, "_is_set_up", False):
            self.setup()
            self._is_set_up = True

    def process(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        return self.process(table)

    def config_fingerprint(self) -> str:
        """Hash of whatever changes this stage's output; stored in done markers."""
        return ""

    def redo(self, part: Part) -> bool:
        """Whether a part done from the same input and config runs again all the same (the download
        fetches transient failures again)."""
        return False


def check_output(stage: MapStage, table: pa.Table, out: pa.Table) -> None:
    missing = [c for c in stage.provides if c not in out.column_names]
    if missing:
        raise StageOutputError(f"stage {stage.name!r} did not provide columns {missing}")
    if out.num_rows != table.num_rows or not out.column(UID).equals(table.column(UID)):
        raise StageOutputError(
            f"stage {stage.name!r} returned {out.num_rows} rows for {table.num_rows} input rows "
            "or changed their uids/order; map stages never drop, add or reorder rows"
        )


def stage_part(stage: MapStage, part: Part, node: str | None = None) -> tuple[Part, dict]:
    """Run one part into a staging folder of its own: process, check, write. Returns the attempt (whose
    `staging_dir` holds the outputs) and its done marker; nothing counts until `commit_part`. `node`
    names where it ran (default: this host)."""
    stage.ensure_setup()
    start = time.time()
    attempt = replace(part, attempt=uuid.uuid4().hex[:12])
    try:
        table = pq.read_table(part.input_path)
        missing = [c for c in stage.requires if c not in table.column_names]
        if missing:
            raise StageOutputError(f"stage {stage.name!r} needs columns {missing} in {part.input_path}")
        out = stage.process_part(table, attempt)
        check_output(stage, table, out)
        attempt.staging_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, attempt.staging_dir / part.output_path.name)
    except BaseException:
        shutil.rmtree(attempt.staging_dir, ignore_errors=True)
        raise
    marker = {"part": part.name, "rows": out.num_rows, "input": file_fingerprint(part.input_path),
              "config": stage.config_fingerprint(), "node": node or socket.gethostname(),
              "wall_s": round(time.time() - start, 3)}
    log.debug("%s %s staged: %d rows in %.2fs", stage.name, part.name, out.num_rows, marker["wall_s"])
    return attempt, marker


def commit_part(attempt: Part, marker: dict) -> list[Path]:
    """Move an attempt's outputs into place, then mark the part done; returns the files it placed, marker
    last. Only the driver that received the attempt's result calls this, so a part that a worker finishes
    after its driver died never counts."""
    moved = move_staged(attempt)
    write_done(attempt, marker)
    return [*moved, attempt.done_path]


def run_part(stage: MapStage, part: Part) -> dict:
    """Stage and commit one part in this process (tests, benchmarks)."""
    attempt, marker = stage_part(stage, part)
    commit_part(attempt, marker)
    return marker


def done_marker(stage: MapStage, part: Part) -> dict | None:
    """The part's done marker when it was made from the same input bytes and stage config, else None."""
    marker = read_done(part)
    if marker and marker.get("input") == file_fingerprint(part.input_path) \
            and marker["config"] == stage.config_fingerprint():
        return marker
    return None


def is_done(stage: MapStage, part: Part) -> bool:
    """True when the part has a current done marker and the stage does not want it run again."""
    return done_marker(stage, part) is not None and not stage.redo(part)


def write_stage_stats(stage_dir: Path, parts: list[Part], failed: list[str], wall_s: float, **extra) -> dict:
    """`stage_dir/stats.json`, counted from the part files, so every runner reports the same numbers.
    Rows of parts that failed for good count as `pending`, so the statuses always add up to input_rows."""
    input_rows = sum(p.input_rows for p in parts)
    done = [p.output_path for p in parts if p.output_path.exists() and p.name not in failed]
    by_status: dict[str, int] = {}
    for status in (read_column(done, STATUS).to_pylist() if done else []):
        by_status[status] = by_status.get(status, 0) + 1
    pending = input_rows - sum(by_status.values())
    if pending:
        by_status[PENDING] = pending
    stats = {"input_rows": input_rows, "by_status": dict(sorted(by_status.items())), "parts": len(parts),
             "failed_parts": failed, "wall_s": round(wall_s, 2), **extra}
    atomic_write_json(Path(stage_dir) / "stats.json", stats)
    return stats


class PartsFailed(RuntimeError):
    """Some parts of a stage failed for good (after their retries); the others are done."""

    def __init__(self, stage: str, failed: dict[str, str]):
        self.failed = failed
        super().__init__(f"stage {stage!r}: {self.summary()}")

    def summary(self) -> str:
        return f"{len(self.failed)} part(s) failed for good: {', '.join(sorted(self.failed))}"


class StageFailed(RuntimeError):
    """A pipeline stage stopped by `error` (PartsFailed when only some of its parts failed)."""

    def __init__(self, stage: str, error: Exception):
        self.stage, self.error = stage, error
        what = error.summary() if isinstance(error, PartsFailed) else f"{type(error).__name__}: {error}"
        super().__init__(f"stage {stage!r} failed: {what}")


def run_in_process(calls: list[tuple[Callable, tuple]], desc: str) -> list:
    """Run independent calls `(function, args)` one after another here; their results in order. A global
    step's tasks go through this or a runner's `parallel` (Ray tasks across the cluster), which agree."""
    from tqdm import tqdm

    return [fn(*args) for fn, args in tqdm(calls, desc=desc, unit="task", mininterval=2, leave=False)]


@dataclass
class RunContext:
    """What a step runs with: the pipeline config (`cfg.<step name>` is its section), the run directory, the
    runner (`map_parts(stage, parts)`), and what only the orchestration layer has: the trainer
    (`train(TrainConfig, out_dir)`) and `parallel(calls, desc)`, which runs a global step's independent tasks
    (as Ray tasks under the Ray runner)."""

    cfg: Any
    run_dir: Path
    runner: Any = None
    train: Callable | None = None
    parallel: Callable = run_in_process


class Step:
    """One pipeline stage, in the spirit of datatrove's PipelineStep. It declares its name, its folder in the
    run directory, its config section, what earlier output it reads, its identity (what decides its output) and
    whether its stats.json counts rows (a funnel table); it says when its output is done (resume skips it,
    status counts it) and runs on a RunContext. Register a new step in `curate/registry.py`."""

    name: str = ""
    directory: str = ""
    config: type[BaseModel] = BaseModel
    reads: tuple[str, str] | None = None  # (earlier stage, pattern in the run directory)
    command: str | None = None  # help of its own `curate NAME --out RUN` command, if it has one
    counts_rows: bool = False  # stats.json has input_rows and by_status
    default: bool = False  # in a pipeline config's default `stages`
    identity: str = ""  # what decides its output, and so when a rerun skips or resumes it

    def needs(self, cfg) -> tuple[str, str] | None:
        """The earlier stage and output this run of the step reads (`reads` unless the config gives its input)."""
        return self.reads

    def check(self, cfg, run_dir: Path, stages: list[str]) -> None:
        """Raise ConfigError or InputError before any stage runs."""

    def run(self, ctx: RunContext) -> dict:
        raise NotImplementedError

    def done(self, run_dir: Path) -> bool:
        """Whether its output is complete (the file its last write leaves)."""
        return False

    def started(self, run_dir: Path) -> bool:
        """Whether it has begun writing (an unfinished step is then `incomplete`, not `not started`)."""
        return False

    def detail(self, run_dir: Path) -> str:
        return ""

    def status(self, run_dir: Path, part_names: list[str]) -> dict:
        """Its `curate status` row; by default one part, done or not."""
        done = self.done(run_dir)
        row = status_row(self.name, [self.name], {self.name} if done else set(), set(), self.detail(run_dir))
        if not done and self.started(run_dir):
            row["state"] = "incomplete"
        return row

    def funnel(self, stats: dict) -> tuple[str, str, int] | None:
        """Its step in the report's overview funnel: (label, key, rows), from its stats.json."""
        return None


def status_row(stage: str, names: list[str], done: set[str], failed: set[str], detail: str = "") -> dict:
    """A `curate status` row from part names and the done and failed ones among them."""
    failed = failed - done
    n_done, n_failed = len(done & set(names)), len(failed & set(names))
    pending = len(names) - n_done - n_failed
    if names and n_done == len(names):
        state = "done"
    elif n_failed:
        state = "failed"
    elif n_done:
        state = "incomplete"
    else:
        state = "not started"
    return {"stage": stage, "parts": len(names), "done": n_done, "failed": n_failed, "pending": pending,
            "state": state, "failed_parts": sorted(failed & set(names)), "detail": detail}


def map_status(stage_dir: Path, stage: str, names: list[str]) -> dict:
    """A map stage's row. A part named failed in stats.json stays failed unless its done marker is newer than
    that file (a rerun finished it since); an older marker is from an earlier config."""
    stats_path = stage_dir / "stats.json"
    stats = read_json_if(stats_path) or {}
    failed = set(stats.get("failed_parts") or [])
    stats_time = stats_path.stat().st_mtime if stats else 0.0
    done = {p.stem for p in (stage_dir / DONE_DIR).glob("part-*.json")
            if (stage_dir / f"{p.stem}.parquet").exists() and (p.stem not in failed or p.stat().st_mtime > stats_time)}
    pending_rows = (stats.get("by_status") or {}).get(PENDING, 0)
    detail = f"{pending_rows:,} rows pending in stats.json" if pending_rows else ""
    return status_row(stage, names, done, failed, detail)


def run_map_stage(stage: MapStage, parts: list[Part], runner, stage_dir: Path, **extra) -> dict:
    """Run the parts not yet done, then write stats.json; raises PartsFailed (after the stats) when some parts
    failed for good."""
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
