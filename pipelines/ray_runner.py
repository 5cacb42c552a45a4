"""The Ray runner: one Ray task per part, with retries; starts a local Ray unless given an address."""
from __future__ import annotations

import logging
from pathlib import Path

from curate.io import Part
from curate.stage import MapStage, run_part
from pipelines.ray_options import actor_pool_kwargs, init_kwargs, largest_node_cpus, task_options
from pipelines.runners import PartsFailed, pending_parts, progress, run_with_retries

log = logging.getLogger(__name__)


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, part_retries: int = 2):
        self.address, self.num_cpus, self.part_retries = address, num_cpus, part_retries
        self._started_here = False

    def ensure_ray(self):
        import ray

        if not ray.is_initialized():
            ray.init(**init_kwargs(self.address, self.num_cpus))
            self._started_here = True
        return ray

    def map_parts(self, stage: MapStage, parts: list[Part]) -> None:
        todo = pending_parts(stage, parts)
        if not todo:
            return
        if stage.resources.actors > 0:
            self._map_with_actors(stage, todo)
            return
        ray = self.ensure_ray()
        task = ray.remote(run_part).options(**task_options(stage.resources, self.part_retries))
        refs = {task.remote(stage, part): part for part in todo}
        failed: dict[str, str] = {}
        with progress(stage, todo, " (ray)") as bar:
            waiting = list(refs)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                part = refs[ready[0]]
                try:
                    ray.get(ready[0])
                except Exception as err:  # the task already used its retries
                    log.error("%s %s failed for good: %s", stage.name, part.name, err)
                    failed[part.name] = str(err)[-2000:]
                bar.update(part.input_rows)
        if failed:
            raise PartsFailed(stage.name, failed)

    def _map_with_actors(self, stage: MapStage, todo: list[Part]) -> None:
        """Model stages: Ray Data `map_batches` over the parts with an actor pool (model loaded once per
        actor); each actor runs whole parts, so outputs and done markers match the task path."""
        ray = self.ensure_ray()
        by_name = {p.name: p for p in todo}
        items = [{"index": p.index, "input": str(p.input_path), "stage_dir": str(p.stage_dir)} for p in todo]
        results = ray.data.from_items(items).map_batches(
            PartActor, fn_constructor_args=(stage, self.part_retries),
            **actor_pool_kwargs(stage.resources, largest_node_cpus(ray)))
        failed: dict[str, str] = {}
        with progress(stage, todo, " (ray actors)") as bar:
            for row in results.iter_rows():
                if row["error"]:
                    log.error("%s %s failed for good:\n%s", stage.name, row["part"], row["error"])
                    failed[row["part"]] = row["error"]
                bar.update(by_name[row["part"]].input_rows)
        if failed:
            raise PartsFailed(stage.name, failed)

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


class PartActor:
    """A Ray Data actor: sets the stage up once, then runs whole parts (one per batch)."""

    def __init__(self, stage: MapStage, retries: int):
        self.stage, self.retries = stage, retries

    def __call__(self, batch):
        import pyarrow as pa

        names, errors = [], []
        for index, input_path, stage_dir in zip(*(batch.column(c).to_pylist() for c in ("index", "input", "stage_dir"))):
            part = Part(index, Path(input_path), Path(stage_dir))
            names.append(part.name)
            errors.append(run_with_retries(self.stage, part, self.retries))
        return pa.table({"part": names, "error": pa.array(errors, pa.string())})
