"""`--ray-address` joins a running cluster: a head and a worker node (separate raylets) on loopback."""
import json
import os
import subprocess
import sys

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
