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


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server on a free loopback port for the whole session: a real S3 peer over HTTP."""
    pytest.importorskip("moto", reason="moto[server] is in the test extra: pip install -e '.[test]'")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch, tmp_path, request) -> str:
    """A fresh bucket on the moto server, reached through the usual AWS environment; returns s3://bucket.
    Working copies of runs go under this test's tmp_path."""
    import re
    import uuid

    import boto3

    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "CURATE_CACHE_DIR": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"{re.sub('[^a-z0-9]', '-', request.node.name.lower())[:40].strip('-')}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
