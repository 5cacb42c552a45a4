"""Runners execute a MapStage over parts. Both call `curate.stage.run_part`, so their outputs match."""
from __future__ import annotations

import logging
import traceback

import pyarrow.parquet as pq
from tqdm import tqdm

from curate.io import Part, uids_fingerprint
from curate.schema import UID
from curate.stage import MapStage, is_done, run_part

log = logging.getLogger(__name__)


class PartsFailed(RuntimeError):
    def __init__(self, stage: str, failed: dict[str, str]):
        self.failed = failed
        names = ", ".join(sorted(failed))
        super().__init__(f"stage {stage!r}: {len(failed)} part(s) failed for good: {names}")


def pending_parts(stage: MapStage, parts: list[Part]) -> list[Part]:
    """Parts without a done marker from the same input uids and stage config."""
    todo = []
    for part in parts:
        uids = pq.read_table(part.input_path, columns=[UID]).column(UID).to_pylist()
        if not is_done(stage, part, uids_fingerprint(uids)):
            todo.append(part)
    skipped = len(parts) - len(todo)
    if skipped:
        log.info("%s: %d of %d parts already done, skipping them", stage.name, skipped, len(parts))
    return todo


def progress(stage: MapStage, parts: list[Part], suffix: str = "") -> tqdm:
    """A bar in rows (rate and ETA in rows/s) over the given parts."""
    rows = sum(p.input_rows for p in parts)
    return tqdm(total=rows, desc=f"{stage.name}{suffix}", unit="row", unit_scale=True)


def run_with_retries(stage: MapStage, part: Part, retries: int) -> str | None:
    """None on success, else the last traceback; a failed part must not stop the others."""
    error = None
    for attempt in range(1, retries + 2):
        try:
            run_part(stage, part)
            return None
        except Exception:
            error = traceback.format_exc()
            log.error("%s %s failed (attempt %d):\n%s", stage.name, part.name, attempt, error)
    return error


class LocalRunner:
    """In-process, one part after another: for debugging and fast tests."""

    name = "local"

    def __init__(self, part_retries: int = 2):
        self.part_retries = part_retries

    def map_parts(self, stage: MapStage, parts: list[Part]) -> None:
        failed: dict[str, str] = {}
        todo = pending_parts(stage, parts)
        with progress(stage, todo) as bar:
            for part in todo:
                error = run_with_retries(stage, part, self.part_retries)
                if error:
                    failed[part.name] = error
                bar.update(part.input_rows)
        if failed:
            raise PartsFailed(stage.name, failed)

    def close(self) -> None:
        pass
