import csv
import hashlib
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.download.download import classify_error, is_transient, run_download
from curate.schema import Status
from curate.synthetic.serve import PoolServer
from curate.synthetic.synth import BROKEN_KINDS
from curate.tars import read_images
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts
from tests.curate.download.test_pool_input import BAD_ROWS, EXPECTED


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
    """Without transient retries (retry_transient: 0), a rerun touches only the part that lost its marker."""
    out, stats = local_run
    stage_dir = out / "download"
    outputs = sorted(stage_dir.glob("part-*.parquet"))
    before = {p.name: os.stat(p).st_mtime_ns for p in outputs}
    (stage_dir / "_done" / "part-00001.json").unlink()
    cfg = fast_download(input=small_pool / "pool.parquet", retry_transient=0)
    again = run_download(cfg, out, LocalRunner(), small_pool)
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


@pytest.mark.parametrize("status,error,transient", [
    (Status.CONNECTION_ERROR, "<urlopen error [Errno 111] Connection refused>", True),
    (Status.TIMEOUT, "<urlopen error timed out>", True),
    (Status.HTTP_ERROR, "HTTP Error 503: Service Unavailable", True),
    (Status.HTTP_ERROR, "HTTP Error 500: Internal Server Error", True),
    (Status.HTTP_ERROR, "HTTP Error 404: Not Found", False),
    (Status.DECODE_ERROR, "Image decoding error", False),
    (Status.OK, None, False),
])
def test_transient_failures_are_connection_timeout_and_5xx(status, error, transient):
    assert is_transient(status, error) is transient


def _rows(out):
    return {r["caption"]: r for r in read_parts(out / "download").to_pylist()}


def test_reruns_retry_transient_failures_up_to_retry_transient_times(small_pool, tmp_path):
    """A flaky route (503 the first time, then the image), a lasting 500, a 404, a refused connection and
    an invalid URL. The first rerun fetches only the transient failures again, into a shard of their own;
    the flaky rows come back ok, every other row stays as it was; later reruns fetch nothing more until
    retry_transient is raised."""
    pool = pq.read_table(small_pool / "pool.parquet", columns=["url", "gt_noise"]).to_pylist()
    files = [r["url"].split("/f/", 1)[1] for r in pool if r["gt_noise"] == "clean"]
    with PoolServer(small_pool / "files") as server:
        routes = ["f", "x/flaky", "x/500", "x/404", "f", "x/flaky", "x/flaky", None, "ftp", "f"]
        urls = [f"{server.base_url}/{route}/{f}" if route not in (None, "ftp") else
                ("http://127.0.0.1:1/x.jpg" if route is None else f"ftp://127.0.0.1/{f}")
                for route, f in zip(routes, files)]
        captions = [f"row {i} {route}" for i, route in enumerate(routes)]
        pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "input.parquet")
        cfg = fast_download(input=tmp_path / "input.parquet", rows_per_part=5)
        run_download(cfg, tmp_path, LocalRunner())
        first = _rows(tmp_path)
        assert [first[c]["status"] for c in captions] == [
            Status.OK, Status.HTTP_ERROR, Status.HTTP_ERROR, Status.HTTP_ERROR, Status.OK,
            Status.HTTP_ERROR, Status.HTTP_ERROR, Status.CONNECTION_ERROR, Status.INVALID_URL, Status.OK]
        assert [first[c]["attempts"] for c in captions] == [1, 1, 1, 1, 1, 1, 1, 1, 0, 1]

        stats = run_download(cfg, tmp_path, LocalRunner())
        second = _rows(tmp_path)
        flaky = [c for c in captions if "flaky" in c]
        assert {second[c]["status"] for c in flaky} == {Status.OK}
        assert {second[c]["shard"] for c in flaky} == {"shards/00000-retry1.tar", "shards/00001-retry1.tar"}
        assert [second[c]["attempts"] for c in captions] == [1, 2, 2, 1, 1, 2, 2, 2, 0, 1]
        assert [second[c]["status"] for c in captions if "flaky" not in c] == [
            Status.OK, Status.HTTP_ERROR, Status.HTTP_ERROR, Status.OK, Status.CONNECTION_ERROR,
            Status.INVALID_URL, Status.OK]
        same = [c for c in captions if second[c]["attempts"] == first[c]["attempts"]]
        assert [second[c] for c in same] == [first[c] for c in same]  # not fetched again: as they were
        assert stats["by_status"] == {"connection_error": 1, "http_error": 2, "invalid_url": 1, "ok": 6}
        images = read_images(read_parts(tmp_path / "download"), tmp_path / "download")
        assert len(images) == 6  # the retried rows' images are in their retry shards
        for c in flaky:
            served = (small_pool / "files" / second[c]["url"].split("/x/flaky/", 1)[1]).read_bytes()
            assert images[second[c]["uid"]] == served

        run_download(cfg, tmp_path, LocalRunner())
        assert _rows(tmp_path) == second  # retry_transient: 1 is spent

        more = cfg.model_copy(update={"retry_transient": 2})
        run_download(more, tmp_path, LocalRunner())
        third = _rows(tmp_path)
        assert [third[c]["attempts"] for c in captions] == [1, 2, 3, 1, 1, 2, 2, 3, 0, 1]
        assert sorted((tmp_path / "download" / "shards").glob("*-retry2*")) == []  # nothing came back
        run_download(more, tmp_path, LocalRunner())
        assert _rows(tmp_path) == third
