"""The download stage: img2dataset fetches each part's URLs into one WebDataset shard; we keep a
uid-keyed Parquet per part with a status for every row, including the rows img2dataset never saw. A
rerun fetches a done part's transient failures again (`retry_transient`) into a shard of their own."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from curate.download.fetch import Limits, guarded_img2dataset
from curate.download.netguard import Guard, resolve_endpoints
from curate.download.pool_input import split_input
from curate.io import Part, fingerprint
from curate.mirror import local
from curate.schema import CAPTION, ERROR, STATUS, UID, URL, Status
from curate.stage import MapStage, Resources, RunContext, Step, done_marker, map_status, run_map_stage
from curate.storage import Location
from curate.synthetic.serve import PoolServer
from curate.synthetic.synth import serve_settings

SHARDS_DIR = "shards"
KEY_DIGITS = 5  # img2dataset's oom_shard_count: shard 42 is shards/00042.tar


class DownloadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    INPUT_KEYS: ClassVar[set[str]] = {"input_format", "url_col", "caption_col", "uid_col", "extra_columns", "rows_per_part",
                  "max_caption_chars"}

    input: Location | None = Field(None, description="parquet/csv/jsonl file or folder; default: the run's synth pool")
    input_format: Literal["auto", "parquet", "csv", "jsonl"] = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    uid_col: str | None = Field("uid", description="kept when the input has it (DataComp), else derived")
    extra_columns: list[str] = Field(default_factory=list, description="input columns carried through")
    rows_per_part: int = Field(1000, ge=1, le=1_000_000)
    thread_count: int = Field(32, ge=1, le=1024)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0, le=10, description="img2dataset's per-URL retries")
    retry_transient: int = Field(1, ge=0, le=100, description=(
        "reruns fetch rows that failed transiently (connection_error, timeout, HTTP 5xx) again, up to this "
        "many times in all; 0 = never"))
    deadline_s: float = Field(60.0, gt=0, description="a whole response must arrive within this (endless bodies)")
    max_response_bytes: int = Field(50_000_000, ge=1, description="larger responses end as too_large")
    allow_private_networks: bool = Field(
        False, description="allow hosts that resolve to loopback, private, link-local or metadata addresses")
    min_side_px: int = Field(32, ge=0)
    max_aspect_ratio: float = Field(5.0, ge=1.0)
    max_image_area: float = Field(1e8, gt=0, description="width*height above this is too_large")
    max_caption_chars: int = Field(4096, ge=1)
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    user_agent_token: str | None = None

    def output_fingerprint(self) -> str:
        """Keys that change what a part's output holds (not how fast it is made)."""
        return fingerprint(self.model_dump(mode="json", include={
            "min_side_px", "max_aspect_ratio", "max_image_area", "encode_format", "disallowed_header_directives",
            "user_agent_token", "max_response_bytes", "allow_private_networks"}))


# img2dataset reports failures as exception text; the first matching needle names the status.
ERROR_STATUSES = (
    ("blocked address", Status.BLOCKED_ADDRESS),
    ("infinite loop", Status.REDIRECT_LOOP),
    ("X-Robots-Tag", Status.BLOCKED_ROBOTS),
    ("HTTP Error", Status.HTTP_ERROR),
    ("timed out", Status.TIMEOUT),
    ("image too small", Status.TOO_SMALL),
    ("aspect ratio too large", Status.BAD_ASPECT_RATIO),
    ("image area too large", Status.TOO_LARGE),
    ("decompression bomb", Status.TOO_LARGE),
    ("response too large", Status.TOO_LARGE),
    ("unknown url type", Status.INVALID_URL),
    ("Image decoding error", Status.DECODE_ERROR),
    ("imdecode", Status.DECODE_ERROR),
    ("IncompleteRead", Status.CONNECTION_ERROR),
    ("Connection", Status.CONNECTION_ERROR),
    ("Remote end closed", Status.CONNECTION_ERROR),
    ("urlopen error", Status.CONNECTION_ERROR),
)


def classify_error(message: str | None) -> str:
    text = message or ""
    for needle, status in ERROR_STATUSES:
        if needle.lower() in text.lower():
            return status
    return Status.DOWNLOAD_ERROR


TRANSIENT_HTTP = re.compile(r"HTTP Error 5\d\d\b")


def is_transient(status: str | None, error: str | None) -> bool:
    """A failure that may not happen on another try: the connection, a timeout, an HTTP 5xx."""
    return status in (Status.CONNECTION_ERROR, Status.TIMEOUT) or (
        status == Status.HTTP_ERROR and TRANSIENT_HTTP.search(error or "") is not None)


ATTEMPTS = "attempts"  # how often the row was fetched: 0 for rows stopped by the input checks
OUTPUT_FIELDS = {  # set for ok rows only
    "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(), "original_height": pa.int32(),
    "sha256": pa.string(), "key": pa.string(), "shard": pa.string(),
}


class DownloadStage(MapStage):
    """One part = one img2dataset shard. Rows with a status from the input pass through untouched.
    `allowed_endpoints`: (ip, port) pairs reachable whatever the address policy (curate's own server)."""

    name = "download"
    requires = (UID, URL, CAPTION, STATUS, ERROR)
    provides = (STATUS, ERROR, *OUTPUT_FIELDS, ATTEMPTS)
    resources = Resources(num_cpus=1)
    portable = True

    def __init__(self, cfg: DownloadConfig, allowed_endpoints: frozenset[tuple[str, int]] = frozenset()):
        self.cfg, self.allowed_endpoints = cfg, frozenset(allowed_endpoints)

    def config_fingerprint(self) -> str:
        return self.cfg.output_fingerprint()

    def setup(self) -> None:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        from img2dataset.resizer import Resizer  # heavy: cv2, albumentations

        self._resizer = Resizer(
            image_size=0, resize_mode="no", resize_only_if_bigger=False, upscale_interpolation="lanczos",
            downscale_interpolation="area", encode_quality=95, encode_format=self.cfg.encode_format,
            skip_reencode=True, disable_all_reencoding=False, min_image_size=self.cfg.min_side_px,
            max_image_area=self.cfg.max_image_area, max_aspect_ratio=self.cfg.max_aspect_ratio, blurrer=None)

    def _downloader(self, shard_dir: Path):
        from img2dataset.downloader import Downloader
        from img2dataset.writer import WebDatasetSampleWriter

        return Downloader(
            sample_writer_class=WebDatasetSampleWriter, resizer=self._resizer, thread_count=self.cfg.thread_count,
            save_caption=True, extract_exif=False, output_folder=str(shard_dir), column_list=[UID, CAPTION, URL],
            timeout=self.cfg.timeout_s, number_sample_per_shard=self.cfg.rows_per_part,
            oom_shard_count=KEY_DIGITS, compute_hash="sha256", verify_hash_type=None,
            encode_format=self.cfg.encode_format, retries=self.cfg.retries,
            user_agent_token=self.cfg.user_agent_token,
            disallowed_header_directives=self.cfg.disallowed_header_directives)

    def redo(self, part: Part) -> bool:
        """A done part runs again while it has transient failures with retries left."""
        if not self.cfg.retry_transient:
            return False
        return any(self._retry_rows(pq.read_table(part.output_path, columns=[STATUS, ERROR, ATTEMPTS])))

    def _retry_rows(self, table: pa.Table) -> list[bool]:
        statuses, errors, attempts = (table.column(c).to_pylist() for c in (STATUS, ERROR, ATTEMPTS))
        return [is_transient(s, e) and a <= self.cfg.retry_transient for s, e, a in zip(statuses, errors, attempts)]

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        """A fresh part fetches every row without a status into shard `NNNNN`; a done part sent back by
        `redo` fetches its transient failures into shard `NNNNN-retryK`, every other row as it was."""
        shard = f"{part.index:0{KEY_DIGITS}d}"
        if done_marker(self, part) is None:
            fetch = table.column(STATUS).is_null().to_pylist()
            table = table.append_column(ATTEMPTS, pa.array([0] * table.num_rows, pa.int32()))
            for k, t in OUTPUT_FIELDS.items():
                table = table.append_column(k, pa.nulls(table.num_rows, t))
        else:
            table = pq.read_table(part.output_path)
            fetch = self._retry_rows(table)
            shard += f"-retry{max(a for a, f in zip(table.column(ATTEMPTS).to_pylist(), fetch) if f)}"
        pending = table.filter(pa.array(fetch)).select([UID, CAPTION, URL])
        results = self._download(pending, part, shard) if pending.num_rows else {}
        return self._merge(table, fetch, results, f"{SHARDS_DIR}/{shard}.tar")

    def _download(self, pending: pa.Table, part: Part, shard: str) -> dict[str, dict]:
        """img2dataset writes the shard (tar, parquet, stats) into the attempt's staging folder, which the
        driver moves into place once it has the result; returns img2dataset's row per uid. A retry's
        shard is renamed to `shard`, or dropped when none of its rows came back."""
        shard_dir = part.staging_dir / SHARDS_DIR
        shard_dir.mkdir(parents=True)
        request = part.staging_dir / "request.arrow"  # img2dataset deletes it when done
        feather.write_feather(pending, str(request), compression="uncompressed")
        guard = Guard(self.cfg.allow_private_networks, self.allowed_endpoints)
        limits = Limits(self.cfg.deadline_s, self.cfg.max_response_bytes, self.cfg.max_image_area)
        with guarded_img2dataset(guard, limits):
            ok, _ = self._downloader(shard_dir)((part.index, str(request)))
        if not ok:
            raise RuntimeError(f"img2dataset failed on {part.name} (its traceback is above)")
        written = f"{part.index:0{KEY_DIGITS}d}"
        results = {r[UID]: r for r in pq.read_table(shard_dir / f"{written}.parquet").to_pylist()}
        if shard != written:
            keep = any(r["status"] == "success" for r in results.values())
            for produced in (f"{written}.tar", f"{written}.parquet", f"{written}_stats.json"):
                if keep:
                    os.replace(shard_dir / produced, shard_dir / produced.replace(written, shard, 1))
                else:
                    (shard_dir / produced).unlink()
        return results

    def _merge(self, table: pa.Table, fetched: list[bool], results: dict[str, dict], shard: str) -> pa.Table:
        """`table` with each fetched row's outcome: status, error, one more attempt and, when ok, the
        image's columns; the other rows as they were."""
        columns = {c: table.column(c).to_pylist() for c in (STATUS, ERROR, ATTEMPTS, *OUTPUT_FIELDS)}
        for i, uid in enumerate(table.column(UID).to_pylist()):
            if not fetched[i]:
                continue
            row = results.get(uid)
            columns[ATTEMPTS][i] += 1
            if row is None:
                status, error = Status.DOWNLOAD_ERROR, "img2dataset returned no result for this row"
            elif row["status"] == "success":
                status, error = Status.OK, None
            else:
                status = classify_error(row["error_message"])
                error = (row["error_message"] or row["status"])[:500]
            columns[STATUS][i], columns[ERROR][i] = status, error
            for k in OUTPUT_FIELDS:
                columns[k][i] = (shard if k == "shard" else row.get(k)) if status == Status.OK else None
        types = {STATUS: pa.string(), ERROR: pa.string(), ATTEMPTS: pa.int32(), **OUTPUT_FIELDS}
        for c, values in columns.items():
            table = table.set_column(table.schema.get_field_index(c), c, pa.array(values, types[c]))
        return table


def run_download(cfg: DownloadConfig, out_dir: Path, runner, serve_dir: Path | None = None) -> dict:
    """Split the input into parts once, then download the parts not yet done (serving `serve_dir`, a synth
    folder, on loopback meanwhile)."""
    stage_dir = Path(out_dir).resolve() / "download"  # absolute: workers may run elsewhere
    parts = split_input(cfg, stage_dir)
    with serving(serve_dir):
        return run_map_stage(DownloadStage(cfg, served_endpoints(serve_dir)), parts, runner, stage_dir)


def serving(synth_dir: Path | None):
    """Serve a synthetic pool's files on the loopback address its URLs name (or do nothing)."""
    if synth_dir is None:
        return contextlib.nullcontext()
    settings = serve_settings(synth_dir)
    return PoolServer(Path(synth_dir) / "files", settings["host"], settings["port"], settings["hang_s"])


def served_endpoints(synth_dir: Path | None) -> frozenset[tuple[str, int]]:
    """The loopback server curate starts for a synthetic pool is reachable whatever
    download.allow_private_networks says (it serves only that pool's files)."""
    if synth_dir is None:
        return frozenset()
    settings = serve_settings(synth_dir)
    return resolve_endpoints(settings["host"], settings["port"])


def local_input(cfg) -> DownloadConfig:
    """A pipeline config's download section, an input on a store replaced by its local copy."""
    return cfg.download.model_copy(update={"input": local(cfg.download.input, cfg.storage)})


class DownloadStep(Step):
    """`download`: the input (default: the run's synth pool, served on loopback with `serve_synth`) split
    into parts, each fetched by img2dataset."""

    name = directory = "download"
    config = DownloadConfig
    reads = ("synth", "synth/pool.parquet")
    counts_rows = default = True
    identity = "per part: its input bytes and the download config (done markers; transient failures are refetched)"

    def needs(self, cfg) -> tuple[str, str] | None:
        return None if cfg.download.input is not None else self.reads

    def check(self, cfg, run_dir: Path, stages: list[str]) -> None:
        if cfg.download.input is not None:
            split_input(local_input(cfg), Path(run_dir).resolve() / self.directory)  # reads and checks the input

    def run(self, ctx: RunContext) -> dict:
        cfg, synth_dir = local_input(ctx.cfg), Path(ctx.run_dir) / "synth"
        if cfg.input is None:
            cfg = cfg.model_copy(update={"input": synth_dir / "pool.parquet"})
        served = ctx.cfg.serve_synth and cfg.input == synth_dir / "pool.parquet"
        return run_download(cfg, ctx.run_dir, ctx.runner, synth_dir if served else None)

    def status(self, run_dir: Path, part_names: list[str]) -> dict:
        return map_status(Path(run_dir) / self.directory, self.name, part_names)

    def funnel(self, stats: dict) -> tuple[str, str, int] | None:
        return ("downloaded (ok)", "downloaded", stats["by_status"].get(Status.OK, 0))

