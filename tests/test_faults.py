"""Faults: a full disk, a part that fails every time, kill -9 of the driver during download, score,
dedup, tier and shard (and during score under the Ray runner), and a Ray worker node lost mid-stage. After each, a rerun finishes and what the run holds equals
an uninterrupted run's: part tables by uid, tar contents, and the tier uid lists and shard manifests
byte for byte."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.synth import NoiseConfig, SynthConfig, synthesize
from pipelines.run import run_download
from pipelines.runners import LocalRunner, PartsFailed
from tests.conftest import fast_download

ROOT = Path(__file__).resolve().parents[1]
CLEAN = dict(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0, near_duplicate=0)
# Not outputs: timestamps and img2dataset's timing stats, the input manifest (absolute input paths), the
# global stages' skip markers (hashes of upstream done markers, wall times included) and the shard plans
# (absolute paths of, and byte offsets into, img2dataset's tars, whose member order is the order
# downloads finished). JSON files are compared without their `wall_s`.
SKIP = ("config.resolved.yaml", "report.html", "_stats.json", "_input/manifest.json", "_done.json")


def _without_wall_time(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_time(v) for k, v in obj.items() if k != "wall_s"}
    return [_without_wall_time(v) for v in obj] if isinstance(obj, list) else obj


def snapshot(run: Path) -> dict:
    """Everything a run produced that must not depend on how often it was interrupted: Parquet tables
    (sorted by uid where they have one), download tar contents, JSON without wall times, other bytes."""
    out = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if not path.is_file() or rel.endswith(SKIP) or rel.startswith("synth/") or "/_parts/" in rel:
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            out[rel] = table.sort_by("uid") if "uid" in table.column_names else table
        elif path.suffix == ".tar" and rel.startswith("download/"):  # img2dataset writes in completion order
            with tarfile.open(path) as tar:
                out[rel] = sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers())
        elif path.suffix == ".json":
            out[rel] = _without_wall_time(json.loads(path.read_text()))
        else:
            out[rel] = path.read_bytes()
    return out


def assert_same_outputs(ours: Path, reference: Path) -> None:
    a, b = snapshot(ours), snapshot(reference)
    assert sorted(a) == sorted(b)
    different = [k for k in a if not (a[k].equals(b[k]) if hasattr(a[k], "equals") else a[k] == b[k])]
    assert different == []


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-pool")
    synthesize(SynthConfig(n=40, seed=5, noise=NoiseConfig(**CLEAN, broken=0.0)), out)
    return out


def _tiny_download(pool: Path):
    """As `curate download --serve POOL` with 10 rows per part (the served pool needs no private networks)."""
    return fast_download(input=pool / "pool.parquet", rows_per_part=10, allow_private_networks=False)


@pytest.fixture(scope="module")
def reference_download(tiny_pool, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_download(_tiny_download(tiny_pool), out, LocalRunner(), tiny_pool)
    return out


@pytest.mark.parametrize("failing", ["part", "done_marker"])
def test_a_full_disk_leaves_no_done_marker_and_the_rerun_completes(failing, tiny_pool, reference_download,
                                                                    tmp_path, monkeypatch):
    import curate.io
    import curate.stage

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "part":  # the Parquet writer dies with a short temp file on disk
        real = curate.io.pq.write_table

        def write_table(table, where, *args, **kwargs):
            where = Path(where)
            if where.parent.name == "download" and where.name.startswith(".part-00001.parquet."):
                where.write_bytes(b"PAR1")
                no_space()
            return real(table, where, *args, **kwargs)

        monkeypatch.setattr(curate.io.pq, "write_table", write_table)
    else:  # the part is written, its done marker is not
        real_done = curate.stage.write_done
        monkeypatch.setattr(curate.stage, "write_done",
                            lambda part, marker: no_space() if part.name == "part-00001" else real_done(part, marker))
    cfg = _tiny_download(tiny_pool)
    with pytest.raises(PartsFailed, match="part-00001"):
        run_download(cfg, tmp_path, LocalRunner(part_retries=0), tiny_pool)
    stage_dir = tmp_path / "download"
    stats = json.loads((stage_dir / "stats.json").read_text())
    assert stats["failed_parts"] == ["part-00001"] and stats["by_status"]["pending"] == 10
    assert sum(stats["by_status"].values()) == stats["input_rows"] == 40
    assert not (stage_dir / "_done" / "part-00001.json").exists()
    assert list(stage_dir.glob(".*.tmp")) == [] and list((stage_dir / "shards").glob(".*.tmp")) == []
    monkeypatch.undo()
    again = run_download(cfg, tmp_path, LocalRunner(part_retries=0), tiny_pool)
    assert again["failed_parts"] == [] and "pending" not in again["by_status"]
    assert_same_outputs(tmp_path, reference_download)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _env() -> dict:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_a_part_that_fails_every_time_is_named_and_the_run_exits_nonzero(tiny_pool, reference_download, tmp_path):
    """shards/00001.tar is a directory, so placing part 1's tar fails on every attempt."""
    blocker = tmp_path / "download" / "shards" / "00001.tar"
    (blocker / "in-the-way").mkdir(parents=True)
    cmd = _cli("download", "--input", str(tiny_pool / "pool.parquet"), "--serve", str(tiny_pool), "--out",
               str(tmp_path), "--runner", "local", "--set", "download.rows_per_part=10",
               "--set", "download.thread_count=16", "--set", "download.timeout_s=2")
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "1 part(s) failed for good: part-00001" in failed.stderr
    assert failed.stderr.count("download part-00001 failed (attempt") == 3  # the first try and 2 retries
    shutil.rmtree(blocker)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_outputs(tmp_path, reference_download)


# --- kill -9 of the driver ------------------------------------------------------------------------

PIPELINE = """\
name: faults
stages: [synth, download, score, dedup, tier, shard]
runner: {{kind: local, part_retries: 1}}
synth:
  n: 160
  seed: 6
  hang_s: 4
  noise: {{broken: 0.05, broken_kinds: [broken_timeout], exact_duplicate: 0.05, near_duplicate: 0.05}}
download: {{rows_per_part: 20, thread_count: 16, timeout_s: 2}}
score:
  scorers: [{{name: x, checkpoint: {checkpoint}}}]
  batch_size: 4
  device: cpu
dedup: {{images: false}}
shard: {{samples_per_shard: 16}}
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(config path, a pool to copy into each run, an uninterrupted run)."""
    import torch

    from pipelines.config import load_config
    from train import checkpoint
    from train.models import create

    root = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    checkpoint.save(root / "model.pt", create("tiny-vit-64"), None, 0, "tiny-vit-64", {})
    config = root / "pipeline.yaml"
    config.write_text(PIPELINE.format(checkpoint=root / "model.pt"))
    synthesize(load_config(config).synth, root / "pool")
    reference = _fresh_run(root, "reference")
    before = set(root.rglob("*"))
    done = subprocess.run(_cli("run", str(config), "--out", str(reference)), capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p for p in set(root.rglob("*")) - before if not p.is_relative_to(reference)] == []  # all in the run
    return config, root, reference


def _fresh_run(root: Path, name: str) -> Path:
    """A run directory holding a copy of the shared pool (same URLs, so the same uids)."""
    run = root / name
    shutil.copytree(root / "pool", run / "synth")
    return run


def _kill_when(cmd: list[str], ready, timeout_s: float = 300) -> None:
    """Start `cmd`, SIGKILL it (the driver process) the moment `ready(stderr_so_far)` holds; fails if it
    finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=ROOT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not ready("".join(lines)):
            assert proc.poll() is None, f"the run ended before the fault: {''.join(lines)[-2000:]}"
            assert time.monotonic() < deadline, "the fault point never came"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        reader.join(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _markers(run: Path, stage: str) -> int:
    return len(list((run / stage / "_done").glob("part-*.json")))


def _shard_markers(run: Path) -> int:
    return len(list((run / "shards").glob("*/_parts/_done/part-*.json")))


def _fault_point(stage: str, run: Path, reference: Path):
    """When to kill: with some but not all parts done (stages with parts), or as the driver announces
    the stage (dedup, tier: one step each)."""
    if stage in ("download", "score"):
        parts = _markers(reference, "download")
        return lambda _: 1 <= _markers(run, stage) < parts
    if stage == "shard":
        return lambda _: 1 <= _shard_markers(run) < _shard_markers(reference)
    return lambda stderr: f"stage {stage}\n" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage,runner", [("download", "local"), ("score", "local"), ("dedup", "local"),
                                          ("tier", "local"), ("shard", "local"),
                                          pytest.param("score", "ray", marks=pytest.mark.ray)])
def test_kill_9_of_the_driver_then_rerun_equals_an_uninterrupted_run(pipeline, stage, runner):
    """Under the Ray runner the driver started the local Ray cluster; its death takes the cluster down
    and the rerun starts a fresh one."""
    config, root, reference = pipeline
    run = _fresh_run(root, f"killed-in-{stage}-{runner}")
    cmd = _cli("run", str(config), "--out", str(run), "--runner", runner)
    _kill_when(cmd, _fault_point(stage, run, reference))
    assert not (run / "shards" / "stats.json").exists()  # the run was cut short
    print(f"killed during {stage} ({runner}): download {_markers(run, 'download')}, score "
          f"{_markers(run, 'score')}, dedup {(run / 'dedup' / 'stats.json').exists()}, tier "
          f"{(run / 'tier' / 'counts.json').exists()}, shard parts {_shard_markers(run)}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_outputs(run, reference)
    assert sorted(p.name for p in (run / "tier" / "subsets").glob("*.npy"))  # the uid lists were compared
    assert list((run / "shards").glob("*/manifest.json"))  # and so were the shard manifests


# --- a Ray worker node lost mid-stage -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.ray
def test_losing_a_worker_node_mid_download_loses_nothing(tmp_path):
    """The head has no CPUs, so every part runs on the one worker node (its own raylet). That node is
    removed while it works on a part (after the first part is done, before the last); a fresh node
    takes over, Ray retries the lost task there, and the result equals a local run's."""
    from ray.cluster_utils import Cluster

    pool = tmp_path / "pool"
    synthesize(SynthConfig(n=120, seed=7, hang_s=3, noise=NoiseConfig(**CLEAN, broken=0.1,
                                                                    broken_kinds=["broken_timeout"])), pool)
    reference = tmp_path / "reference"
    cfg = fast_download(input=pool / "pool.parquet", rows_per_part=15, allow_private_networks=False)  # as the CLI's
    run_download(cfg, reference, LocalRunner(), pool)
    parts = _markers(reference, "download")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=1)
    run = tmp_path / "run"
    cmd = _cli("download", "--input", str(pool / "pool.parquet"), "--serve", str(pool), "--out", str(run),
               "--ray-address", cluster.address, "--set", "download.rows_per_part=15",
               "--set", "download.thread_count=16", "--set", "download.timeout_s=2")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 240
        while _markers(run, "download") < 1:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.02)
        cluster.add_node(num_cpus=1)
        cluster.remove_node(worker)
        done_at_loss = _markers(run, "download")
        out, err = proc.communicate(timeout=300)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, err[-3000:]
    assert done_at_loss < parts  # the lost node was working on a part
    print(f"worker node removed with {done_at_loss} of {parts} parts done")
    stats = json.loads((run / "download" / "stats.json").read_text())
    assert stats["input_rows"] == 120 == sum(stats["by_status"].values()) and stats["failed_parts"] == []
    assert_same_outputs(run, reference)
