"""Read a URL + caption table (Parquet, CSV or JSONL), give every row a uid and a first status,
and split it into input parts. Rows that cannot be downloaded keep a status instead of vanishing."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate.io import Part, atomic_write_json, atomic_write_parquet, fingerprint, part_name, read_json
from curate.schema import CAPTION, ERROR, STATUS, UID, URL, Status, is_uid, make_uid

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class InputError(ValueError):
    """The input cannot be used as given; the message says what to change."""


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise InputError(f"cannot tell the format of {path}; set download.input_format to parquet, csv or jsonl")


def input_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS)
        if not files:
            raise InputError(f"{path} holds no .parquet, .csv or .jsonl files")
        return files
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    return [path]


def _read_jsonl(path: Path, columns: list[str]) -> pa.Table:
    data: dict[str, list] = {c: [] for c in columns}
    present: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{lineno} is not a JSON object ({err})") from err
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno} is not a JSON object")
            present.update(row)
            for k, c in enumerate(columns):
                value = row.get(c)
                if k < 2 and value is not None and not isinstance(value, str):
                    raise InputError(f"{path}:{lineno}: {c!r} holds {type(value).__name__} {str(value)[:80]!r}; "
                                     "url and caption must be JSON strings")
                data[c].append(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)
    return pa.table({c: pa.array(v, type=pa.binary() if c in columns[:2] else None)
                     for c, v in data.items() if c in present})


def _column_names(path: Path, fmt: str) -> list[str] | None:
    """Column names without reading the data (None for JSONL, whose keys show only while reading)."""
    if fmt == "parquet":
        return pq.read_schema(path).names
    if fmt == "csv":
        with pacsv.open_csv(path) as reader:
            return reader.schema.names
    return None


def read_input(path: Path, fmt: str, required: list[str], optional: list[str]) -> pa.Table:
    """Read `required` columns (url and caption first, as stored) and those of `optional` present."""
    try:
        names = _column_names(path, fmt)
        columns = required + [c for c in optional if names is None or c in names]
        if fmt == "parquet":
            table = pq.read_table(path, columns=[c for c in columns if c in names])
        elif fmt == "csv":
            convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in required[:2]},
                                           include_columns=[c for c in columns if c in names])
            table = pacsv.read_csv(path, convert_options=convert)
        elif fmt == "jsonl":
            table = _read_jsonl(path, columns)
        else:
            raise InputError(f"unknown input format {fmt!r}")
    except (pa.ArrowException, OSError) as err:  # ArrowTypeError: a JSONL column of mixed types
        raise InputError(f"cannot read {path} as {fmt}: {err}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(f"{path} lacks columns {missing}; it has {table.column_names}. Set download.url_col / "
                         "caption_col / extra_columns to the names it uses")
    return table


def _text(value) -> tuple[str, bool]:
    """(text, decoded cleanly). Bytes that are not UTF-8 decode with replacement characters."""
    if value is None:
        return "", True
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), True
        except UnicodeDecodeError:
            return value.decode("utf-8", "replace"), False
    if isinstance(value, str):
        return value, True
    raise InputError(f"expected text, found {type(value).__name__} value {value!r}")


def _url_ok(url: str) -> bool:
    """An http(s) URL with a host, a valid port and no whitespace or control characters (which
    http.client refuses, and which could smuggle headers)."""
    if CONTROL_OR_SPACE.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError when out of range or not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def first_status(url: str, caption: str, clean_text: bool, seen: set, uid: str, max_caption_chars: int):
    """The reason a row must not be downloaded, or None. Exactly one, checked in a fixed order."""
    if uid in seen:
        return Status.DUPLICATE_UID, "uid already seen earlier in the input"
    if not clean_text:
        return Status.BAD_ENCODING, "url or caption is not valid UTF-8"
    if not _url_ok(url):
        return Status.INVALID_URL, f"not an http(s) URL: {url[:200]!r}"
    if not caption.strip():
        return Status.EMPTY_CAPTION, "caption is empty"
    if len(caption) > max_caption_chars:
        return Status.CAPTION_TOO_LONG, f"caption has {len(caption)} chars (max {max_caption_chars})"
    return None, None


def normalise(table: pa.Table, url_col: str, caption_col: str, uid_col: str | None, extra: list[str],
              seen: set, max_caption_chars: int, source: Path) -> pa.Table:
    """Rename to url/caption, attach uids and first statuses; keeps every row, in order."""
    for col in (url_col, caption_col):
        t = table.schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t) or pa.types.is_null(t)):
            raise InputError(f"column {col!r} of {source} has type {t}; it must hold text")
    given_uids = table.column(uid_col).to_pylist() if uid_col else None
    urls, captions, uids, statuses, errors = [], [], [], [], []
    for i, (raw_url, raw_cap) in enumerate(zip(table.column(url_col).to_pylist(),
                                                table.column(caption_col).to_pylist())):
        url, url_clean = _text(raw_url)
        caption, cap_clean = _text(raw_cap)
        if given_uids is not None:
            uid = given_uids[i]
            if not is_uid(uid):
                raise InputError(f"{source} row {i}: {uid_col}={uid!r} is not 32 lowercase hex chars; "
                                 "set download.uid_col: null to derive uids from url and caption")
        else:
            uid = make_uid(raw_url if isinstance(raw_url, bytes) else url,
                           raw_cap if isinstance(raw_cap, bytes) else caption)
        status, error = first_status(url, caption, url_clean and cap_clean, seen, uid, max_caption_chars)
        seen.add(uid)
        urls.append(url)
        captions.append(caption)
        uids.append(uid)
        statuses.append(status)
        errors.append(error)
    columns = {UID: uids, URL: urls, CAPTION: captions}
    out = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    for col in extra:
        out = out.append_column(col, table.column(col))
    out = out.append_column(STATUS, pa.array(statuses, pa.string()))
    return out.append_column(ERROR, pa.array(errors, pa.string()))


def split_input(cfg, stage_dir: Path) -> list[Part]:
    """Write `stage_dir/_input/part-*.parquet` once per input; a rerun reuses them.

    `cfg` is a DownloadConfig. The input's identity (paths, sizes, mtimes) and the reading options
    are hashed into `_input/manifest.json`, so a resume can never mix two inputs in one run.
    """
    files = input_files(cfg.input)
    identity = fingerprint([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files],
                           cfg.model_dump(mode="json", include=cfg.INPUT_KEYS))
    in_dir = Path(stage_dir) / "_input"
    manifest_path = in_dir / "manifest.json"
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if manifest["identity"] != identity:
            raise InputError(f"{stage_dir} was started from another input or reading options; "
                             "use a new --out directory (or delete it) to start over")
        return [Part(i, in_dir / f"{part_name(i)}.parquet", Path(stage_dir)) for i in range(manifest["parts"])]
    seen: set[str] = set()
    index = rows = 0
    parts: list[Part] = []
    uid_col = cfg.uid_col
    for path in files:
        fmt = detect_format(path, cfg.input_format)
        required = [cfg.url_col, cfg.caption_col, *cfg.extra_columns]
        table = read_input(path, fmt, required, [uid_col] if uid_col else [])
        use_uid = uid_col if uid_col and uid_col in table.column_names else None
        table = normalise(table, cfg.url_col, cfg.caption_col, use_uid, cfg.extra_columns, seen,
                          cfg.max_caption_chars, path)
        for start in range(0, table.num_rows, cfg.rows_per_part):
            part = Part(index, in_dir / f"{part_name(index)}.parquet", Path(stage_dir))
            atomic_write_parquet(part.input_path, table.slice(start, cfg.rows_per_part))
            parts.append(part)
            index += 1
        rows += table.num_rows
    atomic_write_json(manifest_path, {"identity": identity, "parts": len(parts), "rows": rows,
                                      "files": [str(p) for p in files]})
    log.info("download input: %d rows from %d file(s) in %d parts", rows, len(files), len(parts))
    return parts
