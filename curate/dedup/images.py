"""Near-duplicate images among a table's rows: SemDeDup's pairs on the embeddings and the copy search's on
the pixels, each confirmed by the pixel check (thumbnails read from the download tars for candidate rows
only, kept on disk: curate.dedup.image_match.ThumbnailStore)."""
from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.dedup.copy_search import copy_candidates
from curate.dedup.copy_verifier import Verifier
from curate.dedup.pictures import Links
from curate.dedup.image_match import THUMB_PX, ThumbnailStore, picture_digest, pixel_match, pixel_verdicts
from curate.dedup.lone_pairs import LonePairs
from curate.dedup.rare_sizes import rare_rows
from curate.dedup.semdedup import embedding_matrix, near_duplicate_images

log = logging.getLogger(__name__)

PAIRS_PER_READ = 8192  # candidate pairs whose thumbnails the pixel check holds at once


def image_links(table: pa.Table, cfg, download_dir: Path | None, spill_dir: Path | None = None,
                rare: np.ndarray | None = None) -> tuple[Links, np.ndarray]:
    """Near-image links among `table`'s rows (every one with an image_embedding; shard and key for the pixel
    check) under the DedupConfig `cfg`: SemDeDup's pairs and the copy search's, each confirmed pixel for pixel
    when `image_match_min` is set (`rare`: the pool's rare sizes, curate.dedup.rare_sizes); and each row's cosine
    to its k-means centroid."""
    vectors = embedding_matrix(table.column("image_embedding"))
    check = None if cfg.image_match_min is None else PixelCheck(table, download_dir, cfg, spill_dir, rare)
    pairs, centroid_sim = near_duplicate_images(vectors, cfg.image_eps, cfg.cluster_size, confirm=check)
    first = np.array([p[0] for p in pairs], np.int64)
    second = np.array([p[1] for p in pairs], np.int64)
    similarity = np.array([p[2] for p in pairs], np.float32)
    if check is None:
        return Links(first, second, similarity), centroid_sim
    log.info("dedup: %d of %d near-image candidate pairs match pixel for pixel", check.confirmed, check.candidates)
    if cfg.copy_search_k:
        a, b = copy_candidates(check.store, table.num_rows, cfg.copy_search_k)
        confirmed = check(a, b)  # in one call: each row's crops are computed once per pass
        log.info("dedup: copy search proposed %d pairs, %d match pixel for pixel", len(a), int(confirmed.sum()))
        a, b = a[confirmed], b[confirmed]
        first, second = np.concatenate([first, a]), np.concatenate([second, b])
        similarity = np.concatenate([similarity, _cosine(vectors, a, b)])
    strength = np.array([check.matches[(i, j)] for i, j in zip(first.tolist(), second.tolist())], np.float32)
    if check.lone is not None:  # decided once every candidate pair was checked
        a, b, shape = check.lone.found(check.matches, check.alike)
        log.info("dedup: %d lone pairs the copy verifier doubted match pixel for pixel", len(a))
        first, second = np.concatenate([first, a]), np.concatenate([second, b])
        similarity = np.concatenate([similarity, _cosine(vectors, a, b)])
        strength = np.concatenate([strength, shape])
    return Links(first, second, similarity, strength), centroid_sim


def _cosine(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors[first], vectors[second]).astype(np.float32)


class PixelCheck:
    """SemDeDup's `confirm`: which candidate pairs (row numbers of `table`) also match pixel for pixel
    (curate.dedup.image_match), with counts for the log; the pairs it doubted that turn out lone
    (curate.dedup.lone_pairs) are `lone.found()` once every pair was asked about."""

    def __init__(self, table: pa.Table, download_dir: Path | None, cfg, spill_dir: Path | None = None,
                 rare: np.ndarray | None = None):
        if download_dir is None:
            raise ValueError("dedup.image_match_min needs the download stage's images (run inside a run directory)")
        self.store, self.minimum = ThumbnailStore(table, download_dir, spill_dir), cfg.image_match_min
        self.colour_max, self.rotations = cfg.image_colour_max, tuple(cfg.image_rotations)
        self.same_size = SameRareSize(table, self.store, rare, self.minimum, self.colour_max)
        self.verifier = None if cfg.image_verifier_min is None else Verifier(cfg.image_verifier_min)
        lone = self.verifier is not None and cfg.image_lone_pair_verifier_min is not None
        self.lone = LonePairs(cfg.image_lone_pair_verifier_min) if lone else None
        self.candidates = self.confirmed = 0
        self.matches: dict[tuple[int, int], float] = {}  # confirmed pair -> its aligned shape correlation

    def _batches(self, first: np.ndarray, second: np.ndarray):
        """(slice, pairs' rows a and b, their distinct rows, those rows' thumbnails): one batch of pairs at a time
        with its thumbnails in memory."""
        for lo in range(0, len(first), PAIRS_PER_READ):
            a, b = first[lo:lo + PAIRS_PER_READ], second[lo:lo + PAIRS_PER_READ]
            rows = np.unique(np.concatenate([a, b]))
            yield slice(lo, lo + PAIRS_PER_READ), a, b, rows, self.store.get(rows)

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        ok = np.zeros(len(first), bool)
        for batch, a, b, rows, thumbs in self._batches(first, second):
            verdicts = pixel_verdicts(thumbs, np.searchsorted(rows, a), np.searchsorted(rows, b), self.minimum,
                                      self.colour_max, self.verifier, self.store.log_aspect[rows], self.rotations,
                                      self.same_size.lenient(a, b))
            if self.lone is not None:
                self.lone.record(rows, thumbs, a, b, verdicts)
            match = verdicts.match
            hit = match >= self.minimum
            ok[batch] = hit
            self.matches.update(zip(zip(a[hit].tolist(), b[hit].tolist()), match[hit].tolist()))
        self.candidates, self.confirmed = self.candidates + len(first), self.confirmed + int(ok.sum())
        return ok

    def alike(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per pair: past the shape bar and the colour guard (no verifier, no turns)."""
        ok = np.zeros(len(first), bool)
        for batch, a, b, rows, thumbs in self._batches(first, second):
            ok[batch] = pixel_match(thumbs, np.searchsorted(rows, a), np.searchsorted(rows, b), self.minimum,
                                    self.colour_max, None, self.store.log_aspect[rows]) >= self.minimum
        return ok


class SameRareSize:
    """Which pairs of a table's rows count as one rare size (curate.dedup.rare_sizes): both rows of one width x
    height among the pool's `rare` sizes, larger than the thumbnail, and no third picture of that size in the
    table like either of them (past the shape bar and the colour guard): variants of one design made at one size,
    another skin tone say, are not a copy's kept canvas."""

    def __init__(self, table: pa.Table, store: ThumbnailStore, rare: np.ndarray | None, minimum: float,
                 colour_max: float | None):
        self.size, self.rare = rare_rows(table, np.zeros(0, np.int64) if rare is None else rare, THUMB_PX)
        self.picture: dict[int, bytes] = {}  # row -> a digest of its thumbnail (rows of sizes three or more share)
        self.siblings: dict[int, set[bytes]] = {}  # row -> the other pictures of its size like it
        rows = np.flatnonzero(self.rare)
        _, at, counts = np.unique(self.size[rows], return_inverse=True, return_counts=True)
        groups = [rows[at == k].tolist() for k in np.flatnonzero(counts >= 3)]
        pairs = np.array([p for g in groups for p in combinations(g, 2)], np.int64).reshape(-1, 2)
        if not len(pairs):
            return
        members = np.unique(pairs)
        thumbs = store.get(members)
        self.picture = {int(r): picture_digest(t) for r, t in zip(members, thumbs)}
        alike = pixel_match(thumbs, np.searchsorted(members, pairs[:, 0]), np.searchsorted(members, pairs[:, 1]),
                            minimum, colour_max, None, store.log_aspect[members]) >= minimum
        for i, j in pairs[alike].tolist():
            self.siblings.setdefault(i, set()).add(self.picture[j])
            self.siblings.setdefault(j, set()).add(self.picture[i])

    def lenient(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per pair (rows of the table): of one rare size, with no third picture of that size like either."""
        out = self.rare[first] & (self.size[first] == self.size[second])
        for k in np.flatnonzero(out).tolist():
            i, j = int(first[k]), int(second[k])
            alike = self.siblings.get(i, set()) | self.siblings.get(j, set())
            out[k] = alike <= {self.picture.get(i), self.picture.get(j)}
        return out
