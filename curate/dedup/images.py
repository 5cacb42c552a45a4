"""Near-duplicate images among a table's rows: SemDeDup's pairs on the embeddings and the copy search's on
the pixels, each confirmed by the pixel check (thumbnails read from the download tars for candidate rows
only, kept on disk: curate.dedup.image_match.ThumbnailStore)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.dedup.copy_search import copy_candidates
from curate.dedup.copy_verifier import Verifier
from curate.dedup.pictures import Links
from curate.dedup.image_match import ThumbnailStore, pixel_match
from curate.dedup.semdedup import embedding_matrix, near_duplicate_images

log = logging.getLogger(__name__)

PAIRS_PER_READ = 8192  # candidate pairs whose thumbnails the pixel check holds at once


def image_links(table: pa.Table, cfg, download_dir: Path | None, spill_dir: Path | None = None,
                ) -> tuple[Links, np.ndarray]:
    """Near-image links among `table`'s rows (every one with an image_embedding; shard and key for the pixel
    check) under the DedupConfig `cfg`: SemDeDup's pairs and the copy search's, each confirmed pixel for pixel
    when `image_match_min` is set; and each row's cosine to its k-means centroid."""
    vectors = embedding_matrix(table.column("image_embedding"))
    check = None if cfg.image_match_min is None else PixelCheck(table, download_dir, cfg, spill_dir)
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
        similarity = np.concatenate([similarity, np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float32)])
    strength = np.array([check.matches[(i, j)] for i, j in zip(first.tolist(), second.tolist())], np.float32)
    return Links(first, second, similarity, strength), centroid_sim


class PixelCheck:
    """SemDeDup's `confirm`: which candidate pairs (row numbers of `table`) also match pixel for pixel
    (curate.dedup.image_match), with counts for the log."""

    def __init__(self, table: pa.Table, download_dir: Path | None, cfg, spill_dir: Path | None = None):
        if download_dir is None:
            raise ValueError("dedup.image_match_min needs the download stage's images (run inside a run directory)")
        self.store, self.minimum = ThumbnailStore(table, download_dir, spill_dir), cfg.image_match_min
        self.colour_max, self.rotations = cfg.image_colour_max, tuple(cfg.image_rotations)
        self.verifier = None if cfg.image_verifier_min is None else Verifier(cfg.image_verifier_min)
        self.candidates = self.confirmed = 0
        self.matches: dict[tuple[int, int], float] = {}  # confirmed pair -> its aligned shape correlation

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        ok = np.zeros(len(first), bool)
        for lo in range(0, len(first), PAIRS_PER_READ):  # the thumbnails of one batch of pairs in memory
            a, b = first[lo:lo + PAIRS_PER_READ], second[lo:lo + PAIRS_PER_READ]
            rows = np.unique(np.concatenate([a, b]))
            match = pixel_match(self.store.get(rows), np.searchsorted(rows, a), np.searchsorted(rows, b),
                                self.minimum, self.colour_max, self.verifier, self.store.log_aspect[rows],
                                self.rotations)
            hit = match >= self.minimum
            ok[lo:lo + PAIRS_PER_READ] = hit
            self.matches.update(zip(zip(a[hit].tolist(), b[hit].tolist()), match[hit].tolist()))
        self.candidates, self.confirmed = self.candidates + len(first), self.confirmed + int(ok.sum())
        return ok
