"""Pixel check for near-duplicate image candidates. SemDeDup proposes pairs whose embeddings are close;
two different pictures of similar things are close too. A copy (re-encoded, resized, a margin cropped
off) matches its original pixel for pixel once the two are brought to the same scale, so each pair is
compared over a small grid of centred crops of either image and the best match counts.

Thumbnails are `THUMB_PX` square RGB (12 KB a row in memory, only for rows in some candidate pair); crops
are resampled with `torchvision.ops.roi_align` and compared by Pearson correlation, first coarsely (16 px,
5 x 5 crops) and then, for pairs within COARSE_SLACK of the bar, finely (32 px, 9 x 9 crops)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from curate.schema import UID
from curate.tars import read_images

THUMB_PX = 64
FINE = (32, tuple(1 - k * 0.025 for k in range(9)))  # (crop px, kept share of each axis): margins up to 10% a side
COARSE = (16, (1.0, 0.95, 0.9, 0.85, 0.8))  # a cheap first pass; only pairs near the bar get the fine one
COARSE_SLACK = 0.08
CHUNK_ROWS = 256


def thumbnail(data: bytes) -> np.ndarray | None:
    """The image squashed to THUMB_PX x THUMB_PX RGB (uint8); None when it does not decode."""
    from curate.score import decode_rgb

    try:
        return np.asarray(decode_rgb(data, THUMB_PX).resize((THUMB_PX, THUMB_PX), Image.Resampling.BOX))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def load_thumbnails(table: pa.Table, download_dir: Path) -> np.ndarray:
    """Thumbnails of the table's rows (uid, status, shard, key), in order, reading one download tar at a
    time; zeros (which match nothing) where an image is missing or does not decode."""
    thumbs = np.zeros((table.num_rows, THUMB_PX, THUMB_PX, 3), np.uint8)
    uids, rows_by_shard = table.column(UID).to_pylist(), {}
    for k, shard in enumerate(table.column("shard").to_pylist()):
        rows_by_shard.setdefault(shard, []).append(k)
    for rows in tqdm(rows_by_shard.values(), desc="dedup pixels", unit="tar", mininterval=2, leave=False):
        images = read_images(table.take(pa.array(rows)), download_dir)
        for k in rows:
            thumb = thumbnail(images[uids[k]]) if uids[k] in images else None
            if thumb is not None:
                thumbs[k] = thumb
    return thumbs


def _crops(thumbs: np.ndarray, px: int, fractions: tuple[float, ...]):
    """(rows, crops, px * px * 3) unit vectors (mean removed) of every centred crop (a tensor)."""
    import torch
    from torchvision.ops import roi_align

    pixels = torch.from_numpy(np.ascontiguousarray(thumbs)).permute(0, 3, 1, 2).float()
    pixels = torch.nn.functional.adaptive_avg_pool2d(pixels, min(2 * px, thumbs.shape[1]))  # area-average first:
    n, size = len(thumbs), pixels.shape[-1]  # then 2 x 2 bilinear samples per crop pixel are enough
    boxes = [[size * (1 - fx) / 2, size * (1 - fy) / 2, size * (1 + fx) / 2, size * (1 + fy) / 2]
             for fx in fractions for fy in fractions]
    rois = torch.cat([torch.arange(n).repeat_interleave(len(boxes))[:, None].float(),
                      torch.tensor(boxes, dtype=torch.float32).repeat(n, 1)], 1)
    crops = roi_align(pixels, rois, output_size=px, sampling_ratio=2, aligned=True)
    crops = crops.reshape(n, len(boxes), -1)
    crops = crops - crops.mean(2, keepdim=True)
    return crops / crops.norm(dim=2, keepdim=True).clamp_min(1e-6)


def aligned_similarity(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, px: int,
                       fractions: tuple[float, ...]) -> np.ndarray:
    """Per pair (thumbs[first[p]], thumbs[second[p]]): the best correlation of any crop of one image with
    the whole of the other. 1.0 for identical pictures; a plain image (no variation) matches nothing."""
    import torch

    whole = torch.cat([_crops(thumbs[lo:lo + CHUNK_ROWS], px, (1.0,))[:, 0] for lo in range(0, len(thumbs), CHUNK_ROWS)])
    best = torch.full((len(first),), -1.0)
    sides = []
    for mine, other in ((first, second), (second, first)):
        order = np.argsort(mine, kind="stable")
        sides.append((order, np.searchsorted(mine[order], np.arange(len(thumbs) + 1)), torch.as_tensor(other[order])))
    for lo in range(0, len(thumbs), CHUNK_ROWS):
        crops = _crops(thumbs[lo:lo + CHUNK_ROWS], px, fractions)
        for order, bounds, partner in sides:
            for r in range(lo, min(lo + CHUNK_ROWS, len(thumbs))):
                a, b = bounds[r], bounds[r + 1]
                if a < b:  # every crop of row r against the whole of each partner
                    q = torch.as_tensor(order[a:b])
                    best[q] = torch.maximum(best[q], (whole[partner[a:b]] @ crops[r - lo].T).amax(1))
    return best.numpy()


def pixel_match(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, minimum: float) -> np.ndarray:
    """Each pair's aligned similarity: the fine one where the coarse one came within COARSE_SLACK of
    `minimum`, else the coarse one (which is then far below the bar)."""
    match = aligned_similarity(thumbs, first, second, *COARSE)
    close = np.flatnonzero(match >= minimum - COARSE_SLACK)
    if len(close):
        rows = np.unique(np.concatenate([first[close], second[close]]))
        match[close] = aligned_similarity(thumbs[rows], np.searchsorted(rows, first[close]),
                                          np.searchsorted(rows, second[close]), *FINE)
    return match
