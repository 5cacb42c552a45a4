"""`--ray-address` joins a running cluster: a head and a worker node (separate raylets) on loopback."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def test_download_joins_a_two_node_cluster(small_pool, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
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
