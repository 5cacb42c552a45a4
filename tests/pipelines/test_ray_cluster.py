"""`--ray-address` joins a running cluster: a head and a worker node (separate raylets) on loopback."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def test_download_joins_a_two_node_cluster_and_both_nodes_run_parts(small_pool, tmp_path):
    """Each part's done marker names the Ray node that ran it: both the head and the worker node did."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    nodes = {cluster.head_node.node_id, worker.node_id}
    try:
        cmd = [sys.executable, "-m", "pipelines.cli", "download", "--input", str(small_pool / "pool.parquet"),
               "--serve", str(small_pool), "--out", str(tmp_path), "--ray-address", cluster.address,
               "--set", "download.rows_per_part=60", "--set", "download.timeout_s=2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "download" / "stats.json").read_text())
    assert stats["input_rows"] == 240 == sum(stats["by_status"].values()) and stats["parts"] == 4
    ran_on = [json.loads(p.read_text())["node"] for p in sorted((tmp_path / "download" / "_done").glob("*.json"))]
    assert len(ran_on) == 4 and set(ran_on) == nodes and len(nodes) == 2


def test_a_cluster_with_no_shared_disk_downloads_through_the_store(small_pool, s3_bucket, tmp_path, monkeypatch):
    """The worker raylet has its own temp and working directories (its tasks stage parts under its own TMPDIR),
    and the run directory is on the S3 peer: each part's input comes from the store and its outputs go back
    there. Both nodes run parts (their markers say which) and the statuses equal a one-node run's."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.cluster_utils import Cluster

    from curate.mirror import open_copy
    from curate.storage import StorageConfig
    from pipelines.cli import main

    args = ["--input", str(small_pool / "pool.parquet"), "--serve", str(small_pool),
            "--set", "download.rows_per_part=60", "--set", "download.timeout_s=2", "--set", "download.retry_transient=0"]
    assert main(["download", "--out", str(tmp_path / "one-node"), "--runner", "local", *args]) == 0

    worker_home = tmp_path / "worker"
    (worker_home / "tmp").mkdir(parents=True)
    ray_temp = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    with monkeypatch.context() as node_env:  # what the worker raylet (and so its workers) inherits
        node_env.chdir(worker_home)
        node_env.setenv("TMPDIR", str(worker_home / "tmp"))
        worker = cluster.add_node(num_cpus=1, temp_dir=str(ray_temp))
    nodes = {cluster.head_node.node_id, worker.node_id}
    url = f"{s3_bucket}/cluster"
    try:
        cmd = [sys.executable, "-m", "pipelines.cli", "download", "--out", url, "--ray-address", cluster.address, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        assert any(ray_temp.glob("session_*"))  # the worker node keeps its own temp directory
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]

    copy = open_copy(url, StorageConfig(cache_dir=tmp_path / "reader"))  # a fresh reader of the store
    run = copy.local
    assert not [rel for rel in copy.store.listing() if ".tmp" in rel]  # every staged attempt was moved into place
    ran_on = [json.loads(p.read_text())["node"] for p in sorted((run / "download" / "_done").glob("*.json"))]
    assert len(ran_on) == 4 and set(ran_on) == nodes and len(nodes) == 2

    def statuses(folder):
        table = pa.concat_tables(pq.read_table(p, columns=["uid", "status"])
                                 for p in sorted((folder / "download").glob("part-*.parquet")))
        return dict(zip(table.column("uid").to_pylist(), table.column("status").to_pylist()))
    assert statuses(run) == statuses(tmp_path / "one-node") and len(statuses(run)) == 240
    tars = sorted(p.name for p in (run / "download").rglob("*.tar"))
    assert tars == sorted(p.name for p in (tmp_path / "one-node" / "download").rglob("*.tar")) and tars
