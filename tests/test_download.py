import csv
import hashlib
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from curate.download import classify_error
from curate.schema import Status
from curate.synth import BROKEN_KINDS
from pipelines.run import run_download
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts
from tests.test_pool_input import BAD_ROWS, EXPECTED


@pytest.fixture(scope="module")
def local_run(small_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("dl-local")
    stats = run_download(fast_download(input=small_pool / "pool.parquet"), out, LocalRunner(), small_pool)
    return out, stats


def _joined(pool_dir, out):
    pool = {r["uid"]: r for r in pq.read_table(pool_dir / "pool.parquet").to_pylist()}
    rows = read_parts(out / "download").to_pylist()
    return [(pool[r["uid"]], r) for r in rows]


def test_every_row_has_exactly_one_status_and_stats_add_up(local_run, small_pool):
    out, stats = local_run
    table = read_parts(out / "download")
    assert table.num_rows == stats["input_rows"] == 240
    assert sum(stats["by_status"].values()) == stats["input_rows"]
    assert set(table.column("status").to_pylist()) <= set(Status.all())
    assert sorted(table.column("uid").to_pylist()) == sorted(pq.read_table(small_pool / "pool.parquet").column("uid").to_pylist())
    assert json.loads((out / "download" / "stats.json").read_text()) == stats


def test_each_broken_kind_ends_in_its_status_and_the_rest_download(local_run, small_pool):
    out, _ = local_run
    for gt, row in _joined(small_pool, out):
        expected = BROKEN_KINDS.get(gt["gt_noise"], Status.OK)
        assert row["status"] == expected, (gt["gt_noise"], row["error"])
        assert (row["error"] is None) == (expected == Status.OK)


def test_ok_rows_carry_size_hash_and_shard_of_the_original_bytes(local_run, small_pool):
    out, _ = local_run
    for gt, row in _joined(small_pool, out):
        if row["status"] != Status.OK:
            assert row["sha256"] is None and row["shard"] is None
            continue
        served = (small_pool / "files" / "/".join(gt["url"].split("/")[-2:])).read_bytes()
        assert row["sha256"] == hashlib.sha256(served).hexdigest()
        assert row["width"] > 0 and row["height"] > 0


def test_shards_hold_exactly_the_ok_rows(local_run):
    out, _ = local_run
    table = read_parts(out / "download").to_pylist()
    ok = {r["key"]: r for r in table if r["status"] == Status.OK}
    seen = {}
    for tar_path in sorted((out / "download" / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                seen.setdefault(m.name.split(".")[0], {})[m.name.split(".", 1)[1]] = tar.extractfile(m).read()
    assert set(seen) == set(ok)
    for key, files in seen.items():
        assert hashlib.sha256(files["jpg"]).hexdigest() == ok[key]["sha256"]
        assert files["txt"].decode() == ok[key]["caption"]
        assert json.loads(files["json"])["uid"] == ok[key]["uid"]


def test_rerun_does_nothing_and_a_deleted_marker_reruns_only_that_part(local_run, small_pool):
    out, stats = local_run
    stage_dir = out / "download"
    outputs = sorted(stage_dir.glob("part-*.parquet"))
    before = {p.name: os.stat(p).st_mtime_ns for p in outputs}
    (stage_dir / "_done" / "part-00001.json").unlink()
    again = run_download(fast_download(input=small_pool / "pool.parquet"), out, LocalRunner(), small_pool)
    after = {p.name: os.stat(p).st_mtime_ns for p in outputs}
    assert [n for n in before if before[n] != after[n]] == ["part-00001.parquet"]
    assert again["by_status"] == stats["by_status"]


def test_accounting_holds_on_a_pool_with_every_bad_input_kind(small_pool, tmp_path):
    """Every broken kind from the synth pool plus every bad input row, as CSV (so non-UTF-8 is possible)."""
    pool = pq.read_table(small_pool / "pool.parquet", columns=["url", "caption"]).to_pylist()
    rows = [{"url": u, "caption": c} for u, c in BAD_ROWS] + pool
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["url", "caption"])
    writer.writeheader()
    writer.writerows(rows)
    path = tmp_path / "mixed.csv"
    path.write_bytes(buf.getvalue().encode() + b"http://127.0.0.1:1/x.jpg,caf\xe9\n")
    stats = run_download(fast_download(input=path, rows_per_part=64), tmp_path, LocalRunner(), small_pool)
    table = read_parts(tmp_path / "download")
    n = len(rows) + 1
    assert stats["input_rows"] == table.num_rows == n == sum(stats["by_status"].values())
    statuses = table.column("status").to_pylist()
    assert statuses[1:len(BAD_ROWS)] == EXPECTED[1:]
    assert statuses[0] == Status.CONNECTION_ERROR  # nothing listens on port 1
    assert statuses[-1] == Status.BAD_ENCODING
    expected_pool = [BROKEN_KINDS.get(r["gt_noise"], Status.OK)
                     for r in pq.read_table(small_pool / "pool.parquet", columns=["gt_noise"]).to_pylist()]
    assert statuses[len(BAD_ROWS):-1] == expected_pool


@pytest.mark.parametrize("message,status", [
    ("HTTP Error 404: Not Found", Status.HTTP_ERROR),
    ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.", Status.REDIRECT_LOOP),
    ("<urlopen error timed out>", Status.TIMEOUT),
    ("<urlopen error [Errno 111] Connection refused>", Status.CONNECTION_ERROR),
    ("IncompleteRead(1000 bytes read, 99000 more expected)", Status.CONNECTION_ERROR),
    ("Use of image disallowed by X-Robots-Tag directive", Status.BLOCKED_ROBOTS),
    ("image too small", Status.TOO_SMALL),
    ("something nobody planned for", Status.DOWNLOAD_ERROR),
])
def test_error_messages_map_to_statuses(message, status):
    assert classify_error(message) == status
