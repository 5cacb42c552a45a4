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


def actor_pool_kwargs(resources: Resources) -> dict:
    """`Dataset.map_batches` arguments for model stages: one part per batch, a pool of actors that
    each load the model once."""
    from ray.data import ActorPoolStrategy

    return {"batch_size": 1, "batch_format": "pyarrow", "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus, "compute": ActorPoolStrategy(size=resources.actors)}
