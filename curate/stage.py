"""Stage contracts. A MapStage turns each part into a part with the same uids plus its columns;
a GlobalStage needs every row at once. Runners (local or Ray) call the same code."""
from __future__ import annotations

import logging
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io import Part, atomic_write_json, file_fingerprint, move_staged, read_column, read_done, write_done
from curate.schema import STATUS, UID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. `actors` > 0 asks for a pool of long-lived workers."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1024
    actors: int = 0


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


class GlobalStage:
    """Needs all rows (clustering, quantiles): reads uid-keyed parts, writes artifacts."""

    name: str = "global"

    def run(self, input_paths: list[Path], out_dir: Path) -> dict:
        raise NotImplementedError


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


def commit_part(attempt: Part, marker: dict) -> None:
    """Move an attempt's outputs into place, then mark the part done. Only the driver that received the
    attempt's result calls this, so a part that a worker finishes after its driver died never counts."""
    move_staged(attempt)
    write_done(attempt, marker)


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
        by_status["pending"] = pending
    stats = {"input_rows": input_rows, "by_status": dict(sorted(by_status.items())), "parts": len(parts),
             "failed_parts": failed, "wall_s": round(wall_s, 2), **extra}
    atomic_write_json(Path(stage_dir) / "stats.json", stats)
    return stats
