"""Metadata entries, MetaCLIP's way: find the entries each caption contains (hash lookups of its words and
word pairs, an Aho-Corasick automaton for longer entries), count them over the pool and balance the pool
over them.

Captions and entries are compared after one normalisation (`normalise`): lower case, every run of
characters other than letters (with their combining marks), digits and `_` made one space. An entry
matches a caption where it appears as whole words ("red apple" in "a red apple pie", not "apple" in "pineapple"), as MetaCLIP's space-padded
substring match does (it keeps case; we do not)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PUNCTUATION = r"[^\pL\pM\pN_ ]+"  # RE2 (Arrow): a run of anything but letters (and their marks), digits, _, space
CHUNK_ROWS = 1 << 20  # captions matched per pass, which bounds the memory of one pass
PHRASE_WORDS = 3  # entries of this many words or more are found by the automaton; shorter ones by lookups
PAIRS_PER_STEP = 1 << 24  # (row, entry) pairs drawn at a time, which bounds balance's temporaries


def normalise(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Lower case, runs of non-word characters as one space, no space at either end; null as ""."""
    lowered = pc.utf8_lower(pc.fill_null(texts, ""))
    spaced = pc.replace_substring_regex(pc.replace_substring_regex(lowered, PUNCTUATION, " "), " {2,}", " ")
    return pc.utf8_trim_whitespace(spaced)  # (leaving the space out of the first pattern makes it ~5x cheaper)


def read_entries(path: Path) -> list[str]:
    """A metadata file: one entry a line, normalised; blank lines and repeats dropped (first kept)."""
    lines = pa.array(Path(path).read_text(encoding="utf-8").splitlines(), pa.string())
    return [e for e in dict.fromkeys(normalise(lines).to_pylist()) if e]


def write_entries(path: Path, entries: list[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{e}\n" for e in entries), encoding="utf-8")


class EntryMatcher:
    """Which entries each caption contains, as whole words. Entries of one and two words (most entries and
    most matches) are looked up as the caption's words and word pairs, one Arrow hash join each; longer ones
    (titles, multi-word names) go through one Aho-Corasick automaton over the space-padded entries, run once
    over a chunk of captions joined into one string, as MetaCLIP's space-padded substring matching does."""

    def __init__(self, entries: list[str]):
        from ahocorasick_rs import MATCHKIND_STANDARD, BytesAhoCorasick

        self.entries = entries
        words = np.array([e.count(" ") + 1 for e in entries], dtype=np.int64)
        self._lookups = {k: (ids, pa.array([entries[i] for i in ids], pa.string()))
                         for k in range(1, PHRASE_WORDS) if len(ids := np.flatnonzero(words == k))}
        self._phrases = np.flatnonzero(words >= PHRASE_WORDS)
        self._automaton = BytesAhoCorasick([f" {entries[i]} ".encode() for i in self._phrases.tolist()],
                                           matchkind=MATCHKIND_STANDARD) if len(self._phrases) else None

    def match(self, captions: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(row, entry) for every entry a caption contains, each pair once, sorted by row then entry."""
        if not self.entries or not len(captions):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        found = [self._match_chunk(captions.slice(lo, CHUNK_ROWS), lo) for lo in range(0, len(captions), CHUNK_ROWS)]
        return tuple(np.concatenate(parts) for parts in zip(*found))

    def _match_chunk(self, captions: pa.Array | pa.ChunkedArray, first_row: int) -> tuple[np.ndarray, np.ndarray]:
        text = normalise(captions)
        text = (text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text).cast(pa.string())
        words = pc.split_pattern(text, " ")
        flat, row_of = words.flatten(), np.repeat(np.arange(len(words)), pc.list_value_length(words).to_numpy())
        keys = []
        for k, (ids, values) in self._lookups.items():
            starts = np.flatnonzero(row_of[:len(row_of) - k + 1] == row_of[k - 1:])  # k words of one caption
            grams = flat if k == 1 else pc.binary_join_element_wise(*(flat.take(starts + j) for j in range(k)), " ")
            hit = pc.index_in(grams, values)
            at = np.flatnonzero(hit.is_valid().to_numpy(zero_copy_only=False))
            keys.append(row_of[starts[at]] * len(self.entries) + ids[pc.drop_null(hit).to_numpy()])
        if self._automaton is not None:
            keys.append(self._phrase_keys(text))
        key = np.sort(np.concatenate(keys), kind="stable")  # runs already sorted by row: cheap
        key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
        return key // len(self.entries) + first_row, key % len(self.entries)

    def _phrase_keys(self, text: pa.Array) -> np.ndarray:
        """row * entries + entry for every long entry found in the normalised captions."""
        padded = pc.binary_join_element_wise(" ", text, " ", "")  # " a b " + " c " = " a b  c ": no match spans two
        offsets = np.frombuffer(padded.buffers()[1], np.int32)[padded.offset:padded.offset + len(padded) + 1]
        data = np.frombuffer(padded.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]  # the UTF-8 bytes, not copied
        found = self._automaton.find_matches_as_indexes(data, overlapping=True)  # (pattern, start, end) in bytes
        found = np.fromiter(itertools.chain.from_iterable(found), np.int64).reshape(-1, 3)
        rows = np.searchsorted(offsets - offsets[0], found[:, 1], side="right") - 1  # the caption each starts in
        return rows * len(self.entries) + self._phrases[found[:, 0]]


def entry_counts(rows: np.ndarray, entries: np.ndarray, counted: np.ndarray, n_entries: int) -> np.ndarray:
    """Per entry, the `counted` rows that contain it (a caption counts once per entry)."""
    return np.bincount(entries[counted[rows]], minlength=n_entries)


def coins(keys: np.ndarray, entries: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) draw per (row key, entry, seed): splitmix64 of the three mixed, so a pair's draw
    never depends on the other rows of the pool."""
    x = keys.astype(np.uint64) ^ (entries.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    x ^= np.uint64((seed * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def balance(rows: np.ndarray, entries: np.ndarray, counts: np.ndarray, keys: np.ndarray, t: int, seed: int,
            n_rows: int) -> np.ndarray:
    """MetaCLIP's balancing: an entry seen `count` times picks each of its pairs with probability
    min(1, t / count), so tail entries (count <= t) keep all theirs and head entries about t; a row stays
    when any entry it contains picks it. `keys` are per-row random keys (bits of the uid)."""
    keep = np.zeros(n_rows, dtype=bool)
    for lo in range(0, len(rows), PAIRS_PER_STEP):
        r, e = rows[lo:lo + PAIRS_PER_STEP], entries[lo:lo + PAIRS_PER_STEP]
        keep[r[coins(keys[r], e, seed) < t / np.maximum(counts[e], 1)]] = True
    return keep
