"""Copy search: near-duplicate image candidates found from the images' own pixels, for when the embedding
does not keep a copy next to its original (a small or weak scorer). Every row's whole thumbnail, as the pixel
check's 8 px shape signal, goes into a faiss inner-product index; every row then asks with 5 x 5 windows of itself
(each axis whole, 5% or 10% off both sides, or 10% off one side only) for its `k` nearest rows. A copy whose
margins were cropped, centred or not, lies next to its original's matching window; a padded copy's window is its
original. The pairs found are candidates only: the pixel check (curate.image_match) decides."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from curate.dedup.image_match import ThumbnailStore, luma, resample, shape_signal, window_weights

PX = 8
CENTRED = ((0.0, 0.0), (0.05, 0.05), (0.1, 0.1))  # per axis: the share cut off each end
CUTS = CENTRED + ((0.0, 0.1), (0.1, 0.0))  # and off-centre: 10% off one end
CHUNK_ROWS = 4096
FLAT_MAX_ROWS = 20_000  # exact search up to here; above, an IVF index probing NPROBE of ~4 sqrt(n) lists
NPROBE = 16


def _descriptors(store: ThumbnailStore, rows: np.ndarray, cuts: tuple[tuple[float, float], ...] = CUTS) -> np.ndarray:
    """(len(rows), windows, 64) float32: the pixel check's 8 px shape signal (luminance, so a grayscale or
    brightened copy finds its original) of every window (`cuts` on each axis); window 0 is the whole."""
    rgb = torch.from_numpy(np.ascontiguousarray(store.get(rows))).float().permute(0, 3, 1, 2)
    lum = resample(luma(rgb, 1), 16)
    w = window_weights(16, PX, [c[0] for c in cuts], [c[1] for c in cuts])
    crops = shape_signal(torch.einsum("kpy,nyx,jqx->nkjpq", w, lum, w))
    return crops.reshape(len(rows), len(cuts) ** 2, -1).numpy()


def _index(whole: np.ndarray, seed: int):
    import faiss

    n, dim = whole.shape
    if n <= FLAT_MAX_ROWS:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, lists * 64), replace=False)
        index.train(whole[np.sort(sample)])
        index.nprobe = NPROBE
    index.add(whole)
    return index


def copy_candidates(store: ThumbnailStore, n_rows: int, k: int, seed: int = 0,
                    cuts: tuple[tuple[float, float], ...] = CUTS) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first < second) of row numbers 0..n_rows-1: each row with the k nearest rows to any of its
    windows (`cuts` on each axis). Rows without a decodable image have an all-zero descriptor and are left out."""
    none = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n_rows < 2:
        return none
    rows = np.arange(n_rows)
    whole = np.concatenate([_descriptors(store, rows[lo:lo + CHUNK_ROWS], ((0.0, 0.0),))[:, 0]
                            for lo in tqdm(range(0, n_rows, CHUNK_ROWS), desc="copy search: thumbnails",
                                           unit="chunk", mininterval=2, leave=False)])
    usable = np.flatnonzero(np.abs(whole).sum(1) > 0)
    if len(usable) < 2:
        return none
    index = _index(np.ascontiguousarray(whole[usable]), seed)
    found = []
    for lo in range(0, len(usable), CHUNK_ROWS):
        mine = usable[lo:lo + CHUNK_ROWS]
        crops = _descriptors(store, mine, cuts)
        _, hits = index.search(np.ascontiguousarray(crops.reshape(-1, crops.shape[2])), min(k + 1, len(usable)))
        first = np.repeat(mine, crops.shape[1] * hits.shape[1])
        second = np.where(hits >= 0, usable[hits.clip(0)], -1).reshape(-1)
        keep = (second >= 0) & (second != first)
        found.append(np.stack([np.minimum(first, second)[keep], np.maximum(first, second)[keep]], 1))
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[:, 0], pairs[:, 1]
