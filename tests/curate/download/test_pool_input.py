import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.download.download import DownloadConfig
from curate.download.pool_input import InputError, split_input
from curate.schema import Status, make_uid


def _split(tmp_path, path, **kw):
    cfg = DownloadConfig(input=path, rows_per_part=3, **kw)
    parts = split_input(cfg, tmp_path / "download")
    return parts, pa.concat_tables([pq.read_table(p.input_path) for p in parts])


BAD_ROWS = [
    ("http://127.0.0.1:1/1.jpg", "a fine caption"),
    ("http://127.0.0.1:1/1.jpg", "a fine caption"),        # duplicate uid
    ("ftp://h/2.jpg", "ftp is not downloaded"),   # non-http scheme
    ("file:///etc/passwd", "local file"),         # never read local files
    ("http://h/3.jpg", "   "),                     # empty caption
    ("http://h/4.jpg", "x" * 10_000),              # 10 kB caption
    ("not a url", "caption"),
    (None, "no url"),
    ("http://h/5.jpg", None),
]
EXPECTED = [None, Status.DUPLICATE_UID, Status.INVALID_URL, Status.INVALID_URL, Status.EMPTY_CAPTION,
            Status.CAPTION_TOO_LONG, Status.INVALID_URL, Status.INVALID_URL, Status.EMPTY_CAPTION]


def test_parquet_rows_get_uids_and_first_statuses_in_order(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": [r[0] for r in BAD_ROWS], "caption": [r[1] for r in BAD_ROWS]}), path)
    parts, table = _split(tmp_path, path)
    assert len(parts) == 3 and table.num_rows == len(BAD_ROWS)
    assert table.column("status").to_pylist() == EXPECTED
    assert table.column("uid")[0].as_py() == make_uid("http://127.0.0.1:1/1.jpg", "a fine caption")


def test_csv_with_non_utf8_caption_and_custom_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"URL,TEXT\nhttp://h/1.jpg,caf\xe9 au lait\nhttp://h/2.jpg,plain\n")
    _, table = _split(tmp_path, path, url_col="URL", caption_col="TEXT")
    assert table.column("status").to_pylist() == [Status.BAD_ENCODING, None]
    assert table.column("caption")[0].as_py() == "caf\ufffd au lait"
    assert table.column("uid")[0].as_py() == make_uid(b"http://h/1.jpg", b"caf\xe9 au lait")


def test_jsonl_and_a_folder_of_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"url": f"http://h/{i}", "caption": f"c {i}"}) for i in range(4)))
    pq.write_table(pa.table({"url": ["http://h/9"], "caption": ["nine"]}), folder / "b.parquet")
    _, table = _split(tmp_path, folder)
    assert table.column("caption").to_pylist() == ["c 0", "c 1", "c 2", "c 3", "nine"]


def test_datacomp_uid_column_is_kept(tmp_path):
    path = tmp_path / "dc.parquet"
    uid = "0123456789abcdef0123456789abcdef"
    pq.write_table(pa.table({"uid": [uid], "url": ["http://h/x"], "text": ["t"], "clip_b32_similarity_score": [0.3]}), path)
    _, table = _split(tmp_path, path, caption_col="text", extra_columns=["clip_b32_similarity_score"])
    assert table.column("uid").to_pylist() == [uid]
    assert table.column("clip_b32_similarity_score").to_pylist() == [0.3]


@pytest.mark.parametrize("content,message", [
    ({"link": ["http://h/x"], "caption": ["c"]}, "lacks columns"),
    ({"url": [1], "caption": ["c"]}, "must hold text"),
    ({"uid": ["nothex"], "url": ["http://h/x"], "caption": ["c"]}, "32 lowercase hex"),
])
def test_bad_columns_fail_before_any_work(tmp_path, content, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(content), path)
    with pytest.raises(InputError, match=message):
        _split(tmp_path, path)
    assert not (tmp_path / "download" / "_input" / "manifest.json").exists()


def test_unreadable_and_missing_inputs(tmp_path):
    garbage = tmp_path / "x.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="cannot read"):
        _split(tmp_path, garbage)
    with pytest.raises(InputError, match="does not exist"):
        _split(tmp_path, tmp_path / "nope.parquet")
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"url": "http://h", "caption": "c"}\n{broken\n')
    with pytest.raises(InputError, match="x.jsonl:2"):
        _split(tmp_path, bad_json)


def test_resume_refuses_a_different_input(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"url": ["http://h/a"], "caption": ["a"]}), a)
    pq.write_table(pa.table({"url": ["http://h/b"], "caption": ["b"]}), b)
    first, _ = _split(tmp_path, a)
    again, _ = _split(tmp_path, a)
    assert first == again
    with pytest.raises(InputError, match="another input"):
        _split(tmp_path, b)
