"""The download stage: img2dataset fetches each part's URLs into one WebDataset shard; we keep a
uid-keyed Parquet per part with a status for every row, including the rows img2dataset never saw."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from curate.fetch import Limits, guarded_img2dataset
from curate.io import Part, fingerprint
from curate.netguard import Guard
from curate.schema import CAPTION, ERROR, STATUS, UID, URL, Status
from curate.stage import MapStage, Resources

SHARDS_DIR = "shards"
KEY_DIGITS = 5  # img2dataset's oom_shard_count: shard 42 is shards/00042.tar


class DownloadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    INPUT_KEYS: ClassVar[set[str]] = {"input_format", "url_col", "caption_col", "uid_col", "extra_columns", "rows_per_part",
                  "max_caption_chars"}

    input: Path | None = Field(None, description="parquet/csv/jsonl file or folder; default: the run's synth pool")
    input_format: Literal["auto", "parquet", "csv", "jsonl"] = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    uid_col: str | None = Field("uid", description="kept when the input has it (DataComp), else derived")
    extra_columns: list[str] = Field(default_factory=list, description="input columns carried through")
    rows_per_part: int = Field(1000, ge=1, le=1_000_000)
    thread_count: int = Field(32, ge=1, le=1024)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0, le=10, description="img2dataset's per-URL retries")
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


OUTPUT_FIELDS = {
    "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(), "original_height": pa.int32(),
    "sha256": pa.string(), "key": pa.string(), "shard": pa.string(),
}


class DownloadStage(MapStage):
    """One part = one img2dataset shard. Rows with a status from the input pass through untouched.
    `allowed_endpoints`: (ip, port) pairs reachable whatever the address policy (curate's own server)."""

    name = "download"
    requires = (UID, URL, CAPTION, STATUS, ERROR)
    provides = (STATUS, ERROR, *OUTPUT_FIELDS)
    resources = Resources(num_cpus=1)

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

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        shard_dir = part.stage_dir / SHARDS_DIR
        name = f"{part.index:0{KEY_DIGITS}d}"
        pending = table.filter(pc.is_null(table.column(STATUS))).select([UID, CAPTION, URL])
        results: dict[str, dict] = {}
        if pending.num_rows:
            meta = self._download(pending, part, shard_dir, name)
            results = {r[UID]: r for r in meta.to_pylist()}
        return self._merge(table, results, f"{SHARDS_DIR}/{name}.tar")

    def _download(self, pending: pa.Table, part: Part, shard_dir: Path, name: str) -> pa.Table:
        """img2dataset into a folder of this attempt only, then its files renamed into place: an attempt
        still running after its driver died can never interleave writes with the rerun's."""
        for stale in shard_dir.glob(f".{part.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        attempt = shard_dir / f".{part.name}.{uuid.uuid4().hex[:8]}.tmp"
        attempt.mkdir(parents=True)
        try:
            request = attempt / "request.arrow"
            feather.write_feather(pending, str(request), compression="uncompressed")
            guard = Guard(self.cfg.allow_private_networks, self.allowed_endpoints)
            limits = Limits(self.cfg.deadline_s, self.cfg.max_response_bytes, self.cfg.max_image_area)
            with guarded_img2dataset(guard, limits):
                ok, _ = self._downloader(attempt)((part.index, str(request)))
            if not ok:
                raise RuntimeError(f"img2dataset failed on {part.name} (its traceback is above)")
            meta = pq.read_table(attempt / f"{name}.parquet")
            for produced in (f"{name}.tar", f"{name}.parquet", f"{name}_stats.json"):
                os.replace(attempt / produced, shard_dir / produced)
            return meta
        finally:
            shutil.rmtree(attempt, ignore_errors=True)

    def _merge(self, table: pa.Table, results: dict[str, dict], shard: str) -> pa.Table:
        statuses, errors = table.column(STATUS).to_pylist(), table.column(ERROR).to_pylist()
        extra: dict[str, list] = {k: [] for k in OUTPUT_FIELDS}
        for i, uid in enumerate(table.column(UID).to_pylist()):
            row = results.get(uid) if statuses[i] is None else None
            if statuses[i] is None and row is None:
                statuses[i], errors[i] = Status.DOWNLOAD_ERROR, "img2dataset returned no result for this row"
            elif row is not None:
                ok = row["status"] == "success"
                statuses[i] = Status.OK if ok else classify_error(row["error_message"])
                errors[i] = None if ok else (row["error_message"] or row["status"])[:500]
            for k in OUTPUT_FIELDS:
                value = None
                if row is not None and statuses[i] == Status.OK:
                    value = shard if k == "shard" else row.get(k)
                extra[k].append(value)
        out = table.set_column(table.schema.get_field_index(STATUS), STATUS, pa.array(statuses, pa.string()))
        out = out.set_column(out.schema.get_field_index(ERROR), ERROR, pa.array(errors, pa.string()))
        for k, t in OUTPUT_FIELDS.items():
            out = out.append_column(k, pa.array(extra[k], t))
        return out

