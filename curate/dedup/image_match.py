"""Pixel check for near-duplicate image candidates. SemDeDup proposes pairs whose embeddings are close, the
copy search (curate.dedup.copy_search) pairs whose small thumbnails are; two different pictures of similar
things are close too. A copy (resized and re-encoded, cropped off-centre, padded, brightened or darkened, turned
grayscale, blurred or watermarked) matches its original once the two are aligned; another glyph in the same
frame, the same figure in another skin tone or another flag of the same layout does not.

Each pair is aligned first: a window of one image (each edge moved in by up to 20%, off-centre too) against the
whole of the other, in both directions, searched on a coarse grid at 8 px and refined twice at 16 px. Where the
images' sizes are known, only windows of the other's shape count (within `ASPECT_TOL`): cropping, padding,
resizing and turning keep the picture's proportions, while a circle squeezed into an ellipse, or a glyph
stretched over another's frame, is another picture. Then:
- shape: the correlation of the aligned luminance, mean removed and edges stressed (each pixel less
  `EDGE_WEIGHT` times its 3 x 3 neighbourhood mean), so grayscale, brightness and a shared background say
  nothing, and a glyph drawn elsewhere in the frame does not overlap its lookalike's outline; it must reach the
  caller's bar;
- colour (when `colour_max` is set): the aligned images' mean colours over a 4 x 4 grid of cells (a thin border
  left out), after one brightness factor for the whole picture (between `BRIGHTNESS`), must nowhere differ by
  more than `colour_max` levels (of 255); a grayscale copy is compared by luminance;
- the copy verifier (curate.dedup.copy_verifier, when given) judges the pairs that passed: a small network that
  learnt what a copy keeps and what a lookalike (a skin tone, a flag's colours, a digit in the frame) changes;
  a pair of one rare pixel size needs less of it (curate.dedup.rare_sizes), and so does a lone pair, which the
  caller decides from `pixel_verdicts` once every pair is known (curate.dedup.lone_pairs).
A pair that fails within ROTATION_SLACK of the shape bar is tried again with one image turned back a few degrees
(`pixel_match`'s `rotations`): the axis-aligned windows cannot undo a turn, which a copy may have had. A turn counts
only where it lines up better than unturned and clearly better than the same turn the other way (`turn_counts`):
a turned copy lines up one way only, while the smoothing of any turn brings some lookalikes closer both ways.

Thumbnails are `THUMB_PX` square RGB (12 KB a row, kept on disk for rows that were in some candidate pair)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from curate.decode import decode_rgb
from curate.dedup.rare_sizes import RARE_SIZE_VERIFIER_MIN
from curate.tars import MemberReader, index_tar, shard_path

THUMB_PX = 64
SLOT_BYTES = THUMB_PX * THUMB_PX * 3
EDGE_WEIGHT = 0.8
LUMA = (0.299, 0.587, 0.114)
GRID = [(a, b) for a in np.arange(0, 0.201, 0.05) for b in np.arange(0, 0.201, 0.05) if a + b <= 0.25 + 1e-9]
COARSE_SLACK = 0.1  # pairs this far below the shape bar at 8 px are let go without refining
REFINE_STEPS = (0.025, 0.0125)  # each window edge moves by these (shares of the axis) around the best, at 16 px
COLOUR_CELLS = 4  # the colour test's grid: COLOUR_CELLS x COLOUR_CELLS cells
COLOUR_INSET = 0.05  # the colour test leaves out this share of each side (a pad or crop edge a pixel off)
ASPECT_TOL = 0.1  # |log| of a window's width/height over the other image's, at most
BRIGHTNESS = (0.65, 1.55)  # one factor for the whole copy
GRAY_CHROMA = 6.0  # RMS chroma (levels) under which an image counts as grayscale
CHUNK_ROWS = 512
CHUNK_PAIRS = 4096  # pairs per batch of the colour test and the verifier (bounded memory)
ROTATION_SLACK = 0.15  # pairs that fail within this of the shape bar are tried again turned back (pixel_match)
DIRECTION_TIE = 1e-4  # the second direction wins only by more than this: float noise must not pick it (align)
ROTATION_MIRROR = 0.75  # a turn's mismatch (1 - shape) must be at most this share of the opposite turn's


def thumbnail(data: bytes) -> np.ndarray | None:
    """The image squashed to THUMB_PX x THUMB_PX RGB (uint8); None when it does not decode."""
    try:
        return np.asarray(decode_rgb(data, THUMB_PX).resize((THUMB_PX, THUMB_PX), Image.Resampling.BOX))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def log_aspects(table: pa.Table) -> np.ndarray:
    """log(width / height) of each row's image; NaN (no constraint) where the table has no sizes or a row none."""
    if "width" not in table.column_names or "height" not in table.column_names:
        return np.full(table.num_rows, np.nan)
    width, height = (table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in ("width", "height"))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(width / height)
    return np.where(np.isfinite(out), out, np.nan)


def _window_log_aspect(cuts: torch.Tensor) -> torch.Tensor:
    """log of a window's width/height share (cuts: (..., 4) as top, bottom, left, right shares)."""
    return torch.log(1 - cuts[..., 2] - cuts[..., 3]) - torch.log(1 - cuts[..., 0] - cuts[..., 1])


def _misshapen(log_aspect: torch.Tensor | None, mine, other, window: torch.Tensor) -> torch.Tensor:
    """(pairs, windows): a window of `mine` (its `_window_log_aspect`: (pairs or 1, windows)) whose width/height
    differs from the whole of `other`'s by more than ASPECT_TOL; never where a size is unknown (NaN)."""
    if log_aspect is None:
        return torch.zeros((len(mine), window.shape[1]), dtype=torch.bool)
    return (log_aspect[mine][:, None] + window - log_aspect[other][:, None]).abs() > ASPECT_TOL  # NaN: False


class ThumbnailStore:
    """Thumbnails of a table's rows (uid, shard, key) by row number, read on first use straight from the
    download tars (each tar's header index is built once) and kept on disk (a temporary file in `spill_dir`,
    12 KB a row), never the whole table's in memory; zeros, which match nothing, where an image is missing or
    does not decode."""

    def __init__(self, table: pa.Table, download_dir: Path, spill_dir: Path | None = None):
        self.download_dir = download_dir
        self.shards, self.keys = table.column("shard").to_pylist(), table.column("key").to_pylist()
        self.log_aspect = log_aspects(table)
        self.indexes: dict[str, tuple[Path, dict]] = {}
        self.file = tempfile.TemporaryFile(dir=spill_dir)  # a slot per row; gone when the store is
        self.filled = np.zeros(table.num_rows, bool)

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
            with MemberReader() as reader:  # one tar open at a time, however many shards
                thumb = thumbnail(reader.read(path, *where))
        return np.zeros((THUMB_PX, THUMB_PX, 3), np.uint8) if thumb is None else thumb

    def get(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), THUMB_PX, THUMB_PX, 3): each read from its tar once, then from this store's file."""
        fd, out = self.file.fileno(), np.empty((len(rows), THUMB_PX, THUMB_PX, 3), np.uint8)
        for k, row in enumerate(rows.tolist()):
            if not self.filled[row]:
                out[k] = self._read(row)
                os.pwrite(fd, out[k].tobytes(), row * SLOT_BYTES)
                self.filled[row] = True
            else:
                out[k] = np.frombuffer(os.pread(fd, SLOT_BYTES, row * SLOT_BYTES), np.uint8).reshape(out.shape[1:])
        return out


def window_weights(size: int, px: int, cut_start: np.ndarray, cut_end: np.ndarray) -> torch.Tensor:
    """(k, px, size): output pixel p of window k of an axis (keeping [cut_start, 1 - cut_end] of it) as the area
    average of the input pixels it covers, partial pixels weighted by their overlap."""
    start = size * np.asarray(cut_start, np.float64)[:, None]
    step = size * (1 - np.asarray(cut_start, np.float64) - np.asarray(cut_end, np.float64))[:, None] / px
    edges = start + step * np.arange(px + 1)
    pixels = np.arange(size)
    overlap = np.minimum(edges[:, 1:, None], pixels + 1) - np.maximum(edges[:, :-1, None], pixels)
    return torch.from_numpy((np.clip(overlap, 0, None) / step[:, :, None]).astype(np.float32))


def resample(images: torch.Tensor, px: int) -> torch.Tensor:
    """(n, ..., s, s) -> (n, ..., px, px) by area."""
    w = window_weights(images.shape[-1], px, [0.0], [0.0])[0]
    return w @ images @ w.T


def shape_signal(x: torch.Tensor) -> torch.Tensor:
    """(..., p, p) luminance -> unit vectors: mean removed, edges stressed."""
    lead, p = x.shape[:-2], x.shape[-1]
    x = x.reshape(-1, 1, p, p)
    x = x - x.mean((2, 3), keepdim=True)
    x = x - EDGE_WEIGHT * F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    x = x.reshape(*lead, p * p)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def luma(rgb: torch.Tensor, dim: int) -> torch.Tensor:
    """Luminance of RGB along `dim` (which goes away)."""
    return torch.tensordot(rgb.movedim(dim, -1), torch.tensor(LUMA), dims=1)


def _coarse(lum16: torch.Tensor, mine: np.ndarray, other: np.ndarray, log_aspect: torch.Tensor | None):
    """Per pair, the best GRID window (index into GRID x GRID) of `mine` against the whole of `other` at 8 px
    (of the other's shape, where sizes are known), and its correlation."""
    cuts = np.array(GRID)
    w = window_weights(16, 8, cuts[:, 0], cuts[:, 1])
    grid = torch.from_numpy(cuts).float()
    windows = torch.cat([grid[:, None].expand(-1, len(grid), 2), grid[None].expand(len(grid), -1, 2)], 2)
    window_shape = _window_log_aspect(windows.reshape(1, -1, 4))  # window k * len(GRID) + j: GRID[k] x GRID[j]
    whole = shape_signal(resample(lum16, 8))
    best = torch.full((len(mine),), -2.0)
    window = torch.zeros(len(mine), dtype=torch.long)
    order = np.argsort(mine, kind="stable")
    bounds = np.searchsorted(mine[order], np.arange(len(lum16) + 1))
    for lo in tqdm(range(0, len(lum16), CHUNK_ROWS), desc="pixel check: align", unit="chunk", delay=5, leave=False):
        rows = np.arange(lo, min(lo + CHUNK_ROWS, len(lum16)))
        rows = rows[bounds[rows + 1] > bounds[rows]]
        if not len(rows):
            continue
        crops = shape_signal(torch.einsum("kpy,nyx,jqx->nkjpq", w, lum16[rows], w)).reshape(len(rows), -1, 64)
        for r, row in enumerate(rows.tolist()):
            q = torch.as_tensor(order[bounds[row]:bounds[row + 1]])
            sims = whole[torch.as_tensor(other)[q]] @ crops[r].T
            sims[_misshapen(log_aspect, torch.full((len(q),), row), torch.as_tensor(other)[q], window_shape)] = -2.0
            best[q], window[q] = sims.max(1)
    return best, window


def _refine(lum32: torch.Tensor, mine: torch.Tensor, other: torch.Tensor, cuts: torch.Tensor, step: float,
            log_aspect: torch.Tensor | None):
    """Move each edge of each pair's window (cut top, bottom, left, right) by -step, 0, +step at 16 px; the best
    window's correlation and cuts (of the other's shape, where sizes are known)."""
    n = len(mine)
    steps = torch.tensor([-step, 0.0, step])
    options = [(cuts[:, j:j + 1] + steps).clamp(0, 0.3) for j in range(4)]
    grid = [options[0][:, :, None].expand(n, 3, 3).reshape(-1), options[1][:, None, :].expand(n, 3, 3).reshape(-1),
            options[2][:, :, None].expand(n, 3, 3).reshape(-1), options[3][:, None, :].expand(n, 3, 3).reshape(-1)]
    wy = window_weights(32, 16, grid[0].numpy(), grid[1].numpy()).reshape(n, 9, 16, 32)
    wx = window_weights(32, 16, grid[2].numpy(), grid[3].numpy()).reshape(n, 9, 16, 32)
    crops = torch.einsum("nkpx,njqx->nkjpq", torch.einsum("nkpy,nyx->nkpx", wy, lum32[mine]), wx)
    sims = torch.einsum("nkjd,nd->nkj", shape_signal(crops), shape_signal(resample(lum32[other], 16))).reshape(n, 81)
    pick = [g.reshape(n, 9) for g in grid]
    windows = torch.stack([pick[0][:, :, None].expand(n, 9, 9), pick[1][:, :, None].expand(n, 9, 9),
                           pick[2][:, None, :].expand(n, 9, 9), pick[3][:, None, :].expand(n, 9, 9)], -1)
    windows = windows.reshape(n, 81, 4)  # option k: top and bottom from option k // 9, left and right from k % 9
    sims[_misshapen(log_aspect, mine, other, _window_log_aspect(windows))] = -2.0
    best, k = sims.max(1)
    return best, windows[torch.arange(n), k]


def colour_gap(rgb32: torch.Tensor, mine: torch.Tensor, other: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """The largest difference (levels) of any cell's mean colour (COLOUR_CELLS x COLOUR_CELLS cells) between
    `mine`'s window and the whole of `other`, after one brightness factor; grayscale pairs by luminance."""
    kept = 1 - cuts[:, 0::2] - cuts[:, 1::2]  # (n, 2) kept share of each axis
    inner = cuts + COLOUR_INSET * kept.repeat_interleave(2, 1)
    wy = window_weights(32, 16, inner[:, 0].numpy(), inner[:, 1].numpy())
    wx = window_weights(32, 16, inner[:, 2].numpy(), inner[:, 3].numpy())
    cell = 16 // COLOUR_CELLS
    a = F.avg_pool2d(torch.einsum("npy,ncyx,nqx->ncpq", wy, rgb32[mine], wx), cell)
    w = window_weights(32, 16, [COLOUR_INSET], [COLOUR_INSET])[0]
    b = F.avg_pool2d(w @ rgb32[other] @ w.T, cell)
    gray = torch.minimum(*(((x - luma(x, 1)[:, None]).pow(2).mean((1, 2, 3)).sqrt()) for x in (a, b))) < GRAY_CHROMA
    a = torch.where(gray[:, None, None, None], luma(a, 1)[:, None].expand_as(a), a)
    b = torch.where(gray[:, None, None, None], luma(b, 1)[:, None].expand_as(b), b)
    factor = ((a * b).sum((1, 2, 3)) / a.pow(2).sum((1, 2, 3)).clamp_min(1e-6)).clamp(*BRIGHTNESS)
    return (b - factor[:, None, None, None] * a).abs().amax((1, 2, 3))


def align(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, minimum: float,
          log_aspect: np.ndarray | None = None):
    """Each pair (thumbs[first[p]], thumbs[second[p]]) aligned: for the pairs whose coarse correlation comes within
    COARSE_SLACK of `minimum`, their indices, the refined shape correlation, which image's window (`mine`) is
    matched against the whole of which (`other`), and the window's cuts (top, bottom, left, right shares). The
    direction is the one of higher coarse correlation; a tie (both windows whole, often; within DIRECTION_TIE, so
    that the batch a pair is aligned in cannot break it) goes to `first`'s window, so there the pair's order can
    change the verdict (ways to make it symmetric measured worse: BENCHMARKS.md).
    `log_aspect` (log width/height of each thumbnail's image, NaN unknown) keeps windows to the other's shape."""
    rgb = torch.from_numpy(np.ascontiguousarray(thumbs)).float().permute(0, 3, 1, 2)
    lum32 = luma(resample(rgb, 32), 1)
    log_aspect = None if log_aspect is None else torch.from_numpy(np.asarray(log_aspect, np.float32))
    lum16 = resample(lum32, 16)
    best, window, flipped = torch.full((len(first),), -2.0), torch.zeros(len(first), dtype=torch.long), None
    for side, (mine, other) in enumerate(((first, second), (second, first))):
        sim, win = _coarse(lum16, mine, other, log_aspect)
        better = sim > best + (DIRECTION_TIE if side else 0.0)
        best, window = torch.where(better, sim, best), torch.where(better, win, window)
        flipped = better if side else torch.zeros_like(better)
    close = torch.nonzero(best >= minimum - COARSE_SLACK).flatten()
    mine = torch.where(flipped[close], torch.as_tensor(second)[close], torch.as_tensor(first)[close])
    other = torch.where(flipped[close], torch.as_tensor(first)[close], torch.as_tensor(second)[close])
    grid = torch.tensor(GRID, dtype=torch.float32)
    cuts = torch.cat([grid[window[close] // len(GRID)], grid[window[close] % len(GRID)]], 1)
    sims = torch.zeros(len(close))
    for lo in range(0, len(close), 1024):
        part = slice(lo, lo + 1024)
        for step in REFINE_STEPS:
            sims[part], cuts[part] = _refine(lum32, mine[part], other[part], cuts[part], step, log_aspect)
    return close.numpy(), sims, mine, other, cuts


@dataclass
class Verdicts:
    """`pixel_verdicts` per pair: `match`, the aligned shape correlation where every test passes, else -1; and,
    unturned, `shape` (-2 where let go far below the bar), `alike` (past the shape bar and the colour guard) and
    `probability` (the copy verifier's, NaN where not asked: only alike pairs are)."""
    match: np.ndarray
    shape: np.ndarray
    alike: np.ndarray
    probability: np.ndarray


def pixel_match(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, minimum: float,
                colour_max: float | None, verifier=None, log_aspect: np.ndarray | None = None,
                rotations: tuple[float, ...] = (), lenient: np.ndarray | None = None) -> np.ndarray:
    """Per pair (thumbs[first[p]], thumbs[second[p]]): the aligned shape correlation (1.0 for identical
    pictures; a plain image matches nothing), or -1 where a test fails (`pixel_verdicts`)."""
    return pixel_verdicts(thumbs, first, second, minimum, colour_max, verifier, log_aspect, rotations, lenient).match


def pixel_verdicts(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, minimum: float,
                   colour_max: float | None, verifier=None, log_aspect: np.ndarray | None = None,
                   rotations: tuple[float, ...] = (), lenient: np.ndarray | None = None) -> Verdicts:
    """Per pair (thumbs[first[p]], thumbs[second[p]]): `Verdicts`, where a match fails the colour test (when
    `colour_max` is set) or the copy verifier (a curate.dedup.copy_verifier.Verifier, when given; the `lenient`
    pairs, of one rare size, need only RARE_SIZE_VERIFIER_MIN of it: curate.dedup.rare_sizes). `log_aspect`: see
    `align`. A pair that fails but comes within ROTATION_SLACK of `minimum` gets a second chance with `first` turned
    back by each of `rotations` (degrees), where the turn counts (`turn_counts`, against the turn by minus that
    angle)."""
    lenient = np.zeros(len(first), bool) if lenient is None else np.asarray(lenient, bool)
    aligned = align(thumbs, first, second, minimum, log_aspect)
    shape = _shapes(aligned, len(first))
    match, alike, probability = _verdicts(thumbs, aligned, len(first), minimum, colour_max, verifier, lenient)
    verdicts = Verdicts(match, shape, alike, probability)
    retry = np.flatnonzero((match < minimum) & (shape >= minimum - ROTATION_SLACK)) if rotations else []
    if not len(retry):
        return verdicts
    log_aspect = np.full(len(thumbs), np.nan) if log_aspect is None else np.asarray(log_aspect)
    partners, at = np.unique(second[retry], return_inverse=True)
    turned = {}
    for degrees in dict.fromkeys([*rotations, *(-d for d in rotations)]):
        rows = np.concatenate([rotate(thumbs[first[retry]], log_aspect[first[retry]], degrees), thumbs[partners]])
        lined_up = align(rows, np.arange(len(retry)), len(retry) + at, minimum,
                         np.concatenate([log_aspect[first[retry]], log_aspect[partners]]))
        turned[degrees] = rows, lined_up, _shapes(lined_up, len(retry))
    for degrees in rotations:  # the colour test and the verifier only where the turn counts
        rows, lined_up, turned_shape = turned[degrees]
        counts = turn_counts(shape[retry], turned_shape, turned[-degrees][2])
        again = _verdicts(rows, lined_up, len(retry), minimum, colour_max, verifier, lenient[retry], counts)[0]
        match[retry[counts]] = np.maximum(match[retry[counts]], again[counts])
    return verdicts


def turn_counts(unturned: np.ndarray, turned: np.ndarray, mirror: np.ndarray,
                share: float = ROTATION_MIRROR) -> np.ndarray:
    """Whether a pair's verdict turned back by an angle counts, from its aligned shape correlations unturned, turned
    by the angle and by minus the angle: a copy turned a few degrees lines up better turned back than unturned, and
    its mismatch (1 - shape) is at most `share` of the mismatch turned the wrong way. A lookalike that a
    turn's smoothing brings closer comes about as close turned either way (and the verifier is lenient with that
    smoothing: without these tests the emoji pool lost 204 pictures)."""
    return (turned > unturned) & (1 - turned <= share * (1 - mirror))


def _shapes(aligned, n: int) -> np.ndarray:
    """Each pair's aligned shape correlation from `align`'s values, -2 where it was let go far below the bar."""
    close, sims = aligned[:2]
    shape = np.full(n, -2.0, np.float32)
    shape[close] = sims.numpy()
    return shape


def _verdicts(thumbs: np.ndarray, aligned, n: int, minimum: float, colour_max: float | None, verifier,
              lenient: np.ndarray, eligible: np.ndarray | None = None):
    """`pixel_verdicts` of n aligned pairs (`align`'s values) at their own angle: the shape correlation where every
    test passes, else -1; whether each passed the shape bar and the colour guard; the verifier's probability (NaN
    where not asked). Only the `eligible` pairs (all by default) are tested, and the `lenient` ones need only
    RARE_SIZE_VERIFIER_MIN of the verifier."""
    close, sims, mine, other, cuts = aligned
    passed = sims >= minimum  # the cheap tests first; the verifier sees only what passed them
    if eligible is not None:
        passed &= torch.from_numpy(np.asarray(eligible)[close])
    if colour_max is not None:
        rgb32 = resample(torch.from_numpy(np.ascontiguousarray(thumbs)).float().permute(0, 3, 1, 2), 32)
        ask = torch.nonzero(passed).flatten()
        for lo in range(0, len(ask), CHUNK_PAIRS):
            part = ask[lo:lo + CHUNK_PAIRS]
            passed[part] = colour_gap(rgb32, mine[part], other[part], cuts[part]) <= colour_max
    alike, probability = np.zeros(n, bool), np.full(n, np.nan, np.float32)
    alike[close] = passed.numpy()
    if verifier is not None:
        ask = torch.nonzero(passed).flatten()
        for lo in range(0, len(ask), CHUNK_PAIRS):
            part = ask[lo:lo + CHUNK_PAIRS]
            bar = np.where(lenient[close[part.numpy()]], min(RARE_SIZE_VERIFIER_MIN, verifier.minimum),
                           verifier.minimum)
            prob = verifier.probabilities(thumbs, mine[part], other[part], cuts[part])
            probability[close[part.numpy()]] = prob
            passed[part] = torch.from_numpy(prob >= bar)
    match = np.full(n, -1.0, np.float32)
    match[close] = torch.where(passed, sims, torch.full_like(sims, -1.0)).numpy()
    return match, alike, probability


def picture_digest(thumb: np.ndarray) -> bytes:
    """A digest of a thumbnail's pixels: rows with the same one are one picture."""
    return hashlib.blake2b(thumb.tobytes(), digest_size=16).digest()


def chroma(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail's RMS chroma (levels): how far its pixels are from their own luminance."""
    out = np.zeros(len(thumbs), np.float32)
    for lo in range(0, len(thumbs), CHUNK_ROWS):  # bounded memory: float copies of CHUNK_ROWS thumbnails
        rgb = thumbs[lo:lo + CHUNK_ROWS].astype(np.float32)
        out[lo:lo + CHUNK_ROWS] = np.sqrt(((rgb - (rgb @ np.array(LUMA, np.float32))[..., None]) ** 2).mean((1, 2, 3)))
    return out


def rotate(thumbs: np.ndarray, log_aspect: np.ndarray, degrees: float) -> np.ndarray:
    """(n, s, s, 3) uint8 thumbnails of images turned by `degrees` (counter-clockwise) about their centre, in
    the images' own proportions (log width/height; NaN: square), the corners filled from the nearest edge."""
    x = torch.tensor(thumbs, dtype=torch.float32).permute(0, 3, 1, 2)
    aspect = torch.from_numpy(np.exp(np.nan_to_num(np.asarray(log_aspect, np.float64)))).float()
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    theta = torch.zeros(len(thumbs), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s / aspect, s * aspect, c
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
