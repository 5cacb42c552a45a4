"""Which rows are one picture, and which row of each stays: the greedy decision over confirmed links,
most preferred row first (see `decide`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Links:
    """Confirmed near-image links between row numbers, with their similarity (the embeddings' cosine, 1 for
    identical ones) and their strength (how alike the pixel check found the two; the similarity without it)."""

    def __init__(self, first: np.ndarray, second: np.ndarray, similarity: np.ndarray,
                 strength: np.ndarray | None = None):
        self.first, self.second, self.similarity = first, second, similarity
        self.strength = similarity if strength is None else strength

    def by_row(self, n: int) -> list[list[tuple[int, float, float]]]:
        out: list[list[tuple[int, float, float]]] = [[] for _ in range(n)]
        for i, j, sim, strength in zip(self.first.tolist(), self.second.tolist(), self.similarity.tolist(),
                                       self.strength.tolist()):
            out[i].append((j, sim, strength))
            out[j].append((i, sim, strength))
        return out


@dataclass
class Decision:
    """Per row number: the row kept for it (itself when kept), the reason, the link's similarity and the
    row at the link's other end."""

    kept_for: np.ndarray
    reason: list
    similarity: np.ndarray
    linked_to: np.ndarray


def decide(sha: list, caption_hash: list, links: Links, order: np.ndarray) -> Decision:
    """Keep or drop each row, most preferred first. Rows with the same image bytes (or identical embeddings)
    are one picture: its most preferred row stays, the others are `exact_pair` (same bytes and caption),
    `exact_image` (same bytes) or `near_image` copies of it. A picture is dropped as `near_image` only when it
    has a link of its own to a picture already kept: a chain A~B~C with A kept and C unlike A keeps C. Once every
    keep is known, a dropped picture names the kept row it has the strongest link to (its original, kept after
    it was dropped for a lookalike, rather than that lookalike)."""
    n = len(order)
    picture = _picture_ids(sha, links)
    neighbours = links.by_row(n)
    members: dict[int, list[int]] = {}
    for k in order.tolist():
        members.setdefault(int(picture[k]), []).append(k)
    kept_row: dict[int, int] = {}  # picture -> its kept row, for kept pictures

    def strongest(pic: int):
        """(strength, similarity, kept row, linked row) of the picture's strongest link to a kept picture, or None."""
        best = None
        for row in members[pic]:
            for other, sim, strength in neighbours[row]:
                kept = kept_row.get(int(picture[other]))
                if kept is not None and (best is None or strength > best[0]):
                    best = (strength, sim, kept, other)
        return best

    dropped = []
    for k in order.tolist():
        pic = int(picture[k])
        if members[pic][0] == k:  # a picture is decided with its first row
            if strongest(pic) is None:
                kept_row[pic] = k
            else:
                dropped.append(pic)
    decision = Decision(np.arange(n), [None] * n, np.full(n, np.nan, np.float32), np.full(n, -1))
    for pic, k in kept_row.items():
        for row in members[pic][1:]:
            decision.kept_for[row], decision.linked_to[row], decision.similarity[row] = k, k, 1.0
            decision.reason[row] = _copy_reason(sha, caption_hash, row, k)
    for pic in dropped:  # named once every keep is known: the kept picture it is most like, not the first met
        best = strongest(pic)
        for row in members[pic]:
            decision.kept_for[row], decision.linked_to[row], decision.similarity[row] = best[2], best[3], best[1]
            decision.reason[row] = "near_image"
    return decision


def _copy_reason(sha: list, caption_hash: list, row: int, kept: int) -> str:
    if sha[row] is None or sha[row] != sha[kept]:
        return "near_image"  # identical embeddings, other bytes
    return "exact_pair" if caption_hash[row] == caption_hash[kept] else "exact_image"


def _picture_ids(sha: list, links: Links) -> np.ndarray:
    """One id per picture: rows joined by the same image hash or by a link of similarity 1 (identical
    embeddings), transitively; both are equivalences, so no chain joins unlike pictures."""
    parent = np.arange(len(sha))
    first: dict = {}
    same = [(first.setdefault(s, k), k) for k, s in enumerate(sha) if s]
    identical = links.similarity >= 1.0
    for i, j in [*same, *zip(links.first[identical].tolist(), links.second[identical].tolist())]:
        a, b = find_root(parent, i), find_root(parent, j)
        parent[max(a, b)] = min(a, b)
    return np.array([find_root(parent, k) for k in range(len(sha))], np.int64)


def find_root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i
