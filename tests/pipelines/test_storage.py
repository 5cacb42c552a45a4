"""Run directories on an object store: moto's S3 server on loopback is the store. A run there equals the
same run on local disk; a kill, a failed upload and a part lost on the store are all redone by a rerun."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from curate.mirror import open_copy
from curate.storage import Store, open_store
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL_DEMO = ["--runner", "local", "--set", "synth.n=80", "--set", "synth.hang_s=2", "--set", "download.timeout_s=1",
              "--set", "download.rows_per_part=20", "--set", "stages=[synth,download,score,dedup,tier,shard]",
              "--set", "score.batch_size=16", "--set", "dedup.images=false", "--set", "shard.samples_per_shard=16",
              "--no-report"]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> list[str]:
    """The demo shrunk to seconds, scored by a saved random-init tiny ViT (the same scores in every run)."""
    import torch

    from curate.models import checkpoint
    from curate.models.clip import create

    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    checkpoint.save(path, create("tiny-vit-32"), None, 0, "tiny-vit-32", {})
    return [*SMALL_DEMO, "--set", f"score.scorers=[{{name: clip, checkpoint: {path}}}]"]


def _store_copy(url: str, tmp_path: Path) -> Path:
    """A fresh reader's view of a run on the store: its trusted files only, in a new working copy."""
    os.environ["CURATE_CACHE_DIR"] = str(tmp_path / f"reader-{time.monotonic_ns()}")
    return open_copy(url, None).local


def _outputs(run: Path) -> dict:
    """What must not depend on where the run lives: statuses, scores, uid lists, .npy subsets, manifests."""
    out = {}
    for stage in ("download", "score"):
        for part in sorted((run / stage).glob("part-*.parquet")):
            table = pq.read_table(part).drop_columns([c for c in ("wall_s",) if c in pq.read_schema(part).names])
            out[f"{stage}/{part.name}"] = table.to_pydict()
    for path in sorted((run / "tier" / "subsets").glob("*")):
        out[f"subsets/{path.name}"] = (np.load(path).tolist() if path.suffix == ".npy"
                                       else pq.read_table(path).column("uid").to_pylist())
    for path in sorted((run / "shards").glob("*/manifest.json")):
        out[str(path.relative_to(run))] = json.loads(path.read_text())
    out["dedup"] = pq.read_table(run / "dedup" / "dup.parquet").to_pydict() if (run / "dedup").exists() else None
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_on_s3_equals_the_demo_on_local_disk(s3_bucket, small_demo, tmp_path):
    """The same pool (its URLs name the same port), run on local disk and on the store."""
    local, url, port = tmp_path / "local", f"{s3_bucket}/runs/demo", _free_port()
    assert main(["run", "configs/demo.yaml", "--out", str(local), *small_demo, "--set", f"synth.port={port}"]) == 0
    assert main(["run", "configs/demo.yaml", "--out", url, *small_demo, "--set", f"synth.port={port}"]) == 0
    remote = _store_copy(url, tmp_path)
    ours, theirs = _outputs(remote), _outputs(local)
    assert ours.keys() == theirs.keys() and any(k.endswith(".npy") for k in ours) and any("manifest" in k for k in ours)
    assert [k for k in ours if ours[k] != theirs[k]] == []
    # the tars themselves are on the store, byte for byte
    for manifest in sorted(local.glob("shards/*/manifest.json")):
        for shard in json.loads(manifest.read_text())["shards"]:
            tar = manifest.parent / shard["name"]
            assert (remote / tar.relative_to(local)).read_bytes() == tar.read_bytes()
    assert not any(k.startswith(".") or ".tmp" in k for k in open_store(url).listing())  # no staging left
