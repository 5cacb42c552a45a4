"""Near-duplicate images on stored CLIP embeddings (SemDeDup): faiss k-means, then pairs above cosine
1 - eps inside each cluster."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm


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


def near_duplicate_images(embeddings: np.ndarray, eps: float = 0.05, cluster_size: int = 1000,
                          seed: int = 0) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """Pairs (i, j, cosine >= 1 - eps) within k-means clusters, and each row's cosine to its centroid.
    Rows must be unit vectors; rows with NaN never match."""
    x = np.asarray(embeddings, dtype=np.float32)
    valid = np.isfinite(x).all(1)
    idx = np.flatnonzero(valid)
    centroid_sim = np.full(len(x), np.nan, dtype=np.float32)
    if len(idx) < 2:
        return [], centroid_sim
    # identical vectors (a constant image) link to their first copy; only one copy is clustered
    _, first, inverse = np.unique(x[idx], axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    pairs: list[tuple[int, int, float]] = [(int(idx[first[g]]), int(i), 1.0)
                                           for i, g in zip(idx, inverse) if idx[first[g]] != i]
    reps = idx[np.sort(first)]
    assign, centroids = kmeans_assign(x[reps], max(1, len(reps) // cluster_size), seed)
    centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    centroid_sim[idx] = np.einsum("ij,ij->i", x[idx], centroids[assign[np.searchsorted(reps, idx[first[inverse]])]])
    for c in tqdm(np.unique(assign), desc="dedup images", unit="cluster", mininterval=2, leave=False):
        members = reps[assign == c]
        for lo in range(0, len(members), 4096):
            block = x[members[lo:lo + 4096]] @ x[members].T
            rows, cols = np.nonzero(block >= 1 - eps)
            for r, col in zip(rows, cols):
                i, j = members[lo + r], members[col]
                if i < j:
                    pairs.append((int(i), int(j), float(block[r, col])))
    return pairs, centroid_sim
