"""DataComp's image-based filter: cluster the pool's image embeddings with k-means and keep the clusters
nearest to a target set's images (DataComp: ImageNet's training images, embedded by the same model)."""
from __future__ import annotations

import numpy as np

SAMPLE_PER_CLUSTER = 256  # k-means is fitted on at most this many rows per cluster (faiss's own default)
ASSIGN_ROWS = 1 << 16  # rows converted to float32 and assigned at a time


def near_target_rows(embeddings: np.ndarray, targets: np.ndarray, cluster_size: int, fraction: float | None,
                     seed: int = 0) -> np.ndarray:
    """Rows (unit vectors; NaN rows never pass) in the clusters nearest the targets. k = rows / cluster_size
    clusters, fitted on a sample. fraction None: DataComp's rule, every cluster that is some target's nearest
    centroid. Else the clusters where the targets are densest against the pool (target images nearest per
    row; ties: nearest the targets' mean) until they hold `fraction` of the embedded rows."""
    import faiss

    valid = np.flatnonzero(np.isfinite(embeddings).all(1))
    keep = np.zeros(len(embeddings), dtype=bool)
    if not len(valid) or not len(targets):
        return keep
    k = max(1, len(valid) // cluster_size)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(valid, min(len(valid), k * SAMPLE_PER_CLUSTER), replace=False))
    kmeans = faiss.Kmeans(embeddings.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=SAMPLE_PER_CLUSTER)
    kmeans.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
    index = faiss.IndexFlatIP(kmeans.centroids.shape[1])
    index.add(kmeans.centroids)
    cluster = np.concatenate([_nearest(index, embeddings[valid[lo:lo + ASSIGN_ROWS]])
                              for lo in range(0, len(valid), ASSIGN_ROWS)])
    hits = np.bincount(_nearest(index, targets), minlength=k)
    if fraction is None:
        chosen = hits > 0
    else:
        sizes = np.bincount(cluster, minlength=k)
        order = np.lexsort((-(kmeans.centroids @ targets.mean(0)), -hits / np.maximum(sizes, 1)))
        held = np.cumsum(sizes[order])
        chosen = np.zeros(k, dtype=bool)
        chosen[order[:np.searchsorted(held, fraction * len(valid)) + 1]] = True
    keep[valid] = chosen[cluster]
    return keep


def _nearest(index, vectors: np.ndarray) -> np.ndarray:
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0]
