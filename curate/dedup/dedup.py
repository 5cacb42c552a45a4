"""The dedup stage: exact (image bytes, image+caption), near-duplicate captions (MinHash-LSH) and
near-duplicate images (SemDeDup). Marks, never deletes: `dedup/dup.parquet` has a row per input uid."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.dedup.copy_search import copy_candidates
from curate.dedup.copy_verifier import WEIGHTS, Verifier
from curate.dedup.image_match import ThumbnailStore, pixel_match
from curate.dedup.minhash import memory_buckets, near_duplicate_captions
from curate.dedup.semdedup import near_duplicate_images
from curate.io import (atomic_write_json, atomic_write_parquet, file_fingerprint, fingerprint, list_parts,
                       markers_fingerprint, read_json)
from curate.schema import DUP_REASONS, KEPT, NOT_SCORED, STATUS, UID, Status

log = logging.getLogger(__name__)


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
        30.0, gt=0, le=255, description="... and no 4 x 4 cell's mean colour more than this many levels apart "
        "after one brightness factor: a coarse guard beside the verifier; null = off")
    copy_search_k: int = Field(
        10, ge=0, le=100, description="also propose each row's k nearest images by their own pixels (8 px "
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
            raise ValueError("dedup.copy_search_k proposes pairs for the pixel check: set dedup.image_match_min "
                             "too, or copy_search_k: 0")
        return self


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
    ok = np.array([s == Status.OK for s in table.column(STATUS).to_pylist()], dtype=bool)
    rows = np.flatnonzero(ok)
    taken = pa.array(rows, pa.int64())

    def column(name: str) -> list:
        return table.column(name).take(taken).to_pylist()

    sha, caption_hash = column("sha256"), column("caption_hash")
    links, centroid_sim = _image_links(table.take(taken), cfg, download_dir) if cfg.images and len(rows) else (
        _Links.empty(), np.full(len(rows), np.nan, dtype=np.float32))
    preference = _preference(column(keep_col) if keep_col else None, len(rows), cfg, centroid_sim)
    order = np.lexsort((np.array(column(UID)), -preference))  # most preferred first, ties by uid
    decision = _decide(sha if cfg.exact else [None] * len(rows), caption_hash, links, order)
    captions = _caption_groups(column("caption"), caption_hash, cfg, order, buckets) if cfg.captions else None
    return _dup_table(table, rows, decision, captions)


class _Links:
    """Confirmed near-image links between row numbers, with their similarity."""

    def __init__(self, first: np.ndarray, second: np.ndarray, similarity: np.ndarray):
        self.first, self.second, self.similarity = first, second, similarity

    @classmethod
    def empty(cls) -> "_Links":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def by_row(self, n: int) -> list[list[tuple[int, float]]]:
        out: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for i, j, sim in zip(self.first.tolist(), self.second.tolist(), self.similarity.tolist()):
            out[i].append((j, sim))
            out[j].append((i, sim))
        return out


def _image_links(table: pa.Table, cfg: DedupConfig, download_dir: Path | None) -> tuple[_Links, np.ndarray]:
    """Near-image links among `table`'s rows (all `ok`): SemDeDup's pairs and the copy search's, each
    confirmed pixel for pixel when `image_match_min` is set; and each row's cosine to its k-means centroid."""
    emb = table.column("image_embedding").combine_chunks()
    dim = emb.type.list_size
    vectors = np.asarray(emb.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    vectors[np.asarray(emb.is_null())] = np.nan
    check = None if cfg.image_match_min is None else PixelCheck(table, download_dir, cfg)
    pairs, centroid_sim = near_duplicate_images(vectors, cfg.image_eps, cfg.cluster_size, confirm=check)
    first = np.array([p[0] for p in pairs], np.int64)
    second = np.array([p[1] for p in pairs], np.int64)
    similarity = np.array([p[2] for p in pairs], np.float32)
    if check is not None:
        log.info("dedup: %d of %d near-image candidate pairs match pixel for pixel", check.confirmed, check.candidates)
    if cfg.copy_search_k:
        a, b = copy_candidates(check.store, table.num_rows, cfg.copy_search_k)
        confirmed = check(a, b)  # in one call: each row's crops are computed once per pass
        log.info("dedup: copy search proposed %d pairs, %d match pixel for pixel", len(a), int(confirmed.sum()))
        a, b = a[confirmed], b[confirmed]
        first, second = np.concatenate([first, a]), np.concatenate([second, b])
        similarity = np.concatenate([similarity, np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float32)])
    return _Links(first, second, similarity), centroid_sim


@dataclass
class _Decision:
    """Per row number: the row kept for it (itself when kept), the reason, the link's similarity and the
    row at the link's other end."""

    kept_for: np.ndarray
    reason: list
    similarity: np.ndarray
    linked_to: np.ndarray


def _decide(sha: list, caption_hash: list, links: _Links, order: np.ndarray) -> _Decision:
    """Keep or drop each row, most preferred first. Rows with the same image bytes (or identical embeddings)
    are one picture: its most preferred row stays, the others are `exact_pair` (same bytes and caption),
    `exact_image` (same bytes) or `near_image` copies of it. A picture is dropped as `near_image` only when it
    has a link of its own to a picture already kept, and names that kept row: a chain A~B~C with A kept and C
    unlike A keeps C."""
    n = len(order)
    picture = _picture_ids(sha, links)
    neighbours = links.by_row(n)
    members: dict[int, list[int]] = {}
    for k in order.tolist():
        members.setdefault(int(picture[k]), []).append(k)
    kept_row: dict[int, int] = {}  # picture -> its kept row, for kept pictures
    decision = _Decision(np.arange(n), [None] * n, np.full(n, np.nan, np.float32), np.full(n, -1))
    for k in order.tolist():
        pic = int(picture[k])
        if members[pic][0] != k:
            continue  # decided with its picture's first row
        best = None  # (similarity, kept row, linked row) of the strongest link to a kept picture
        for row in members[pic]:
            for other, sim in neighbours[row]:
                kept = kept_row.get(int(picture[other]))
                if kept is not None and (best is None or sim > best[0]):
                    best = (sim, kept, other)
        if best is None:
            kept_row[pic] = k
            for row in members[pic][1:]:
                decision.kept_for[row], decision.linked_to[row], decision.similarity[row] = k, k, 1.0
                decision.reason[row] = _copy_reason(sha, caption_hash, row, k)
            continue
        for row in members[pic]:
            decision.kept_for[row], decision.linked_to[row], decision.similarity[row] = best[1], best[2], best[0]
            decision.reason[row] = "near_image"
    return decision


def _copy_reason(sha: list, caption_hash: list, row: int, kept: int) -> str:
    if sha[row] is None or sha[row] != sha[kept]:
        return "near_image"  # identical embeddings, other bytes
    return "exact_pair" if caption_hash[row] == caption_hash[kept] else "exact_image"


def _picture_ids(sha: list, links: _Links) -> np.ndarray:
    """One id per picture: rows joined by the same image hash or by a link of similarity 1 (identical
    embeddings), transitively; both are equivalences, so no chain joins unlike pictures."""
    parent = np.arange(len(sha))
    first: dict = {}
    same = [(first.setdefault(s, k), k) for k, s in enumerate(sha) if s]
    identical = links.similarity >= 1.0
    for i, j in [*same, *zip(links.first[identical].tolist(), links.second[identical].tolist())]:
        a, b = _root(parent, i), _root(parent, j)
        parent[max(a, b)] = min(a, b)
    return np.array([_root(parent, k) for k in range(len(sha))], np.int64)


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _caption_groups(captions: list, caption_hash: list, cfg: DedupConfig, order: np.ndarray, buckets):
    """(size of each row's caption near-duplicate group, the group's most preferred row): a signal for tier
    rules, never a drop. Groups join captions of the same hash and MinHash-LSH pairs, transitively."""
    n = len(captions)
    parent = np.arange(n)

    def union(i: int, j: int) -> None:
        a, b = _root(parent, i), _root(parent, j)
        parent[max(a, b)] = min(a, b)

    first: dict = {}
    for k, h in enumerate(caption_hash):
        if h is not None:
            union(first.setdefault(h, k), k)
    for i, j, _ in near_duplicate_captions(captions, cfg.caption_threshold, cfg.num_perm, cfg.shingle,
                                           cfg.shingle_n, buckets):
        union(i, j)
    roots = np.array([_root(parent, k) for k in range(n)], np.int64)
    head: dict[int, int] = {}
    for k in order.tolist():
        head.setdefault(int(roots[k]), k)
    return np.bincount(roots, minlength=n)[roots], np.array([head[int(r)] for r in roots], np.int64)


def _dup_table(table: pa.Table, rows: np.ndarray, decision: _Decision, captions) -> pa.Table:
    """dup.parquet: one row per input row; rows that took no part (not `ok`) have nulls."""
    n = table.num_rows
    uids = table.column(UID).to_pylist()
    kept_for = decision.kept_for
    dropped_for = np.bincount(kept_for[kept_for != np.arange(len(rows))], minlength=len(rows))
    group, keep, reason, dup_of, similarity, linked_to = ([None] * n for _ in range(6))
    caption_count, caption_of = [None] * n, [None] * n
    for k, i in enumerate(rows.tolist()):
        kept = int(kept_for[k])
        keep[i] = kept == k
        if kept != k or dropped_for[k]:
            group[i] = int(rows[kept])
        if kept != k:
            reason[i], dup_of[i] = decision.reason[k], uids[rows[kept]]
            similarity[i], linked_to[i] = float(decision.similarity[k]), uids[rows[decision.linked_to[k]]]
        if captions is not None:
            caption_count[i] = int(captions[0][k])
            head = int(captions[1][k])
            caption_of[i] = uids[rows[head]] if head != k else None
    return pa.table({UID: uids, "dup_group": pa.array(group, pa.int64()), "dup_keep": pa.array(keep, pa.bool_()),
                     "dup_reason": pa.array(reason, pa.string()), "dup_of": pa.array(dup_of, pa.string()),
                     "dup_similarity": pa.array(similarity, pa.float32()), "dup_linked_to": pa.array(linked_to, pa.string()),
                     "caption_dup_count": pa.array(caption_count, pa.int32()),
                     "caption_dup_of": pa.array(caption_of, pa.string())})


class PixelCheck:
    """SemDeDup's `confirm`: which candidate pairs (row numbers of `table`) also match pixel for pixel
    (curate.dedup.image_match), with counts for the log."""

    def __init__(self, table: pa.Table, download_dir: Path | None, cfg: DedupConfig):
        if download_dir is None:
            raise ValueError("dedup.image_match_min needs the download stage's images (run inside a run directory)")
        self.store, self.minimum = ThumbnailStore(table, download_dir), cfg.image_match_min
        self.colour_max = cfg.image_colour_max
        self.verifier = None if cfg.image_verifier_min is None else Verifier(cfg.image_verifier_min)
        self.candidates = self.confirmed = 0

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        if not len(first):
            return np.zeros(0, bool)
        rows = np.unique(np.concatenate([first, second]))
        match = pixel_match(self.store.get(rows), np.searchsorted(rows, first), np.searchsorted(rows, second),
                            self.minimum, self.colour_max, self.verifier)
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
    verifier = file_fingerprint(WEIGHTS) if cfg.image_match_min is not None and cfg.image_verifier_min else None
    identity = fingerprint(cfg.model_dump(mode="json"), markers_fingerprint(done_markers), verifier)
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
    by_status = {KEPT: sum(1 for k in keeps if k), NOT_SCORED: sum(1 for k in keeps if k is None)}
    for r in DUP_REASONS:
        by_status[r] = reasons.count(r)
    stats = {"input_rows": dup.num_rows, "by_status": by_status,
             "groups": len({g for g in dup.column("dup_group").to_pylist() if g is not None}),
             "shared_caption_rows": sum(1 for c in dup.column("caption_dup_count").to_pylist() if c and c > 1),
             "keep": cfg.keep, "keep_score": keep_col, "wall_s": round(time.time() - start, 2)}
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_json(done, {"identity": identity})
    return stats
