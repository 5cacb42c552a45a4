"""The dedup stage: exact (image bytes, image+caption), near-duplicate captions (MinHash-LSH) and
near-duplicate images (SemDeDup). Marks, never deletes: `dedup/dup.parquet` has a row per input uid."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.dedup import VERIFIER_WEIGHTS
from curate.dedup.decide import Decisions, write_dup
from curate.dedup.partitions import (Plan, assign_part, band_partition, identity_partition, image_partition,
                                     prepare_part)
from curate.dedup.rare_sizes import RARE_SIZES_FILE, count_sizes, rare_sizes
from curate.dedup.semdedup import kmeans_assign
from curate.io import atomic_write_json, file_fingerprint, fingerprint, list_parts, markers_fingerprint, read_json
from curate.schema import DUP_REASONS, KEPT, NOT_SCORED
from curate.stage import run_in_process

log = logging.getLogger(__name__)

SAMPLE_ROWS = 100_000  # embeddings the top-level k-means is fitted on
HASH_PARTITION_ROWS = 200_000  # pool rows per hash partition of the identity and band records


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = True
    captions: bool = True
    caption_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard of caption shingle sets")
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: Literal["word", "char"] = "word"
    shingle_n: int = Field(2, ge=1, le=10, description="word bigrams by default: one changed word in a short caption is not a duplicate")
    images: bool = True
    image_eps: float = Field(0.05, ge=0, lt=1, description="SemDeDup proposes pairs with cosine >= 1 - eps")
    image_match_min: float | None = Field(
        0.75, ge=-1, le=1, description="a proposed pair is a duplicate only with this aligned shape correlation "
        "(curate/dedup/image_match.py: copies resized, re-encoded, cropped off-centre, padded, brightened, "
        "grayscale, blurred, watermarked) and the tests below; null = SemDeDup alone, which also drops different "
        "pictures of the same thing")
    image_verifier_min: float | None = Field(
        0.99, gt=0, lt=1, description="... and the copy verifier (curate/dedup/copy_verifier.py, a small network "
        "on the aligned pair) says copy with at least this probability: another skin tone, colourway or glyph in the "
        "same frame is not a copy; null = off")
    image_colour_max: float | None = Field(
        40.0, gt=0, le=255, description="... and no 4 x 4 cell's mean colour more than this many levels apart "
        "after one brightness factor: a coarse guard beside the verifier; null = off")
    image_rotations: list[float] = Field(
        [], description="a pair that fails the pixel check by a little is tried again with one image turned back by "
        "each of these angles (degrees), e.g. [4, -4]: copies turned 2-6 degrees are found, at a cost in time and in a "
        "few pictures lost (README, the dedup options' costs); [] = off")
    image_rare_size_rows: int | None = Field(
        8, ge=1, le=64, description="... except that a pair of one exact width x height that at most this many "
        "rows of the pool have, both larger than the 64 px thumbnail, with no third picture of that size like "
        "either, needs only 0.8 of the verifier: an edit that keeps the canvas (a watermark, brightness, "
        "grayscale) keeps the size, which different pictures share only by chance (curate/dedup/rare_sizes.py); "
        "null = off")
    image_lone_pair_verifier_min: float | None = Field(
        0.8, gt=0, lt=1, description="... and a pair with colour on either side, where no third picture passes the "
        "shape bar and the colour guard with either row, needs only this much of the verifier: lookalikes come in "
        "families (skin tones, flags of one layout), a picture and its copy in twos (curate/dedup/lone_pairs.py); "
        "null = off")
    copy_search_k: int = Field(
        5, ge=0, le=100, description="also propose each row's k nearest images by their own pixels (8 px "
        "thumbnails, 25 windows of each row: off-centre crops found too) for the pixel check: finds copies a "
        "weak embedding puts far apart; needs image_match_min; 0 = off")
    cluster_size: int = Field(1000, ge=2, description="k-means clusters = rows / cluster_size")
    keep: Literal["score", "farthest_from_centroid"] = Field("score", description="which member of a group stays")
    keep_score: str | None = Field(None, description="score column for keep=score; default the first score_*")
    partition_rows: int = Field(
        200_000, ge=1000, description="pools larger than this are split into top-level partitions of about "
        "this many rows (a k-means fitted on a sample), each one task holding about 3 x rows x dim x 4 bytes")
    partition_overlap: float = Field(
        0.01, ge=0, le=2, description="a row whose cosine to its second-nearest partition centroid is within this "
        "of its nearest goes to both partitions, so a copy and its source on either side of a border still meet "
        "(0.01: ~10% more rows; recall against brute force 0.97 -> 0.99 in benchmarks/bench_scale.py)")

    @model_validator(mode="before")
    @classmethod
    def _forget_lsh_shuffle(cls, data):
        """Runs made before the bands were hash-partitioned name `lsh_shuffle`; it no longer changes anything."""
        if isinstance(data, dict) and "lsh_shuffle" in data:
            log.warning("dedup.lsh_shuffle is ignored: LSH bands are always grouped by hash partitions, a task each")
            data = {k: v for k, v in data.items() if k != "lsh_shuffle"}
        return data

    @model_validator(mode="after")
    def _copy_search_needs_pixel_check(self) -> "DedupConfig":
        if self.copy_search_k and self.image_match_min is None:
            raise ValueError("dedup.copy_search_k proposes pairs for the pixel check: set dedup.image_match_min "
                             "too, or copy_search_k: 0")
        return self


def keep_column(parts: list[Path], keep_score: str | None) -> str | None:
    """The score column that decides which member of a group stays (default the first score_*)."""
    names = pq.read_schema(parts[0]).names
    scores = [c for c in names if c.startswith("score_")]
    keep_col = keep_score or (scores[0] if scores else None)
    if keep_col is not None and keep_col not in names:
        raise ValueError(f"dedup.keep_score {keep_col!r} is not a column of the score output ({scores})")
    return keep_col


def dedup_parts(cfg: DedupConfig, parts: list[Path], out: Path, work: Path, download_dir: Path | None = None,
                parallel: Callable = run_in_process) -> tuple[str | None, dict]:
    """Write dup.parquet (`out`) for the score `parts`, through bounded-memory tasks run by `parallel`
    (curate.dedup.partitions) that leave their records in `work` (removed at the end); returns the
    preference column and each phase's wall seconds."""
    keep_col = keep_column(parts, cfg.keep_score)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    offsets, total = np.r_[0, np.cumsum(sizes)[:-1]].tolist(), int(sum(sizes))
    top = max(1, -(-total // cfg.partition_rows))
    shutil.rmtree(work, ignore_errors=True)
    plan = Plan(cfg, work, keep_col, max(1, -(-total // HASH_PARTITION_ROWS)), cfg.image_match_min is not None,
                download_dir)
    phases, clock = {}, time.time()

    def phase(name: str) -> None:
        nonlocal clock
        phases[name], clock = round(time.time() - clock, 2), time.time()

    try:
        one = np.zeros((1, 1), np.float32) if top == 1 else None  # one partition: written while preparing
        sample = 0 if top == 1 else max(1, SAMPLE_ROWS // len(parts))
        samples = parallel([(prepare_part, (plan, k, p, offsets[k], sample, one)) for k, p in enumerate(parts)],
                            "dedup: prepare parts")
        phase("prepare")
        if top > 1:
            centroids = _top_centroids(samples, top)
            parallel([(assign_part, (plan, k, p, offsets[k], centroids)) for k, p in enumerate(parts)],
                     "dedup: partition the embeddings")
            phase("partition")
        if cfg.images:
            if cfg.image_match_min is not None and cfg.image_rare_size_rows:
                counts = parallel([(count_sizes, (p,)) for p in parts], "dedup: count image sizes")
                work.mkdir(parents=True, exist_ok=True)
                np.save(work / RARE_SIZES_FILE, rare_sizes(counts, cfg.image_rare_size_rows))
            parallel([(image_partition, (plan, c)) for c in range(top)], "dedup: images, a task per partition")
            phase("images")
        tasks = [(identity_partition, (plan, h)) for h in range(plan.hash_partitions)]
        tasks += [(band_partition, (plan, h)) for h in range(plan.hash_partitions)] if cfg.captions else []
        parallel(tasks, "dedup: same keys and caption bands, a task per hash partition")
        phase("keys_and_bands")
        write_dup(plan, Decisions(plan), out)
        phase("decide_and_write")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return keep_col, phases


def _top_centroids(samples: list[np.ndarray], n: int) -> np.ndarray:
    """`n` unit centroids of a spherical k-means on the parts' samples (identical vectors counted once)."""
    sample = np.unique(np.concatenate(samples), axis=0)
    _, centroids = kmeans_assign(sample, min(n, len(sample)))
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)


def find_duplicates(table: pa.Table, cfg: DedupConfig, keep_col: str | None = None,
                    download_dir: Path | None = None) -> pa.Table:
    """dup.parquet's table for one in-memory `table` (all rows; only `ok` rows take part), in this process;
    `download_dir` holds the images for `image_match_min`."""
    with tempfile.TemporaryDirectory(prefix="dedup-") as tmp:
        part = Path(tmp) / "part-00000.parquet"
        pq.write_table(table, part)
        cfg = cfg.model_copy(update={"keep_score": keep_col}) if keep_col else cfg
        dedup_parts(cfg, [part], Path(tmp) / "dup.parquet", Path(tmp) / "work", download_dir)
        return pq.read_table(Path(tmp) / "dup.parquet")


def run_dedup(cfg: DedupConfig, run_dir: Path, parallel: Callable = run_in_process) -> dict:
    """Write dedup/dup.parquet and stats.json; skipped when done from the same score output and config."""
    run_dir = Path(run_dir)
    score_dir, out_dir = run_dir / "score", run_dir / "dedup"
    done_markers = sorted((score_dir / "_done").glob("*.json"))
    checks_pixels = cfg.image_match_min is not None and cfg.image_verifier_min
    verifier = file_fingerprint(VERIFIER_WEIGHTS) if checks_pixels else None
    identity = fingerprint(cfg.model_dump(mode="json"), markers_fingerprint(done_markers), verifier)
    done = out_dir / "_done.json"
    if done.exists() and read_json(done).get("identity") == identity and (out_dir / "stats.json").exists():
        log.info("dedup: %s is up to date", out_dir)
        return read_json(out_dir / "stats.json")
    parts = list_parts(score_dir)
    if not parts:
        raise FileNotFoundError(f"{score_dir} holds no parts: run the score stage first")
    start = time.time()
    keep_col, phases = dedup_parts(cfg, parts, out_dir / "dup.parquet", out_dir / "_work", run_dir / "download",
                                   parallel)
    stats = {**dup_counts(out_dir / "dup.parquet"), "keep": cfg.keep, "keep_score": keep_col,
             "wall_s": round(time.time() - start, 2), "phases_s": phases}
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_json(done, {"identity": identity})
    return stats


def dup_counts(path: Path) -> dict:
    """stats.json's counts from dup.parquet, a row group at a time."""
    by_status = {KEPT: 0, NOT_SCORED: 0, **{r: 0 for r in DUP_REASONS}}
    groups, shared, rows = set(), 0, 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["dup_keep", "dup_reason", "dup_group",
                                                            "caption_dup_count"]):
        rows += batch.num_rows
        keep = batch.column("dup_keep")
        by_status[KEPT] += int(pc.sum(keep.fill_null(False)).as_py() or 0)
        by_status[NOT_SCORED] += keep.null_count
        for item in pc.value_counts(batch.column("dup_reason").drop_null()).to_pylist():
            by_status[item["values"]] += item["counts"]
        groups.update(pc.unique(batch.column("dup_group").drop_null()).to_pylist())
        shared += int(pc.sum(pc.greater(batch.column("caption_dup_count"), 1).fill_null(False)).as_py() or 0)
    return {"input_rows": rows, "by_status": by_status, "groups": len(groups), "shared_caption_rows": shared}
