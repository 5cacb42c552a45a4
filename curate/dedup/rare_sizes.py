"""Pixel sizes as evidence of a copy. An edit that keeps the canvas (a watermark, brightness, grayscale, blur, a
re-encode) leaves a copy at its original's exact width x height, while two different pictures share a size only by
chance. The chance is small where few rows of the pool have that size (a picture at 151 x 109) and large where many
do (every emoji at 64 x 64, photos at 1024 x 768), so a size counts only when at most `dedup.image_rare_size_rows`
rows of the pool have it.

A candidate pair of one rare size, larger than the thumbnail on both sides, needs only RARE_SIZE_VERIFIER_MIN of
the copy verifier (curate.dedup.image_match.pixel_match's `lenient`): there the verifier sees a shrunken copy, in
which a watermark is a smudge much like a lookalike's added shape. The shape bar and the colour guard still apply,
and a size that a third picture like either of the two also has (curate.dedup.images.SameRareSize) is a design
made in variants at one size (skin tones, colourways), not a copy's kept canvas: there the verifier's bar stays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.schema import STATUS, Status

RARE_SIZE_VERIFIER_MIN = 0.8
RARE_SIZES_FILE = "rare_sizes.npy"  # in dedup's work folder: the rare sizes' keys, for the image tasks


def size_keys(table: pa.Table) -> np.ndarray:
    """One int64 per row for its width x height; -1 where the table has no sizes or a row none."""
    if "width" not in table.column_names or "height" not in table.column_names:
        return np.full(table.num_rows, -1, np.int64)
    width, height = (table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in ("width", "height"))
    known = np.isfinite(width) & np.isfinite(height) & (width > 0) & (height > 0)
    return np.where(known, np.nan_to_num(width).astype(np.int64) << 32 | np.nan_to_num(height).astype(np.int64), -1)


def count_sizes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(size keys, rows) of one score part's `ok` rows with a known size."""
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[STATUS] + [c for c in ("width", "height") if c in names])
    keys = size_keys(table)[np.asarray(pc.equal(table.column(STATUS), Status.OK).fill_null(False))]
    return np.unique(keys[keys >= 0], return_counts=True)


def rare_sizes(counts: list[tuple[np.ndarray, np.ndarray]], max_rows: int) -> np.ndarray:
    """The sorted keys of the sizes that at most `max_rows` rows have, from `count_sizes` of every part."""
    if not counts:
        return np.zeros(0, np.int64)
    keys, at = np.unique(np.concatenate([k for k, _ in counts]), return_inverse=True)
    rows = np.bincount(at, weights=np.concatenate([c for _, c in counts]), minlength=len(keys))
    return keys[rows <= max_rows]


def rare_rows(table: pa.Table, rare: np.ndarray, thumb_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of `table`'s rows' size key and whether it is rare (in the sorted keys `rare`) and larger than the
    thumbnail (`thumb_px`) on each side. A pair of rows is of one rare size where both keys are equal and rare."""
    keys = size_keys(table)
    at = np.searchsorted(rare, keys).clip(0, max(len(rare) - 1, 0))
    found = rare[at] == keys if len(rare) else np.zeros(len(keys), bool)
    large = np.minimum(keys >> 32, keys & 0xFFFFFFFF) > thumb_px
    return keys, (keys >= 0) & large & found
