"""Runners execute a MapStage over parts. Workers stage each part (`curate.stage.stage_part`) and the
driver commits what it receives, so outputs match across runners and a part counts as done only once the
driver that asked for it has its result."""
from __future__ import annotations

import logging
import traceback
from typing import Callable, Iterable

from tqdm import tqdm

from curate.io import Part
from curate.mirror import RemoteRun, WorkingCopy, stage_through_store
from curate.stage import MapStage, PartsFailed, commit_part, is_done, run_in_process, stage_part

log = logging.getLogger(__name__)


def pending_parts(stage: MapStage, parts: list[Part]) -> list[Part]:
    """Parts without a done marker from the same input and stage config (or that the stage redoes)."""
    todo = [part for part in parts if not is_done(stage, part)]
    skipped = len(parts) - len(todo)
    if skipped:
        log.info("%s: %d of %d parts already done, skipping them", stage.name, skipped, len(parts))
    return todo


def progress(stage: MapStage, parts: list[Part], suffix: str = "") -> tqdm:
    """A bar in rows (rate and ETA in rows/s) over the given parts."""
    rows = sum(p.input_rows for p in parts)
    return tqdm(total=rows, desc=f"{stage.name}{suffix}", unit="row", unit_scale=True)


def stage_with_retries(stage: MapStage, part: Part, retries: int, node: str | None = None,
                       remote: RemoteRun | None = None) -> tuple[tuple[Part, dict] | None, str | None]:
    """(the staged attempt and its marker, None) on success, else (None, the last traceback); a failed
    part must not stop the others. With `remote`, the part is staged through the run's store."""
    error = None
    for attempt in range(1, retries + 2):
        try:
            if remote is not None:
                return stage_through_store(stage, part, remote, node), None
            return stage_part(stage, part, node), None
        except Exception:
            error = traceback.format_exc()
            log.error("%s %s failed (attempt %d):\n%s", stage.name, part.name, attempt, error)
    return None, error


def commit(stage: MapStage, staged: tuple[Part, dict], copy: WorkingCopy | None = None,
           on_store: bool = False) -> str | None:
    """Commit a staged part: staged in the run directory (then published to the store of the run's working
    copy `copy`, if any) or, `on_store`, staged on that store by a worker elsewhere. None on success, else the
    traceback (a full disk or a failed upload fails the part, not the run)."""
    try:
        if on_store:
            copy.commit_staged(*staged)
        else:
            placed = commit_part(*staged)
            if copy is not None:
                copy.publish(placed)
        return None
    except Exception:
        error = traceback.format_exc()
        log.error("%s %s could not be committed:\n%s", stage.name, staged[0].name, error)
        return error


def tally(stage: MapStage, todo: list[Part], outcomes: Iterable[tuple[Part, str | None]], suffix: str = "") -> None:
    """Count each (part, error or None) on a progress bar as it comes; then raise PartsFailed naming the
    parts that failed for good, if any."""
    failed: dict[str, str] = {}
    with progress(stage, todo, suffix) as bar:
        for part, error in outcomes:
            if error:
                failed[part.name] = error
            bar.update(part.input_rows)
    if failed:
        raise PartsFailed(stage.name, failed)


class LocalRunner:
    """In-process, one part after another: for debugging and fast tests."""

    name = "local"

    def __init__(self, part_retries: int = 2, copy=None):
        self.part_retries, self.copy = part_retries, copy

    def map_parts(self, stage: MapStage, parts: list[Part]) -> None:
        todo = pending_parts(stage, parts)
        tally(stage, todo, ((part, self._run(stage, part)) for part in todo))

    def parallel(self, calls: list[tuple[Callable, tuple]], desc: str) -> list:
        return run_in_process(calls, desc)

    def _run(self, stage: MapStage, part: Part) -> str | None:
        staged, error = stage_with_retries(stage, part, self.part_retries)
        return error or commit(stage, staged, self.copy)

    def close(self) -> None:
        pass
