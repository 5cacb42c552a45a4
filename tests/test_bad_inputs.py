"""The bad-input catalogue: hostile and broken inputs across stages. Each kind ends in an exact row
status or a clear error before any work, and no stage loses or invents a row.

Stages: download (one shared run over every hostile URL and body), pool input, config, score (a
download folder with damaged and hostile tars), dedup (non-finite scores and embeddings) and the
trainer's tar reader."""
import gzip
import io
import struct
import tarfile
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.download import DownloadConfig
from curate.io import Part
from curate.pool_input import InputError, split_input
from curate.schema import Status
from curate.serve import PoolServer
from curate.stage import run_part
from pipelines.config import ConfigError, load_config
from pipelines.run import run_download
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts

# --- image bytes -----------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_bomb(side: int = 10_240) -> bytes:
    """A real decompression bomb: side x side zero pixels (105 MB raw for 10,240) in ~100 kB."""
    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    return _png(side, side, b"".join(comp.compress(row) for _ in range(side)) + comp.flush())


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims another size."""
    good = _encode(_rgb(16, 16), "JPEG")
    sof = good.index(b"\xff\xc0")
    return good[:sof + 5] + struct.pack(">HH", height, width) + good[sof + 9:]


IMAGES = {
    "jpeg": lambda: _encode(_rgb(), "JPEG"),
    "cmyk_jpeg": lambda: _encode(_rgb().convert("CMYK"), "JPEG"),
    "grayscale_jpeg": lambda: _encode(_rgb().convert("L"), "JPEG"),
    "png_16bit": lambda: _encode(Image.fromarray(np.random.default_rng(1).integers(0, 65535, (64, 64)).astype(np.uint16)), "PNG"),
    "palette_png": lambda: _encode(_rgb().convert("P"), "PNG"),
    "transparent_png": lambda: _encode(_rgb().convert("RGBA"), "PNG"),
    "animated_gif": lambda: _encode(_rgb(), "GIF", save_all=True, append_images=[_rgb(seed=2), _rgb(seed=3)], duration=50),
    "webp": lambda: _encode(_rgb(), "WEBP"),
    "truncated_jpeg": lambda: _encode(_rgb(), "JPEG")[:600],
    "truncated_png": lambda: _encode(_rgb(), "PNG")[:300],
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
    "html": lambda: b"<!doctype html><html><body>404</body></html>",
    "random_bytes": lambda: np.random.default_rng(5).bytes(4096),
    "empty": lambda: b"",
    "png_declaring_50000px_sides": lambda: _png(50_000, 50_000, zlib.compress(bytes(1000))),
    "jpeg_declaring_60000px_sides": lambda: jpeg_declaring(60_000, 60_000),
    "png_decompression_bomb": png_bomb,
    "tiny": lambda: _encode(_rgb(8, 8), "PNG"),
    "extreme_aspect": lambda: _encode(_rgb(400, 40), "PNG"),
}

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


# --- score: damaged and hostile download tars ----------------------------------------------------

def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# kind -> (tar, member name, image bytes, status after score)
SCORE_KINDS = {
    "jpeg": ("intact", "{key}.jpg", "jpeg", Status.OK),
    "cmyk_jpeg": ("intact", "{key}.jpg", "cmyk_jpeg", Status.OK),
    "png_16bit": ("intact", "{key}.png", "png_16bit", Status.OK),
    "palette_png": ("intact", "{key}.png", "palette_png", Status.OK),
    "transparent_png": ("intact", "{key}.png", "transparent_png", Status.OK),
    "animated_gif_named_jpg": ("intact", "{key}.jpg", "animated_gif", Status.OK),
    "html_named_jpg": ("intact", "{key}.jpg", "html", Status.DECODE_ERROR),
    "empty_member": ("intact", "{key}.jpg", "empty", Status.DECODE_ERROR),
    "bomb_header_in_tar": ("intact", "{key}.png", "png_declaring_50000px_sides", Status.DECODE_ERROR),
    "before_the_truncation": ("truncated", "{key}.jpg", "jpeg", Status.OK),
    "cut_by_the_truncation": ("truncated", "{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_named_dotdot": ("hostile", "../{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_named_absolute": ("hostile", "/tmp/{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_under_dotdot_dir": ("hostile", "a/../{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "not_a_tar_at_all": ("garbage", "{key}.jpg", "jpeg", Status.DECODE_ERROR),
}


def _score_stage(tmp_path):
    from curate.score import ScoreConfig, ScorerConfig, ScoreStage

    cfg = ScoreConfig(scorers=[ScorerConfig(name="x", model="tiny-vit-32")], device="cpu", batch_size=8)
    return ScoreStage(cfg, tmp_path / "download", tmp_path)


def _download_part(tmp_path, rows: list[dict]) -> Part:
    columns = ("uid", "caption", "status", "error", "shard", "key", "width", "height")
    table = pa.table({c: [r.get(c) for r in rows] for c in columns},
                     schema=pa.schema([(c, pa.int32() if c in ("width", "height") else pa.string()) for c in columns]))
    path = tmp_path / "download" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return Part(0, path, tmp_path / "score")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-score")
    tars: dict[str, list] = {"intact": [], "truncated": [], "hostile": [], "garbage": []}
    rows = []
    for k, (kind, (tar, member, image, _)) in enumerate(SCORE_KINDS.items()):
        key = f"{k:09d}"
        tars[tar].append((member.format(key=key), IMAGES[image]()))
        rows.append({"uid": f"{k:032x}", "caption": kind, "status": Status.OK, "shard": f"shards/{tar}.tar",
                     "key": key, "width": 64, "height": 64})
    rows.append({"uid": f"{99:032x}", "caption": "never downloaded", "status": Status.HTTP_ERROR, "error": "HTTP Error 404"})
    shards = tmp_path / "download" / "shards"
    shards.mkdir(parents=True)
    for name, members in tars.items():
        data = _tar_bytes(members)
        if name == "truncated":  # cut 100 bytes into the second member's data
            data = data[:512 + -(-len(members[0][1]) // 512) * 512 + 512 + 100]
        elif name == "garbage":
            data = b"\x00not a tar" * 100
        (shards / f"{name}.tar").write_bytes(data)
    part = _download_part(tmp_path, rows)
    stage = _score_stage(tmp_path)
    run_part(stage, part)
    return {r["caption"]: r for r in pq.read_table(part.output_path).to_pylist()}, len(rows), tmp_path


def test_score_rows_are_all_there(scored):
    rows, n, tmp_path = scored
    assert len(rows) == n and rows["never downloaded"]["status"] == Status.HTTP_ERROR


@pytest.mark.parametrize("kind", list(SCORE_KINDS))
def test_score_kind_ends_in_its_status(scored, kind):
    rows, _, _ = scored
    row = rows[kind]
    assert row["status"] == SCORE_KINDS[kind][3], row["error"]
    assert (row["score_x"] is not None) == (row["status"] == Status.OK)


def test_a_shard_path_that_climbs_out_fails_the_part_clearly(tmp_path):
    (tmp_path / "outside.tar").write_bytes(_tar_bytes([("k.jpg", IMAGES["jpeg"]())]))
    part = _download_part(tmp_path, [{"uid": "0" * 32, "caption": "c", "status": Status.OK,
                                      "shard": "../outside.tar", "key": "k", "width": 64, "height": 64}])
    with pytest.raises(ValueError, match="points outside"):
        run_part(_score_stage(tmp_path), part)
    assert not part.output_path.exists() and not part.done_path.exists()


# --- dedup: non-finite scores and embeddings -----------------------------------------------------

DEDUP_KINDS = {  # kind -> (score, embedding: "copy" of row 0's, "nan", "inf", "zero" or "own")
    "nan_score": (float("nan"), "copy"),
    "inf_score": (float("inf"), "own"),
    "minus_inf_score": (float("-inf"), "own"),
    "null_score": (None, "own"),
    "nan_embedding": (0.5, "nan"),
    "inf_embedding": (0.5, "inf"),
    "zero_embedding": (0.5, "zero"),
}


@pytest.fixture(scope="module")
def deduped():
    from curate.dedup import DedupConfig, find_duplicates
    from curate.heuristics import caption_signals

    rng = np.random.default_rng(0)
    dim = 8

    def unit():
        v = rng.normal(size=dim)
        return v / np.linalg.norm(v)

    first = unit()
    kinds = ["reference", *DEDUP_KINDS]
    vectors, scores = [first], [0.1]
    for kind in DEDUP_KINDS:
        score, emb = DEDUP_KINDS[kind]
        vectors.append({"copy": first, "nan": np.full(dim, np.nan), "inf": np.full(dim, np.inf),
                        "zero": np.zeros(dim)}.get(emb, None) if emb != "own" else unit())
        scores.append(score)
    table = pa.table({
        "uid": [f"{k:032x}" for k in range(len(kinds))], "status": [Status.OK] * len(kinds), "caption": kinds,
        "sha256": [f"{k}" for k in range(len(kinds))], "caption_hash": [caption_signals(k)["caption_hash"] for k in kinds],
        "image_embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.stack(vectors).astype(np.float16).reshape(-1)), dim),
        "score_x": pa.array(scores, pa.float32()),
    })
    dup = find_duplicates(table, DedupConfig(cluster_size=2), "score_x")
    return table, {k: r for k, r in zip(kinds, dup.to_pylist())}


def test_dedup_keeps_one_row_per_uid_with_a_decision(deduped):
    table, rows = deduped
    assert len(rows) == table.num_rows and [r["uid"] for r in rows.values()] == table.column("uid").to_pylist()
    assert all(r["dup_keep"] in (True, False) for r in rows.values())


@pytest.mark.parametrize("kind", list(DEDUP_KINDS))
def test_dedup_kind(deduped, kind):
    _, rows = deduped
    row = rows[kind]
    if kind == "nan_score":  # a NaN score loses to any real score in its group, never wins by accident
        assert row["dup_keep"] is False and row["dup_reason"] == "near_image" and rows["reference"]["dup_keep"]
    else:  # an embedding that is not a finite unit vector matches nothing
        assert row["dup_keep"] is True and row["dup_reason"] is None


# --- the trainer's tar reader --------------------------------------------------------------------

@pytest.fixture()
def train_shards(tmp_path):
    good = IMAGES["jpeg"]()
    hostile = _tar_bytes([("../up.jpg", good), ("../up.txt", b"up"), ("/abs/k.jpg", good), ("/abs/k.txt", b"abs"),
                          ("ok1.jpg", good), ("ok1.txt", b"one")])
    whole = _tar_bytes([("ok2.jpg", good), ("ok2.txt", b"two"), ("bomb.png", IMAGES["png_declaring_50000px_sides"]()),
                        ("bomb.txt", b"bomb"), ("cut.jpg", good), ("cut.txt", b"cut")])
    (tmp_path / "hostile.tar").write_bytes(hostile)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        cut = tar.getmember("cut.jpg").offset_data + 100
    (tmp_path / "truncated.tar").write_bytes(whole[:cut])  # cut.jpg loses its end, cut.txt is gone
    return tmp_path


def test_train_tar_reader_skips_climbing_names_and_reads_up_to_a_truncation(train_shards):
    from train.data import shard_records

    records = shard_records([train_shards / "hostile.tar", train_shards / "truncated.tar"])
    assert sorted((Path(r.image).name, r.member, r.caption) for r in records) == [
        ("hostile.tar", "ok1.jpg", "one"), ("truncated.tar", "bomb.png", "bomb"), ("truncated.tar", "ok2.jpg", "two")]


def test_train_stream_skips_a_decompression_bomb_instead_of_crashing(train_shards):
    import torch

    from train.data import PairStream, shard_records

    records = shard_records([train_shards / "truncated.tar"])
    stream = PairStream(records, lambda im: torch.zeros(3), lambda caps: torch.zeros((1, 4)), seed=0)
    items = [item for item, _ in zip(iter(stream), range(2 * len(records)))]
    assert sum(item is None for item in items) == 2 and sum(item is not None for item in items) == 2
