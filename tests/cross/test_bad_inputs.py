"""The bad-input catalogue: hostile and broken inputs across stages. Each kind ends in an exact row
status or a clear error before any work, and no stage loses or invents a row.

Here: download (one shared run over every hostile URL and body), pool input and config; the later
stages (score, dedup, the trainer's tar reader) are in test_bad_inputs_stages.py."""
import io
import tarfile
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.download.download import DownloadConfig, run_download
from curate.download.pool_input import InputError, split_input
from curate.schema import Status
from curate.synthetic.serve import PoolServer
from pipelines.config import ConfigError, load_config
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts
from tests.cross.bad_payloads import IMAGES

# --- download: one run over every kind ------------------------------------------------------------

# kind -> (route, image file or None, status)
DOWNLOAD_KINDS = {
    "jpeg": ("f", "jpeg", Status.OK),
    "cmyk_jpeg": ("f", "cmyk_jpeg", Status.OK),
    "grayscale_jpeg": ("f", "grayscale_jpeg", Status.OK),
    "png_16bit": ("f", "png_16bit", Status.OK),
    "palette_png": ("f", "palette_png", Status.OK),
    "transparent_png": ("f", "transparent_png", Status.OK),
    "animated_gif": ("f", "animated_gif", Status.OK),
    "webp": ("f", "webp", Status.OK),
    "image_labelled_text_html": ("x/html", "jpeg", Status.OK),  # the bytes decide, not the label
    "truncated_jpeg": ("f", "truncated_jpeg", Status.DECODE_ERROR),
    "truncated_png": ("f", "truncated_png", Status.DECODE_ERROR),
    "svg": ("f", "svg", Status.DECODE_ERROR),
    "html_instead_of_image": ("f", "html", Status.DECODE_ERROR),
    "random_bytes": ("f", "random_bytes", Status.DECODE_ERROR),
    "empty_body": ("f", "empty", Status.DECODE_ERROR),
    "png_declaring_50000px_sides": ("f", "png_declaring_50000px_sides", Status.TOO_LARGE),
    "jpeg_declaring_60000px_sides": ("f", "jpeg_declaring_60000px_sides", Status.TOO_LARGE),
    "png_decompression_bomb": ("f", "png_decompression_bomb", Status.TOO_LARGE),
    "gzip_bomb_response": ("x/gzip", None, Status.DECODE_ERROR),  # never inflated: raw gzip is no image
    "endless_slow_body": ("x/trickle", None, Status.TIMEOUT),
    "endless_fast_body": ("x/endless", None, Status.TOO_LARGE),
    "terabyte_content_length": ("x/biglen", None, Status.TOO_LARGE),
    "hanging_host": ("x/slow", None, Status.TIMEOUT),
    "connection_reset": ("x/reset", None, Status.CONNECTION_ERROR),
    "redirect_loop": ("x/loop", None, Status.REDIRECT_LOOP),
    "redirect_to_file_url": ("to:file:///etc/passwd", None, Status.HTTP_ERROR),
    "redirect_to_ftp_url": ("to:ftp://127.0.0.1/x.jpg", None, Status.INVALID_URL),
    "http_404": ("x/404", None, Status.HTTP_ERROR),
    "http_500": ("x/500", None, Status.HTTP_ERROR),
    "x_robots_tag_noai": ("x/noai", "jpeg", Status.BLOCKED_ROBOTS),
    "too_small": ("f", "tiny", Status.TOO_SMALL),
    "extreme_aspect_ratio": ("f", "extreme_aspect", Status.BAD_ASPECT_RATIO),
    "nothing_listening": ("port1", None, Status.CONNECTION_ERROR),
}


def _url(base: str, route: str, image: str | None) -> str:
    name = f"{image or 'none'}.img"
    if route.startswith("to:"):
        return f"{base}/x/to/{urllib.parse.quote(route[3:], safe='')}"
    if route == "port1":
        return f"http://127.0.0.1:1/{name}"
    return f"{base}/{route}/{name}"


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-download")
    (root / "files").mkdir()
    for name in {image for _, image, _ in DOWNLOAD_KINDS.values() if image}:
        (root / "files" / f"{name}.img").write_bytes(IMAGES[name]())
    with PoolServer(root / "files", hang_s=4) as srv:
        kinds = list(DOWNLOAD_KINDS)
        urls = [_url(srv.base_url, *DOWNLOAD_KINDS[k][:2]) for k in kinds]
        pq.write_table(pa.table({"url": urls, "caption": kinds}), root / "in.parquet")
        cfg = fast_download(input=root / "in.parquet", rows_per_part=16, thread_count=len(kinds), timeout_s=2,
                            deadline_s=2, max_response_bytes=20_000_000, min_side_px=16)
        stats = run_download(cfg, root, LocalRunner())
    table = read_parts(root / "download")
    return root, stats, {r["caption"]: r for r in table.to_pylist()}


@pytest.mark.parametrize("kind", list(DOWNLOAD_KINDS))
def test_download_kind_ends_in_its_status(downloaded, kind):
    _, _, rows = downloaded
    row = rows[kind]
    assert row["status"] == DOWNLOAD_KINDS[kind][2], row["error"]
    assert (row["error"] is None) == (row["status"] == Status.OK)


def test_download_loses_no_row_and_ok_rows_hold_decodable_images(downloaded):
    root, stats, rows = downloaded
    assert stats["input_rows"] == len(DOWNLOAD_KINDS) == len(rows) == sum(stats["by_status"].values())
    assert "pending" not in stats["by_status"] and stats["failed_parts"] == []
    ok = {r["key"]: r for r in rows.values() if r["status"] == Status.OK}
    decoded = {}
    for tar_path in (root / "download" / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                        decoded[m.name[:-4]] = im.size
    assert decoded == {k: (r["width"], r["height"]) for k, r in ok.items()}


# --- pool input -----------------------------------------------------------------------------------

def _parquet(path: Path, **columns) -> None:
    pq.write_table(pa.table(columns), path)


def _write_input(path: Path, kind: str) -> Path:
    """Write the input file of `kind`; returns its path."""
    good = {"url": ["http://h.example/1.jpg"], "caption": ["a caption"]}
    if kind == "malformed_parquet":
        path = path / "in.parquet"
        path.write_bytes(b"PAR1 not really a parquet file")
    elif kind == "truncated_parquet":
        path = path / "in.parquet"
        _parquet(path, url=[f"http://h.example/{i}" for i in range(200)], caption=[f"c {i}" for i in range(200)])
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "url_column_of_integers":
        path = path / "in.parquet"
        _parquet(path, url=[1, 2], caption=["a", "b"])
    elif kind == "caption_column_of_lists":
        path = path / "in.parquet"
        _parquet(path, url=["http://h.example/1"], caption=[["a", "b"]])
    elif kind == "missing_caption_column":
        path = path / "in.parquet"
        _parquet(path, url=good["url"], text=good["caption"])
    elif kind == "uid_that_is_not_hex":
        path = path / "in.parquet"
        _parquet(path, **good, uid=["../../not-a-uid"])
    elif kind == "jsonl_line_not_json":
        path = path / "in.jsonl"
        path.write_text('{"url": "http://h.example/1", "caption": "a"}\n{"url": \n')
    elif kind == "jsonl_array_line":
        path = path / "in.jsonl"
        path.write_text("[1, 2]\n")
    elif kind == "jsonl_caption_number":
        path = path / "in.jsonl"
        path.write_text('{"url": "http://h.example/1", "caption": 5}\n')
    elif kind == "csv_ragged_rows":
        path = path / "in.csv"
        path.write_text("url,caption\nhttp://h.example/1,a\nhttp://h.example/2,b,c,d\n")
    elif kind == "csv_empty_file":
        path = path / "in.csv"
        path.write_text("")
    elif kind == "unknown_extension":
        path = path / "in.txt"
        path.write_text("http://h.example/1 a caption\n")
    return path


# kind -> text the InputError must contain
INPUT_ERRORS = {
    "malformed_parquet": "cannot read",
    "truncated_parquet": "cannot read",
    "url_column_of_integers": "has type int64; it must hold text",
    "caption_column_of_lists": "it must hold text",
    "missing_caption_column": "lacks columns ['caption']",
    "uid_that_is_not_hex": "is not 32 lowercase hex chars",
    "jsonl_line_not_json": "in.jsonl:2 is not a JSON object",
    "jsonl_array_line": "in.jsonl:1 is not a JSON object",
    "jsonl_caption_number": "'caption' holds int",
    "csv_ragged_rows": "cannot read",
    "csv_empty_file": "cannot read",
    "unknown_extension": "set download.input_format",
}


@pytest.mark.parametrize("kind", list(INPUT_ERRORS))
def test_unreadable_input_is_a_clear_error_before_any_work(tmp_path, kind):
    path = _write_input(tmp_path, kind)
    with pytest.raises(InputError, match=INPUT_ERRORS[kind].replace("[", r"\[").replace("]", r"\]")):
        split_input(DownloadConfig(input=path), tmp_path / "run" / "download")
    assert not (tmp_path / "run" / "download" / "_input" / "manifest.json").exists()


# (url, caption) -> status before any traffic (None: goes on to the download)
INPUT_ROWS = {
    "whitespace_caption": ("http://h.example/1.jpg", " \t\n ", Status.EMPTY_CAPTION),
    "null_caption": ("http://h.example/2.jpg", None, Status.EMPTY_CAPTION),
    "over_long_caption": ("http://h.example/3.jpg", "word " * 2000, Status.CAPTION_TOO_LONG),
    "null_url": (None, "a caption", Status.INVALID_URL),
    "javascript_url": ("javascript:alert(1)", "a caption", Status.INVALID_URL),
    "data_url": ("data:image/png;base64,iVBORw0KGgo=", "a caption", Status.INVALID_URL),
    "url_with_header_injection": ("http://h.example/a.jpg\r\nHost: evil", "a caption", Status.INVALID_URL),
    "url_with_space": ("http://h.example/a b.jpg", "a caption", Status.INVALID_URL),
    "url_port_out_of_range": ("http://h.example:99999/a.jpg", "a caption", Status.INVALID_URL),
    "url_without_host": ("http:///a.jpg", "a caption", Status.INVALID_URL),
    "duplicate_row": ("http://h.example/1.jpg", " \t\n ", Status.DUPLICATE_UID),
    "caption_with_nul_and_emoji": ("http://h.example/4.jpg", "a\x00b \U0001F600", None),
}


def test_input_rows_get_their_first_status_and_none_is_lost(tmp_path):
    kinds = list(INPUT_ROWS)
    path = tmp_path / "in.parquet"
    _parquet(path, url=[INPUT_ROWS[k][0] for k in kinds], caption=[INPUT_ROWS[k][1] for k in kinds])
    parts = split_input(DownloadConfig(input=path, rows_per_part=5), tmp_path / "download")
    table = pa.concat_tables([pq.read_table(p.input_path) for p in parts])
    assert table.num_rows == len(kinds) and len(set(table.column("uid").to_pylist())) == len(kinds) - 1
    assert dict(zip(kinds, table.column("status").to_pylist())) == {k: v[2] for k, v in INPUT_ROWS.items()}


def test_non_utf8_bytes_become_bad_encoding(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"url,caption\nhttp://h.example/1.jpg,caf\xe9\nhttp://h.example/\xff.jpg,ok\n")
    parts = split_input(DownloadConfig(input=path), tmp_path / "download")
    statuses = pq.read_table(parts[0].input_path).column("status").to_pylist()
    assert statuses == [Status.BAD_ENCODING, Status.BAD_ENCODING]


def test_an_empty_input_runs_and_counts_zero_rows(tmp_path):
    (tmp_path / "in.csv").write_text("url,caption\n")
    stats = run_download(fast_download(input=tmp_path / "in.csv"), tmp_path / "run", LocalRunner())
    assert stats["input_rows"] == 0 and stats["by_status"] == {} and stats["parts"] == 0


# --- config ---------------------------------------------------------------------------------------

CONFIG_ERRORS = {  # YAML text -> text the ConfigError must contain
    "unknown_key": ("download:\n  threads: 4\n", "download.threads"),
    "wrong_value_type": ("download:\n  rows_per_part: many\n", "download.rows_per_part"),
    "negative_timeout": ("download:\n  timeout_s: -1\n", "download.timeout_s"),
    "list_instead_of_mapping": ("- download\n- score\n", "must hold a mapping"),
    "invalid_yaml": ("download: [unclosed\n", "not valid YAML"),
    "python_object_tag": ("name: !!python/object/apply:os.getcwd []\n", "not valid YAML"),
    "unknown_stage": ("stages: [download, upload]\n", "unknown stages ['upload']"),
    "section_is_a_scalar": ("download: 5\n", "download"),
    "bool_as_text": ("download:\n  allow_private_networks: sometimes\n", "download.allow_private_networks"),
}


@pytest.mark.parametrize("kind", list(CONFIG_ERRORS))
def test_bad_config_is_a_clear_error(tmp_path, kind):
    text, message = CONFIG_ERRORS[kind]
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert message in str(err.value)
