"""Shared fixtures: small synthetic pools, a loopback server, a Ray cluster started once."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
EMOJI = SHARED / "data" / "emoji"


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> Path:
    """A 240-row synthetic pool holding every noise and broken kind."""
    from curate.synth import NoiseConfig, SynthConfig, synthesize

    out = tmp_path_factory.mktemp("pool")
    synthesize(SynthConfig(n=240, seed=3, hang_s=4, noise=NoiseConfig(broken=0.1)), out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (ray.init costs seconds and ~0.7 GB)."""
    ray = pytest.importorskip("ray")
    from pipelines.ray_options import init_kwargs

    ray.init(**init_kwargs(None, 2))
    yield ray
    ray.shutdown()


def read_parts(stage_dir: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(Path(stage_dir).glob("part-*.parquet"))])


def fast_download(**overrides):
    from curate.download import DownloadConfig

    return DownloadConfig(**{"rows_per_part": 100, "thread_count": 16, "timeout_s": 2.0,
                             "allow_private_networks": True, **overrides})  # the test servers are on 127.0.0.1
