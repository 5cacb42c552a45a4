"""Shared fixtures: small synthetic pools, a loopback server, a Ray cluster started once. Under CI=true a
test that would skip because ../shared/data is missing fails instead."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"
EMOJI = SHARED / "data" / "emoji"


def _skipped_for_shared_data(item) -> str | None:
    """The reason of a `skipif` that holds and names the shared data, if the test has one."""
    for mark in item.iter_markers("skipif"):
        reason = mark.kwargs.get("reason", "")
        if mark.args and mark.args[0] is True and "shared" in reason:
            return reason
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """CI must run the tests on real pairs: there a missing ../shared/data is a failure, not a skip."""
    outcome = yield
    report = outcome.get_result()
    reason = _skipped_for_shared_data(item) if report.skipped else None
    if reason and os.environ.get("CI", "").lower() in ("1", "true"):
        report.outcome = "failed"
        report.longrepr = f"{reason} ({SHARED / 'data'}): under CI=true this test must run, not skip"


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> Path:
    """A 240-row synthetic pool holding every noise and broken kind."""
    from curate.synthetic.synth import NoiseConfig, SynthConfig, synthesize

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
    from curate.download.download import DownloadConfig

    return DownloadConfig(**{"rows_per_part": 100, "thread_count": 16, "timeout_s": 2.0,
                             "allow_private_networks": True, **overrides})  # the test servers are on 127.0.0.1
