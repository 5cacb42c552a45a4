"""The dedup stage: exact (image bytes, image+caption), near-duplicate captions (MinHash-LSH) and
near-duplicate images (SemDeDup). Marks, never deletes: `dedup/dup.parquet` has a row per input uid."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.copy_search import copy_candidates
from curate.io import atomic_write_json, atomic_write_parquet, fingerprint, list_parts, markers_fingerprint, read_json
from curate.image_match import ThumbnailStore, pixel_match
from curate.minhash import memory_buckets, near_duplicate_captions
from curate.schema import STATUS, UID, Status
from curate.semdedup import near_duplicate_images

log = logging.getLogger(__name__)

REASONS = ("exact_pair", "exact_image", "near_caption", "near_image")  # first = strongest


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = True
    captions: bool = True
    caption_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard of caption shingle sets")
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: Literal["word", "char"] = "word"
    shingle_n: int = Field(2, ge=1, le=10, description="word bigrams by default: one changed word in a short caption is not a duplicate")
    images: bool = True
    image_eps: float = Field(0.05, ge=0, lt=1, description="pairs with cosine >= 1 - eps are near duplicates")
    image_match_min: float | None = Field(
        None, ge=-1, le=1, description="also require this pixel similarity of the pair, best over aligned centred "
        "crops (curate/image_match.py; copies only: re-encoded, resized, margins cropped); null = SemDeDup alone, which also drops "
        "different pictures of the same thing")
    copy_search_k: int = Field(
        0, ge=0, le=100, description="also propose each row's k nearest images by their own pixels (8 px "
        "thumbnails, crops included) for the pixel check: finds copies a weak embedding puts far apart; "
        "needs image_match_min; 0 = off")
    cluster_size: int = Field(1000, ge=2, description="k-means clusters = rows / cluster_size")
    keep: Literal["score", "farthest_from_centroid"] = Field("score", description="which member of a group stays")
    keep_score: str | None = Field(None, description="score column for keep=score; default the first score_*")
    lsh_shuffle: Literal["memory", "ray"] = Field(
        "memory", description="group LSH bands in memory, or as a Ray shuffle (group by band key) across the cluster")

    @model_validator(mode="after")
    def _copy_search_needs_pixel_check(self) -> "DedupConfig":
        if self.copy_search_k and self.image_match_min is None:
            raise ValueError("dedup.copy_search_k proposes pairs for the pixel check: set dedup.image_match_min too")
        return self


class _Groups:
    """Union-find over row indices, remembering each row's strongest incident link."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.reason = np.full(n, len(REASONS), dtype=np.int8)
        self.similarity = np.full(n, np.nan, dtype=np.float32)
        self.partner = np.full(n, -1)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def link(self, i: int, j: int, reason: int, similarity: float) -> None:
        for k in (i, j):
            if reason < self.reason[k]:
                self.reason[k], self.similarity[k], self.partner[k] = reason, similarity, i + j - k
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _exact_links(keys: list, groups: _Groups, reason: int) -> int:
    first: dict = {}
    n = 0
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            groups.link(first[key], i, reason, 1.0)
            n += 1
        else:
            first[key] = i
    return n


def read_scored(score_dir: Path, keep_score: str | None, image_keys: bool = False) -> tuple[pa.Table, str | None]:
    """The score output's columns dedup needs (with `image_keys`, where each image lies in the download tars)."""
    parts = list_parts(score_dir)
    if not parts:
        raise FileNotFoundError(f"{score_dir} holds no parts: run the score stage first")
    names = pq.read_schema(parts[0]).names
    scores = [c for c in names if c.startswith("score_")]
    keep_col = keep_score or (scores[0] if scores else None)
    if keep_col is not None and keep_col not in names:
        raise ValueError(f"dedup.keep_score {keep_col!r} is not a column of the score output ({scores})")
    columns = [UID, STATUS, "caption", "sha256", "caption_hash", "image_embedding"] + ([keep_col] if keep_col else [])
    columns += ["shard", "key"] if image_keys else []
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts]), keep_col


def find_duplicates(table: pa.Table, cfg: DedupConfig, keep_col: str | None, buckets=memory_buckets,
                    download_dir: Path | None = None) -> pa.Table:
    """dup.parquet's table for `table` (all rows; only `ok` rows take part). `buckets` groups caption
    signatures by LSH band (in memory, or a Ray shuffle passed in by the pipeline); `download_dir` holds
    the images for `image_match_min`."""
    n = table.num_rows
    ok = np.array([s == Status.OK for s in table.column(STATUS).to_pylist()])
    rows = np.flatnonzero(ok)
    taken = pa.array(rows, pa.int64())

    def column(name: str) -> list:
        return table.column(name).take(taken).to_pylist()

    groups = _Groups(len(rows))
    sha, caption_hash = column("sha256"), column("caption_hash")
    if cfg.exact:
        _exact_links([(s, c) if s else None for s, c in zip(sha, caption_hash)], groups, 0)
        _exact_links(sha, groups, 1)
    if cfg.captions:
        for i, j, sim in near_duplicate_captions(column("caption"), cfg.caption_threshold, cfg.num_perm, cfg.shingle,
                                                 cfg.shingle_n, buckets):
            groups.link(i, j, 2, sim)
    centroid_sim = np.full(len(rows), np.nan, dtype=np.float32)
    if cfg.images and len(rows):
        emb = table.column("image_embedding").take(taken).combine_chunks()
        dim = emb.type.list_size
        vectors = np.asarray(emb.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
        vectors[np.asarray(emb.is_null())] = np.nan
        check = None if cfg.image_match_min is None else PixelCheck(table.take(taken), download_dir, cfg.image_match_min)
        pairs, centroid_sim = near_duplicate_images(vectors, cfg.image_eps, cfg.cluster_size, confirm=check)
        if check is not None:
            log.info("dedup: %d of %d near-image candidate pairs match pixel for pixel", check.confirmed, check.candidates)
        for i, j, sim in pairs:
            groups.link(i, j, 3, sim)
        if cfg.copy_search_k:
            first, second = copy_candidates(check.store, len(rows), cfg.copy_search_k)
            ok = check(first, second)  # in one call: each row's crops are computed once per pass
            confirmed = first[ok], second[ok]
            log.info("dedup: copy search proposed %d pairs, %d match pixel for pixel", len(first), len(confirmed[0]))
            cosine = np.einsum("ij,ij->i", vectors[confirmed[0]], vectors[confirmed[1]])
            for i, j, sim in zip(*confirmed, cosine):
                groups.link(int(i), int(j), 3, float(sim))

    preference = _preference(column(keep_col) if keep_col else None, len(rows), cfg, centroid_sim)
    roots = np.array([groups.find(k) for k in range(len(rows))])
    keeper: dict[int, int] = {}
    for k in np.lexsort((np.array(column(UID)), -preference)):
        keeper.setdefault(int(roots[k]), int(k))
    size = np.bincount(roots, minlength=len(rows))

    group = [None] * n
    keep = [None] * n
    reason = [None] * n
    dup_of = [None] * n
    similarity = [None] * n
    linked_to = [None] * n
    uids = table.column(UID).to_pylist()
    for k, i in enumerate(rows):
        root = int(roots[k])
        kept = keeper[root]
        keep[i] = kept == k
        if size[root] > 1:
            group[i] = int(rows[kept])
        if kept != k:
            reason[i] = REASONS[groups.reason[k]]
            dup_of[i] = uids[rows[kept]]
            similarity[i] = float(groups.similarity[k])
            linked_to[i] = uids[rows[groups.partner[k]]]
    return pa.table({UID: uids, "dup_group": pa.array(group, pa.int64()), "dup_keep": pa.array(keep, pa.bool_()),
                     "dup_reason": pa.array(reason, pa.string()), "dup_of": pa.array(dup_of, pa.string()),
                     "dup_similarity": pa.array(similarity, pa.float32()), "dup_linked_to": pa.array(linked_to, pa.string())})


class PixelCheck:
    """SemDeDup's `confirm`: which candidate pairs (row numbers of `table`) also match pixel for pixel
    (curate.image_match), with counts for the log."""

    def __init__(self, table: pa.Table, download_dir: Path | None, minimum: float):
        if download_dir is None:
            raise ValueError("dedup.image_match_min needs the download stage's images (run inside a run directory)")
        self.store, self.minimum = ThumbnailStore(table, download_dir), minimum
        self.candidates = self.confirmed = 0

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        if not len(first):
            return np.zeros(0, bool)
        rows = np.unique(np.concatenate([first, second]))
        match = pixel_match(self.store.get(rows), np.searchsorted(rows, first), np.searchsorted(rows, second), self.minimum)
        ok = match >= self.minimum
        self.candidates, self.confirmed = self.candidates + len(first), self.confirmed + int(ok.sum())
        return ok


def _preference(scores: list | None, n: int, cfg: DedupConfig, centroid_sim) -> np.ndarray:
    """Higher is kept first."""
    if cfg.keep == "farthest_from_centroid":
        pref = -centroid_sim
    elif scores is None:
        pref = np.zeros(n, dtype=np.float32)
    else:
        pref = np.array([np.nan if v is None else v for v in scores], dtype=np.float64)
    return np.nan_to_num(np.asarray(pref, dtype=np.float64), nan=-np.inf)


def run_dedup(cfg: DedupConfig, run_dir: Path, buckets=memory_buckets) -> dict:
    """Write dedup/dup.parquet and stats.json; skipped when done from the same score output and config."""
    run_dir = Path(run_dir)
    score_dir, out_dir = run_dir / "score", run_dir / "dedup"
    done_markers = sorted((score_dir / "_done").glob("*.json"))
    identity = fingerprint(cfg.model_dump(mode="json"), markers_fingerprint(done_markers))
    done = out_dir / "_done.json"
    if done.exists() and read_json(done).get("identity") == identity and (out_dir / "stats.json").exists():
        log.info("dedup: %s is up to date", out_dir)
        return read_json(out_dir / "stats.json")
    start = time.time()
    table, keep_col = read_scored(score_dir, cfg.keep_score, image_keys=cfg.image_match_min is not None)
    dup = find_duplicates(table, cfg, keep_col, buckets, run_dir / "download")
    atomic_write_parquet(out_dir / "dup.parquet", dup)
    reasons = dup.column("dup_reason").to_pylist()
    keeps = dup.column("dup_keep").to_pylist()
    by_status = {"kept": sum(1 for k in keeps if k), "not_scored": sum(1 for k in keeps if k is None)}
    for r in REASONS:
        by_status[r] = reasons.count(r)
    stats = {"input_rows": dup.num_rows, "by_status": by_status,
             "groups": len({g for g in dup.column("dup_group").to_pylist() if g is not None}),
             "keep": cfg.keep, "keep_score": keep_col, "wall_s": round(time.time() - start, 2)}
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_json(done, {"identity": identity})
    return stats
