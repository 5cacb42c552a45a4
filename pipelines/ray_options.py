"""Every Ray keyword the project uses lives here, so a Ray upgrade touches one file."""
from __future__ import annotations

import os

from curate.stage import Resources

WORKER_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}


def init_kwargs(address: str | None, num_cpus: int | None) -> dict:
    """`ray.init` arguments: join `address` if given, else start a local Ray quietly."""
    kwargs: dict = {"runtime_env": {"env_vars": WORKER_ENV}, "log_to_driver": True}
    if address:
        return {**kwargs, "address": address}
    return {**kwargs, "num_cpus": num_cpus, "include_dashboard": False}


def task_options(resources: Resources, retries: int) -> dict:
    """Options for one-task-per-part stages: retried on worker death and on exceptions."""
    return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
            "max_retries": retries, "retry_exceptions": True}


def global_task_options(retries: int, node: str | None = None) -> dict:
    """Options for a global step's tasks: a CPU each, retried; pinned to `node` when given."""
    options: dict = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": True}
    if node is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    return options


def largest_node_cpus(ray) -> float:
    """The most CPUs any live node of the cluster has (an actor's CPUs must all be on one node)."""
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def actor_pool_kwargs(resources: Resources, node_cpus: float) -> dict:
    """`Dataset.map_batches` arguments for model stages: one part per batch, a pool of actors that
    each load the model once, each asking for no more CPUs than the largest node has (more would never start)."""
    from ray.data import ActorPoolStrategy

    return {"batch_size": 1, "batch_format": "pyarrow", "num_cpus": min(resources.num_cpus, max(node_cpus, 1.0)),
            "num_gpus": resources.num_gpus, "compute": ActorPoolStrategy(size=resources.actors)}


def node_id() -> str:
    """The Ray node this process runs on (tasks and actors record it in their parts' done markers)."""
    import ray

    return ray.get_runtime_context().get_node_id()
