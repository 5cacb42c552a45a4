"""Faults: a full disk, a part that cannot be placed, kill -9 of the driver's process group during
download, score, dedup, tier and shard (and during download and score under the Ray runner), and a Ray
worker node lost mid-stage. After each, a rerun finishes and what the run holds equals an uninterrupted
run's: part tables by uid, tar contents, and the tier uid lists and shard manifests byte for byte. The
fast cases (small pools) run in `make test`; the slow ones run the whole pipeline."""
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

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.download.download import run_download
from curate.io import MARKER_CIRCUMSTANCES
from curate.synthetic.synth import NoiseConfig, SynthConfig, synthesize
from pipelines.runners import LocalRunner, PartsFailed
from tests.conftest import ROOT, fast_download

CLEAN = dict(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0, near_duplicate=0)
# Not outputs: timestamps and img2dataset's timing stats, the input manifest (absolute input paths), the
# global stages' skip markers (hashes of upstream done markers, wall times included) and the shard plans
# (absolute paths of, and byte offsets into, img2dataset's tars, whose member order is the order
# downloads finished). JSON files are compared without where and how long (done markers' `node`, `wall_s`).
SKIP = ("config.resolved.yaml", "report.html", "_stats.json", "_input/manifest.json", "_done.json")


def _without_circumstances(obj):
    if isinstance(obj, dict):
        return {k: _without_circumstances(v) for k, v in obj.items() if k not in MARKER_CIRCUMSTANCES}
    return [_without_circumstances(v) for v in obj] if isinstance(obj, list) else obj


def snapshot(run: Path) -> dict:
    """Everything a run produced that must not depend on how often it was interrupted: Parquet tables
    (sorted by uid where they have one), download tar contents, JSON without wall times and nodes, other bytes."""
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
            out[rel] = _without_circumstances(json.loads(path.read_text()))
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

    if failing == "part":  # the Parquet writer dies with a short file in the attempt's staging folder
        real = curate.io.pq.write_table

        def write_table(table, where, *args, **kwargs):
            where = Path(where)
            if where.parent.name.startswith(".part-00001.") and where.name == "part-00001.parquet":
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
def test_a_part_that_cannot_be_placed_is_named_and_the_run_exits_nonzero(tiny_pool, reference_download, tmp_path):
    """shards/00001.tar is a directory, so the driver cannot move part 1's tar into place: the part
    fails without a done marker (its download is not repeated in this run) and the rerun places it."""
    blocker = tmp_path / "download" / "shards" / "00001.tar"
    (blocker / "in-the-way").mkdir(parents=True)
    cmd = _cli("download", "--input", str(tiny_pool / "pool.parquet"), "--serve", str(tiny_pool), "--out",
               str(tmp_path), "--runner", "local", "--set", "download.rows_per_part=10",
               "--set", "download.thread_count=16", "--set", "download.timeout_s=2")
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "1 part(s) failed for good: part-00001" in failed.stderr
    assert failed.stderr.count("download part-00001 could not be committed") == 1
    assert not (tmp_path / "download" / "_done" / "part-00001.json").exists()
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
download: {{rows_per_part: 20, thread_count: 16, timeout_s: 2, retry_transient: 0}}
score:
  scorers: [{{name: x, checkpoint: {checkpoint}}}]
  batch_size: 4
  device: cpu
dedup: {{images: false}}
shard: {{samples_per_shard: 16}}
"""
# retry_transient: 0 because a rerun would fetch the timed-out rows of parts done before the kill once more
# (their `attempts` would differ from an uninterrupted run's); the Ray download case keeps the default.

SMALL_PIPELINE = """\
name: faults-small
stages: [synth, download, score]
runner: {{kind: local, part_retries: 1}}
synth: {{n: 40, seed: 9, noise: {{broken: 0.1, broken_kinds: [broken_http_404, broken_corrupt]}}}}
download: {{rows_per_part: 10, thread_count: 16, timeout_s: 2}}
score:
  scorers: [{{name: x, checkpoint: {checkpoint}}}]
  batch_size: 2
  device: cpu
"""


def _pipeline_root(root: Path, template: str, model: str) -> Path:
    """A random-init checkpoint, the config and the pool every run of it copies."""
    import torch

    from curate.models import checkpoint
    from curate.models.clip import create
    from pipelines.config import load_config

    torch.manual_seed(0)
    checkpoint.save(root / "model.pt", create(model), None, 0, model, {})
    config = root / "pipeline.yaml"
    config.write_text(template.format(checkpoint=root / "model.pt"))
    synthesize(load_config(config).synth, root / "pool")
    return config


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(config path, a pool to copy into each run, an uninterrupted run)."""
    root = tmp_path_factory.mktemp("kill")
    config = _pipeline_root(root, PIPELINE, "tiny-vit-64")
    reference = _fresh_run(root, "reference")
    before = set(root.rglob("*"))
    done = subprocess.run(_cli("run", str(config), "--out", str(reference)), capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p for p in set(root.rglob("*")) - before if not p.is_relative_to(reference)] == []  # all in the run
    return config, root, reference


@pytest.fixture(scope="module")
def small_pipeline(tmp_path_factory):
    """As `pipeline`, for synth, download and score of 40 rows (run in this process: same code as `curate run`)."""
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    root = tmp_path_factory.mktemp("kill-small")
    config = _pipeline_root(root, SMALL_PIPELINE, "tiny-vit-32")
    reference = _fresh_run(root, "reference")
    run_pipeline(load_config(config), reference, report=False)
    return config, root, reference


def _fresh_run(root: Path, name: str) -> Path:
    """A run directory holding a copy of the shared pool (same URLs, so the same uids)."""
    run = root / name
    shutil.copytree(root / "pool", run / "synth")
    return run


def _kill_when(cmd: list[str], ready, timeout_s: float = 300) -> None:
    """Start `cmd` in a process group of its own and SIGKILL the whole group (as a Ctrl-C or an OOM kill
    of the driver would end it) the moment `ready(stderr_so_far)` holds; fails if it finished first."""
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
        os.killpg(proc.pid, signal.SIGKILL)
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


def _statuses(run: Path) -> dict[str, str]:
    table = pa.concat_tables(pq.read_table(p, columns=["uid", "status"])
                             for p in sorted((run / "download").glob("part-*.parquet")))
    return dict(zip(table.column("uid").to_pylist(), table.column("status").to_pylist()))


def test_kill_9_of_the_driver_during_score_then_rerun_equals_an_uninterrupted_run(small_pipeline):
    """The rerun runs in this process (the same code as `curate run`): what matters is what the kill left."""
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    config, root, reference = small_pipeline
    run = _fresh_run(root, "killed-in-score")
    _kill_when(_cli("run", str(config), "--out", str(run), "--no-report"), _fault_point("score", run, reference))
    assert not (run / "score" / "stats.json").exists()  # the run was cut short
    run_pipeline(load_config(config), run, report=False)
    assert_same_outputs(run, reference)
    assert _markers(run, "score") == _markers(reference, "score") == 4


def _hanging_input(pool: Path, out: Path, rows_per_part: int, hang_in: list[int]) -> Path:
    """The pool's rows as an input file where each part named in `hang_in` starts with two rows on the
    hanging route (with two download threads, nothing else in that part moves until they time out)."""
    rows = pq.read_table(pool / "pool.parquet", columns=["url", "caption"]).to_pylist()
    ordered = []
    for i in range(-(-len(rows) // rows_per_part)):
        part = rows[i * rows_per_part:(i + 1) * rows_per_part]
        if i in hang_in:
            part = [{"url": r["url"].replace("/f/", "/x/slow/"), "caption": f"hanging {r['caption']}"}
                    for r in part[:2]] + part[2:]
        ordered += part
    pq.write_table(pa.Table.from_pylist(ordered), out)
    return out


@pytest.mark.ray
def test_kill_9_of_the_driver_group_mid_download_under_ray_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """The driver (and the local Ray it started) is SIGKILLed as a group the moment the first part is
    done, while parts 1 and 2 wait on hanging rows. Ray's workers outlive the driver for a while, but the
    loopback server died with it: what they finish then holds connection errors. Such a part must not
    count as done, so the rerun (in this process: what matters is what the kill left) downloads it again
    and every row ends as in an uninterrupted run."""
    pool = tmp_path / "pool"
    synthesize(SynthConfig(n=40, seed=8, hang_s=6, noise=NoiseConfig(**CLEAN, broken=0.0)), pool)
    source = _hanging_input(pool, tmp_path / "input.parquet", 10, hang_in=[1, 2])
    cfg = fast_download(input=source, rows_per_part=10, thread_count=2, timeout_s=2, allow_private_networks=False)
    reference, run = tmp_path / "reference", tmp_path / "run"
    run_download(cfg, reference, LocalRunner(), pool)
    settings = ["download.rows_per_part=10", "download.thread_count=2", "download.timeout_s=2", "runner.num_cpus=2"]
    cmd = _cli("download", "--input", str(source), "--serve", str(pool), "--out", str(run), "--runner", "ray",
               *(a for s in settings for a in ("--set", s)))
    _kill_when(cmd, lambda _: _markers(run, "download") >= 1)
    at_kill = _markers(run, "download")
    time.sleep(2)  # what Ray's orphaned workers finish now must not count (the report saw them 0.6 s later)
    assert _markers(run, "download") == at_kill < 4
    run_download(cfg, run, LocalRunner(), pool)
    expected = _statuses(reference)
    assert sorted(set(expected.values())) == ["ok", "timeout"]
    assert _statuses(run) == expected
    assert list((run / "download").glob(".*.tmp")) == []  # no attempt's staging folder is left


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

@pytest.mark.ray
@pytest.mark.parametrize("n,rows_per_part", [(40, 10), pytest.param(120, 15, marks=pytest.mark.slow)])
def test_losing_a_worker_node_mid_download_loses_nothing(tmp_path, n, rows_per_part):
    """The head has no CPUs, so every part runs on the one worker node (its own raylet); every part
    waits on two hanging rows for a second. That node is removed while it works on a part (after the
    first part is done, before the last); a fresh node takes over, Ray retries the lost task there, and
    the result equals a local run's."""
    from ray.cluster_utils import Cluster

    pool = tmp_path / "pool"
    synthesize(SynthConfig(n=n, seed=7, hang_s=3, noise=NoiseConfig(**CLEAN, broken=0.0)), pool)
    parts = -(-n // rows_per_part)
    source = _hanging_input(pool, tmp_path / "input.parquet", rows_per_part, hang_in=list(range(parts)))
    reference = tmp_path / "reference"
    cfg = fast_download(input=source, rows_per_part=rows_per_part, thread_count=2, timeout_s=1,
                        allow_private_networks=False)  # as the CLI's
    run_download(cfg, reference, LocalRunner(), pool)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=1)
    run = tmp_path / "run"
    cmd = _cli("download", "--input", str(source), "--serve", str(pool), "--out", str(run),
               "--ray-address", cluster.address, "--set", f"download.rows_per_part={rows_per_part}",
               "--set", "download.thread_count=2", "--set", "download.timeout_s=1")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 240
        while _markers(run, "download") < 1:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.02)
        cluster.remove_node(worker)  # the lost task waits for the next node
        done_at_loss = _markers(run, "download")
        cluster.add_node(num_cpus=1)
        out, err = proc.communicate(timeout=300)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, err[-3000:]
    assert done_at_loss < parts  # the lost node was working on a part
    print(f"worker node removed with {done_at_loss} of {parts} parts done")
    stats = json.loads((run / "download" / "stats.json").read_text())
    assert stats["input_rows"] == n == sum(stats["by_status"].values()) and stats["failed_parts"] == []
    assert stats["by_status"] == {"ok": n - 2 * parts, "timeout": 2 * parts}
    assert_same_outputs(run, reference)
