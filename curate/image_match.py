"""Pixel check for near-duplicate image candidates. SemDeDup proposes pairs whose embeddings are close, the
copy search (curate.copy_search) pairs whose small thumbnails are; two different pictures of similar things
are close too. A copy (re-encoded, resized, a margin cropped off) matches its original pixel for pixel once
the two are brought to the same scale, so each pair is compared over a small grid of centred crops of either
image and the best match counts.

Thumbnails are `THUMB_PX` square RGB (12 KB a row, kept for rows that were in some candidate pair); crops are
resampled by area averaging and compared by correlation in passes of growing detail, a pair going on to the next
pass only while it stays within that pass's slack of the bar. A crop's signal has two halves of equal weight, so a
pair's similarity is the mean of two correlations: colour (the pixels less their mean over all channels, which
tells a red shape from a pink one) and shape (each channel less its own mean, so a shared background colour says
nothing, with edges stressed: each pixel less `EDGE_WEIGHT` times its 3 x 3 neighbourhood mean, so a shape drawn
a little larger or elsewhere, which overlaps its lookalike's blob, does not overlap its outline)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from curate.decode import decode_rgb
from curate.tars import index_tar, shard_path

THUMB_PX = 64
PASSES = (  # (crop px, kept share of each axis, slack below the bar that still goes on to the next pass)
    (8, (1.0, 0.9, 0.8), 0.15),
    (16, (1.0, 0.95, 0.9, 0.85, 0.8), 0.08),
    (32, tuple(1 - k * 0.025 for k in range(9)), 0.0),  # margins of up to 10% a side, in 2.5% steps
)
CHUNK_ROWS = 256
EDGE_WEIGHT = 0.8


def thumbnail(data: bytes) -> np.ndarray | None:
    """The image squashed to THUMB_PX x THUMB_PX RGB (uint8); None when it does not decode."""
    try:
        return np.asarray(decode_rgb(data, THUMB_PX).resize((THUMB_PX, THUMB_PX), Image.Resampling.BOX))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class ThumbnailStore:
    """Thumbnails of a table's rows (uid, shard, key) by row number, read on first use straight from the
    download tars (each tar's header index is built once); zeros, which match nothing, where an image is
    missing or does not decode."""

    def __init__(self, table: pa.Table, download_dir: Path):
        self.download_dir = download_dir
        self.shards, self.keys = table.column("shard").to_pylist(), table.column("key").to_pylist()
        self.indexes: dict[str, tuple[Path, dict]] = {}
        self.cache: dict[int, np.ndarray] = {}

    def _index(self, shard: str) -> tuple[Path, dict]:
        if shard not in self.indexes:
            path = shard_path(self.download_dir, shard)
            self.indexes[shard] = path, index_tar(path) if path.is_file() else {}
        return self.indexes[shard]

    def _read(self, row: int) -> np.ndarray:
        shard, key = self.shards[row], self.keys[row]
        path, index = self._index(shard) if shard and key else (None, {})
        where, thumb = index.get(key), None
        if where is not None:
            with open(path, "rb") as f:
                f.seek(where[0])
                thumb = thumbnail(f.read(where[1]))
        return np.zeros((THUMB_PX, THUMB_PX, 3), np.uint8) if thumb is None else thumb

    def get(self, rows: np.ndarray) -> np.ndarray:
        for row in rows.tolist():
            if row not in self.cache:
                self.cache[row] = self._read(row)
        return np.stack([self.cache[row] for row in rows.tolist()])


def _area_weights(size: int, px: int, fraction: float) -> np.ndarray:
    """(px, size): output pixel k of a centred crop keeping `fraction` of the axis, as the area average of
    the input pixels it covers (partial pixels weighted by their overlap)."""
    step = size * fraction / px
    edges = size * (1 - fraction) / 2 + step * np.arange(px + 1)
    pixels = np.arange(size)
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    return np.clip(overlap, 0, None) / step


def _crops(thumbs: np.ndarray, px: int, fractions: tuple[float, ...]):
    """(rows, crops, 2 * px * px * 3) unit vectors of every centred crop (each axis keeping each of `fractions`),
    resampled by area (two matrix products per row): the colour and the shape halves (a tensor)."""
    import torch

    size, n, m = thumbs.shape[1], len(thumbs), len(fractions) ** 2
    weights = torch.from_numpy(np.stack([_area_weights(size, px, f) for f in fractions]).astype(np.float32))
    pixels = torch.from_numpy(np.ascontiguousarray(thumbs)).float()  # (n, y, x, 3)
    rows = torch.einsum("fpy,nyxc->nfpxc", weights, pixels)
    crops = torch.einsum("gqx,nfpxc->nfgcpq", weights, rows).reshape(n * m, 3, px, px)
    colour = crops - crops.mean((1, 2, 3), keepdim=True)
    shape = crops - crops.mean((2, 3), keepdim=True)
    shape = shape - EDGE_WEIGHT * torch.nn.functional.avg_pool2d(shape, 3, 1, 1, count_include_pad=False)
    halves = [h.reshape(n, m, -1) for h in (colour, shape)]
    return torch.cat([h / h.norm(dim=2, keepdim=True).clamp_min(1e-6) for h in halves], 2) / np.sqrt(2)


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
    for lo in tqdm(range(0, len(thumbs), CHUNK_ROWS), desc=f"pixel check at {px} px", unit="chunk", delay=5, leave=False):
        crops = _crops(thumbs[lo:lo + CHUNK_ROWS], px, fractions)
        for order, bounds, partner in sides:
            for r in range(lo, min(lo + CHUNK_ROWS, len(thumbs))):
                a, b = bounds[r], bounds[r + 1]
                if a < b:  # every crop of row r against the whole of each partner
                    q = torch.as_tensor(order[a:b])
                    best[q] = torch.maximum(best[q], (whole[partner[a:b]] @ crops[r - lo].T).amax(1))
    return best.numpy()


def pixel_match(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, minimum: float) -> np.ndarray:
    """Each pair's aligned similarity after the passes (`PASSES`): the last pass's value for pairs that
    stayed near the bar throughout, else the value of the pass that let them go (below the bar)."""
    match = np.full(len(first), 1.0, dtype=np.float32)
    close = np.arange(len(first))
    for px, fractions, slack in PASSES:
        if not len(close):
            break
        rows = np.unique(np.concatenate([first[close], second[close]]))
        match[close] = aligned_similarity(thumbs[rows], np.searchsorted(rows, first[close]),
                                          np.searchsorted(rows, second[close]), px, fractions)
        close = close[match[close] >= minimum - slack]
    return match
