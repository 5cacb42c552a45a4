"""Run directories on an object store: moto's S3 server on loopback is the store. A run there equals the
same run on local disk; a kill, a failed upload and a part lost on the store are all redone by a rerun."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from curate.mirror import open_copy
from curate.storage import StorageConfig, Store, open_store
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
    return open_copy(url, StorageConfig(cache_dir=tmp_path / f"reader-{time.monotonic_ns()}")).local


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

    # a stage command and the report on the same run: they read and write the store
    assert main(["tier", "--out", url, "--runner", "local", "--set", "tier.standard_fractions=[0.5]"]) == 0
    assert open_store(url).exists("tier/subsets/top50.npy") and not open_store(url).exists("report.html")
    assert main(["report", url]) == 0
    assert b"<html" in (_store_copy(url, tmp_path) / "report.html").read_bytes()[:200].lower()


def test_train_and_eval_read_pairs_and_write_checkpoints_on_the_store(s3_bucket, tmp_path, capsys):
    from tests.train.test_train import _pairs_dir

    pairs, store = _pairs_dir(tmp_path / "pairs", n=16), open_store(f"{s3_bucket}/pairs")
    for path in sorted(p for p in pairs.rglob("*") if p.is_file()):
        store.put(path, path.relative_to(pairs).as_posix())
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny-vit-32", "data": {"pairs": f"{s3_bucket}/pairs", "workers": 0},
                                      "samples_seen": 32, "batch_size": 16, "warmup_steps": 1}))
    assert main(["train", str(config), "--out", f"{s3_bucket}/train"]) == 0
    trained = open_store(f"{s3_bucket}/train")
    assert trained.exists("checkpoint.pt") and json.loads(capsys.readouterr().out)["samples_seen"] == 32
    assert main(["eval", "--checkpoint", f"{s3_bucket}/train/checkpoint.pt", "--eval-set", f"{s3_bucket}/pairs",
                 "--class-column", "shape"]) == 0
    assert "shape" in json.dumps(json.loads(capsys.readouterr().out))


def _parts(run: Path, stage: str) -> dict:
    return {p.name: pq.read_table(p).to_pydict() for p in sorted((run / stage).glob("part-*.parquet"))}


def _markers(store: Store, stage: str) -> int:
    return sum(1 for rel in store.listing(f"{stage}/_done") if rel.endswith(".json"))


@pytest.fixture
def scored(small_demo, tmp_path) -> tuple[list[str], Path]:
    """(arguments of a synth -> download -> score run in 4 parts, that run on local disk). No transient
    retries: a rerun would fetch the timed-out rows of finished parts once more (tests/cross/test_faults.py)."""
    args = [*small_demo, "--set", "stages=[synth,download,score]", "--set", f"synth.port={_free_port()}",
            "--set", "score.batch_size=2", "--set", "download.retry_transient=0"]
    local = tmp_path / "local"
    assert main(["run", "configs/demo.yaml", "--out", str(local), *args]) == 0
    return args, local


def test_kill_9_mid_score_on_the_store_then_rerun_equals_an_uninterrupted_run(s3_bucket, scored, tmp_path):
    args, local = scored
    url = f"{s3_bucket}/killed"
    store = open_store(url)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "configs/demo.yaml", "--out", url, *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not 1 <= _markers(store, "score") < 4:
            assert proc.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, "score never started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    at_kill = _markers(store, "score")
    assert 1 <= at_kill < 4 and not store.exists("score/stats.json")
    assert main(["run", "configs/demo.yaml", "--out", url, *args]) == 0
    remote = _store_copy(url, tmp_path)
    assert _parts(remote, "score") == _parts(local, "score") and len(_parts(local, "score")) == 4
    assert _parts(remote, "download") == _parts(local, "download")


def test_a_failed_upload_leaves_no_marker_and_the_rerun_redoes_the_part(s3_bucket, scored, tmp_path, monkeypatch):
    """The upload of score part 1 dies half-way (the connection drops): the run fails naming it, the store has
    no marker for it, and the rerun makes it."""
    args, local = scored
    url, put = f"{s3_bucket}/flaky", Store.put

    def flaky_put(self, path, rel):
        if rel == "score/part-00001.parquet":
            with self.fs.open_output_stream(self.path(rel)) as out:
                out.write(Path(path).read_bytes()[:100])
                raise ConnectionResetError("the connection dropped mid-upload")
        return put(self, path, rel)

    monkeypatch.setattr(Store, "put", flaky_put)
    assert main(["run", "configs/demo.yaml", "--out", url, *args]) == 1
    store = open_store(url)
    assert not store.exists("score/_done/part-00001.json") and _markers(store, "score") == 3
    monkeypatch.setattr(Store, "put", put)
    assert main(["run", "configs/demo.yaml", "--out", url, *args]) == 0
    assert _parts(_store_copy(url, tmp_path), "score") == _parts(local, "score")


def test_a_part_deleted_from_the_store_is_found_by_status_and_redone(s3_bucket, scored, tmp_path, capsys):
    args, local = scored
    url = f"{s3_bucket}/lost"
    assert main(["run", "configs/demo.yaml", "--out", url, *args]) == 0
    open_store(url).delete("score/part-00002.parquet")  # behind the finished run's back
    capsys.readouterr()
    assert main(["status", url, "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["stage"] == "score")
    assert (row["done"], row["pending"], row["state"]) == (3, 1, "incomplete")
    assert main(["run", "configs/demo.yaml", "--out", url, *args]) == 0
    assert open_store(url).exists("score/part-00002.parquet")
    assert _parts(_store_copy(url, tmp_path), "score") == _parts(local, "score")


@pytest.mark.parametrize("setting", ["AWS_ENDPOINT_URL", "storage.endpoint_url"])
def test_an_unreachable_store_is_exit_2_naming_the_setting_before_any_work(s3_bucket, setting, monkeypatch,
                                                                           tmp_path, capsys):
    dead = f"http://127.0.0.1:{_free_port()}"
    extra = ["--set", f"storage.endpoint_url={dead}"] if setting.startswith("storage") else []
    if not extra:
        monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    started = time.monotonic()
    assert main(["run", "configs/demo.yaml", "--out", f"{s3_bucket}/run", *extra]) == 2
    err = capsys.readouterr().err
    assert setting in err and "cannot reach" in err and time.monotonic() - started < 30
    assert not (tmp_path / "cache").exists()  # no working copy, no work


def test_a_missing_bucket_or_unknown_scheme_is_exit_2_naming_it(s3_bucket, tmp_path, capsys):
    assert main(["run", "configs/demo.yaml", "--out", "s3://no-such-bucket-here/run"]) == 2
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err
    assert main(["status", "s3://no-such-bucket-here/run"]) == 2
    assert main(["run", "configs/demo.yaml", "--out", "nosuchscheme://x/run"]) == 2
    assert "nosuchscheme" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_credentials_from_the_config_never_reach_the_resolved_config_or_the_logs(s3_bucket, monkeypatch, tmp_path,
                                                                                  capfd, caplog):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"{s3_bucket}/secret"
    assert main(["run", "configs/demo.yaml", "--out", url, "-v", "--runner", "local", "--set", "stages=[synth]",
                 "--set", "synth.n=20", "--set", "storage.access_key_id=AKIDSECRETVALUE1",
                 "--set", "storage.secret_access_key=SECRETKEYVALUE2"]) == 0
    resolved = _store_copy(url, tmp_path) / "config.resolved.yaml"
    text = resolved.read_text()
    assert "storage" in yaml.safe_load(text) and "SECRET" not in text and "access_key" not in text
    out, err = capfd.readouterr()
    assert "SECRETKEYVALUE2" not in out + err + caplog.text and "AKIDSECRETVALUE1" not in out + err + caplog.text
