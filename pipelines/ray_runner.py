"""The Ray runner: one Ray task per part, with retries; starts a local Ray unless given an address.
Tasks and actors stage parts; the driver commits each result it receives (see pipelines/runners.py).
A run on an object store (`copy`, its working copy) needs no shared disk: portable stages stage their parts
through the store on any node, the others run in the driver, next to the working copy."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from curate.io import Part
from curate.mirror import RemoteRun, stage_through_store
from curate.stage import MapStage, stage_part
from pipelines.ray_options import (actor_pool_kwargs, global_task_options, init_kwargs, largest_node_cpus, node_id,
                                   task_options)
from pipelines.runners import LocalRunner, commit, pending_parts, stage_with_retries, tally

log = logging.getLogger(__name__)


def stage_on_node(stage: MapStage, part: Part, remote: RemoteRun | None = None) -> tuple[Part, dict]:
    """A Ray task: stage one part (through the store of a `remote` run), its marker naming the Ray node."""
    if remote is not None:
        return stage_through_store(stage, part, remote, node_id())
    return stage_part(stage, part, node_id())


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, part_retries: int = 2,
                 copy=None):
        self.address, self.num_cpus, self.part_retries, self.copy = address, num_cpus, part_retries, copy
        self._started_here = False

    def ensure_ray(self):
        import ray

        if not ray.is_initialized():
            ray.init(**init_kwargs(self.address, self.num_cpus))
            self._started_here = True
        return ray

    def map_parts(self, stage: MapStage, parts: list[Part]) -> None:
        if self.copy is not None and not stage.portable:  # it reads the working copy: run it here
            LocalRunner(self.part_retries, self.copy).map_parts(stage, parts)
            return
        todo = pending_parts(stage, parts)
        if not todo:
            return
        remote = None
        if self.copy is not None:
            self.copy.push()  # the inputs the workers fetch
            remote = self.copy.remote
        if stage.resources.actors > 0:
            self._map_with_actors(stage, todo, remote)
            return
        ray = self.ensure_ray()
        task = ray.remote(stage_on_node).options(**task_options(stage.resources, self.part_retries))
        refs = {task.remote(stage, part, remote): part for part in todo}
        tally(stage, todo, self._finished(ray, stage, refs), " (ray)")

    def parallel(self, calls: list[tuple[Callable, tuple]], desc: str) -> list:
        """A global step's independent tasks as Ray tasks (results in order). On a run kept on a store they
        read and write the driver's working copy, so they run on the driver's node."""
        ray = self.ensure_ray()
        options = global_task_options(self.part_retries, node_id() if self.copy is not None else None)
        task = ray.remote(_call).options(**options)
        refs = [task.remote(fn, args) for fn, args in calls]
        waiting, bar = list(refs), tqdm(total=len(refs), desc=f"{desc} (ray)", unit="task", mininterval=2, leave=False)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            bar.update(len(done))
        bar.close()
        return ray.get(refs)

    def _commit(self, stage: MapStage, staged: tuple[Part, dict]) -> str | None:
        """Commit what a worker staged: on the store for a run there, else in the run directory."""
        return commit(stage, staged, self.copy, on_store=self.copy is not None)

    def _finished(self, ray, stage: MapStage, refs: dict) -> Iterator[tuple[Part, str | None]]:
        """(part, error or None) of each task as it finishes, its result committed."""
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            part = refs[ready[0]]
            try:
                error = self._commit(stage, ray.get(ready[0]))
            except Exception as err:  # the task already used its retries
                log.error("%s %s failed for good: %s", stage.name, part.name, err)
                error = str(err)[-2000:]
            yield part, error

    def _map_with_actors(self, stage: MapStage, todo: list[Part], remote: RemoteRun | None) -> None:
        """Model stages: Ray Data `map_batches` over the parts with an actor pool (model loaded once per
        actor); each actor stages whole parts and the driver commits them, as on the task path."""
        ray = self.ensure_ray()
        by_name = {p.name: p for p in todo}
        items = [{"index": p.index, "input": str(p.input_path), "stage_dir": str(p.stage_dir)} for p in todo]
        results = ray.data.from_items(items).map_batches(
            PartActor, fn_constructor_args=(stage, self.part_retries, remote),
            **actor_pool_kwargs(stage.resources, largest_node_cpus(ray)))
        tally(stage, todo, ((by_name[row["part"]], self._commit_row(stage, by_name[row["part"]], row))
                            for row in results.iter_rows()), " (ray actors)")

    def _commit_row(self, stage: MapStage, part: Part, row: dict) -> str | None:
        error = row["error"] or self._commit(stage, (replace(part, attempt=row["attempt"]), json.loads(row["marker"])))
        if error:
            log.error("%s %s failed for good:\n%s", stage.name, part.name, error)
        return error

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


def _call(fn: Callable, args: tuple):
    """A Ray task: one call of a global step."""
    return fn(*args)


class PartActor:
    """A Ray Data actor: sets the stage up once, then stages whole parts (one per batch) and returns, per
    part, its attempt and marker (or its error) for the driver to commit."""

    def __init__(self, stage: MapStage, retries: int, remote: RemoteRun | None = None):
        self.stage, self.retries, self.remote = stage, retries, remote

    def __call__(self, batch):
        import pyarrow as pa

        rows: dict[str, list] = {"part": [], "attempt": [], "marker": [], "error": []}
        for index, input_path, stage_dir in zip(*(batch.column(c).to_pylist() for c in ("index", "input", "stage_dir"))):
            part = Part(index, Path(input_path), Path(stage_dir))
            staged, error = stage_with_retries(self.stage, part, self.retries, node_id(), self.remote)
            rows["part"].append(part.name)
            rows["attempt"].append(staged[0].attempt if staged else None)
            rows["marker"].append(json.dumps(staged[1]) if staged else None)
            rows["error"].append(error)
        return pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
