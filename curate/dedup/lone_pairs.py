"""Lone pairs as evidence of a copy. Lookalikes come in families: one figure in five skin tones, one flag layout
that many countries share, one frame with a glyph for each hour; a picture and its copy are two of a kind. A
candidate pair past the shape bar and the colour guard (curate.dedup.image_match) that the copy verifier doubts,
where either side has colour (RMS chroma over image_match.GRAY_CHROMA) and no third picture passes those two tests
with either row, needs only `dedup.image_lone_pair_verifier_min` of the verifier. The colour condition keeps out
gray glyphs, which come in pairs of lookalikes too: two icon sets drawing one concept alike.

The third pictures asked about are the rows proposed as candidates with either row of the pair (SemDeDup's and
the copy search's), each tested against both rows once every candidate pair of the image partition has been
checked (`LonePairs.found`); rows of the same thumbnail as either row are that picture again, not a third."""
from __future__ import annotations

from typing import Callable

import numpy as np

from curate.dedup.image_match import GRAY_CHROMA, Verdicts, chroma, picture_digest


class LonePairs:
    """Collects `pixel_verdicts` batch by batch (rows are the table's row numbers), then names the lone pairs."""

    def __init__(self, minimum: float):
        self.minimum = minimum
        self.picture: dict[int, bytes] = {}  # row -> a digest of its thumbnail
        self.candidates: list[np.ndarray] = []  # (pairs, 2) of every batch: who was proposed with whom
        self.doubted: dict[tuple[int, int], float] = {}  # alike pairs the verifier doubted -> their shape

    def record(self, rows: np.ndarray, thumbs: np.ndarray, first: np.ndarray, second: np.ndarray,
               verdicts: Verdicts) -> None:
        """One batch: `thumbs` of the table's `rows`, pairs (first, second) of table rows and their verdicts."""
        for k, row in enumerate(rows.tolist()):
            if row not in self.picture:
                self.picture[row] = picture_digest(thumbs[k])
        self.candidates.append(np.stack([first, second], 1).astype(np.int64))
        failed = verdicts.match < verdicts.shape  # -1: the verifier said no
        doubted = np.flatnonzero(verdicts.alike & failed & (verdicts.probability >= self.minimum))
        colourful = [chroma(thumbs[np.searchsorted(rows, side[doubted])]) > GRAY_CHROMA for side in (first, second)]
        for k, colour in zip(doubted.tolist(), (colourful[0] | colourful[1]).tolist()):
            if colour:
                i, j = int(first[k]), int(second[k])
                self.doubted[min(i, j), max(i, j)] = float(verdicts.shape[k])

    def found(self, confirmed, alike: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        """(first, second, shape) of the doubted pairs, less those `confirmed` ((i, j) in either order) when asked
        again, where no third picture among either row's candidates is `alike(rows, rows)` (a bool per pair) with
        either row."""
        pairs = [p for p in self.doubted if p not in confirmed and p[::-1] not in confirmed]
        neighbours = self._neighbours({row for p in pairs for row in p})
        thirds = {(i, j): [k for k in neighbours[i] | neighbours[j]
                           if self.picture[k] not in (self.picture[i], self.picture[j])] for i, j in pairs}
        asked = np.array(sorted({(k, row) for p, ks in thirds.items() for k in ks for row in p}), np.int64)
        asked = asked.reshape(-1, 2)
        family = {tuple(pair) for pair in asked[alike(asked[:, 0], asked[:, 1])].tolist()} if len(asked) else set()
        lone = [p for p in pairs if not any((k, row) in family for k in thirds[p] for row in p)]
        first, second = (np.array([p[side] for p in lone], np.int64) for side in (0, 1))
        return first, second, np.array([self.doubted[p] for p in lone], np.float32)

    def _neighbours(self, rows: set[int]) -> dict[int, set[int]]:
        """Each of `rows`' candidates: the rows proposed with it."""
        every = np.concatenate(self.candidates) if self.candidates else np.zeros((0, 2), np.int64)
        out: dict[int, set[int]] = {row: set() for row in rows}
        for a, b in every[np.isin(every, list(rows)).any(1)].tolist():
            if a in out:
                out[a].add(b)
            if b in out:
                out[b].add(a)
        return out
