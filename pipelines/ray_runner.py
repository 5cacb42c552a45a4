"""The Ray runner: one Ray task per part, with retries; starts a local Ray unless given an address."""
from __future__ import annotations

import logging

from curate.io import Part
from curate.stage import MapStage, run_part
from pipelines.ray_options import init_kwargs, task_options
from pipelines.runners import PartsFailed, part_rows, pending_parts, progress

log = logging.getLogger(__name__)


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, part_retries: int = 2):
        self.address, self.num_cpus, self.part_retries = address, num_cpus, part_retries
        self._started_here = False

    def _ensure_ray(self):
        import ray

        if not ray.is_initialized():
            ray.init(**init_kwargs(self.address, self.num_cpus))
            self._started_here = True
        return ray

    def map_parts(self, stage: MapStage, parts: list[Part]) -> None:
        todo = pending_parts(stage, parts)
        if not todo:
            return
        ray = self._ensure_ray()
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
                bar.update(part_rows(part))
        if failed:
            raise PartsFailed(stage.name, failed)

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False
