"""Near-duplicate images on stored CLIP embeddings (SemDeDup): faiss k-means, then pairs above cosine
1 - eps inside each cluster."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

BLOCK_ROWS = 1024  # rows of a cluster compared with the whole cluster at once


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column of embeddings as (n, dim) float32, NaN rows where null."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = lists.type.list_size
    flat = lists.values.slice(lists.offset * dim, len(lists) * dim).to_numpy(zero_copy_only=False)
    vectors = np.array(flat, dtype=np.float32).reshape(-1, dim)  # a copy: Arrow's buffer is read-only
    vectors[np.asarray(lists.is_null())] = np.nan
    return vectors


def kmeans_assign(embeddings: np.ndarray, n_clusters: int, seed: int = 0, iters: int = 20):
    """(cluster of each row, centroids) with faiss k-means on unit vectors (spherical)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if n_clusters <= 1 or len(x) <= n_clusters:
        return np.zeros(len(x), dtype=np.int64), x.mean(0, keepdims=True)
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=iters, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, len(x) // n_clusters + 1))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64), km.centroids


def near_duplicate_images(embeddings: np.ndarray, eps: float = 0.05, cluster_size: int = 1000, seed: int = 0,
                          confirm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                          ) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """Pairs (i, j, cosine >= 1 - eps) within k-means clusters, and each row's cosine to its centroid.
    Rows must be unit vectors; rows with NaN never match. `confirm(i, j)` -> bool mask, when given, is
    asked about each block of candidate pairs as they are found, so only confirmed pairs are kept."""
    x = np.asarray(embeddings, dtype=np.float32)
    valid = np.isfinite(x).all(1)
    idx = np.flatnonzero(valid)
    centroid_sim = np.full(len(x), np.nan, dtype=np.float32)
    if len(idx) < 2:
        return [], centroid_sim
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def keep(i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> None:
        if confirm is not None and len(i):
            ok = confirm(i, j)
            i, j, sim = i[ok], j[ok], sim[ok]
        found.append((i, j, sim))

    # identical vectors (a constant image) link to their first copy; only one copy is clustered
    _, first, inverse = np.unique(x[idx], axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    copies = idx[first[inverse]] != idx
    keep(idx[first[inverse]][copies], idx[copies], np.ones(int(copies.sum()), dtype=np.float32))
    reps = idx[np.sort(first)]
    assign, centroids = kmeans_assign(x[reps], max(1, len(reps) // cluster_size), seed)
    centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    centroid_sim[idx] = np.einsum("ij,ij->i", x[idx], centroids[assign[np.searchsorted(reps, idx[first[inverse]])]])
    for c in tqdm(np.unique(assign), desc="dedup images", unit="cluster", mininterval=2, leave=False):
        members = reps[assign == c]
        for lo in range(0, len(members), BLOCK_ROWS):
            block = x[members[lo:lo + BLOCK_ROWS]] @ x[members].T
            rows, cols = np.nonzero(block >= 1 - eps)
            i, j = members[lo + rows], members[cols]
            upper = i < j
            keep(i[upper], j[upper], block[rows[upper], cols[upper]])
    i, j, sim = (np.concatenate(parts) for parts in zip(*found))
    return list(zip(i.tolist(), j.tolist(), sim.tolist())), centroid_sim
