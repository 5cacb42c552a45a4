"""Near-duplicate captions: MinHash signatures computed in numpy batches, LSH banding, and exact
Jaccard verification of every candidate pair."""
from __future__ import annotations

import re
import numpy as np
from datasketch.lsh import _optimal_param

MAX_HASH = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")


def shingles(caption: str, kind: str = "word", n: int = 1) -> set[str]:
    """Word n-grams (default unigrams: captions are short) or character n-grams of the normalised text."""
    text = caption.lower()
    if kind == "char":
        text = " ".join(_WORD.findall(text))
        return {text[i:i + n] for i in range(max(0, len(text) - n + 1))}
    words = _WORD.findall(text)
    return {" ".join(words[i:i + n]) for i in range(max(0, len(words) - n + 1))}


def _token_hashes(tokens: list[str]) -> np.ndarray:
    import xxhash

    return np.fromiter((xxhash.xxh32_intdigest(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))


def signatures(sets: list[set[str]], num_perm: int = 128, seed: int = 1, chunk: int = 50_000) -> np.ndarray:
    """(len(sets), num_perm) uint32 MinHash signatures, all docs at once, minimised per document with
    reduceat. The permutations are multiply-add-shift hashes of the 32-bit token hash,
    h_p(x) = ((a_p x + b_p) mod 2^64) >> 32 with odd a_p: no modulo, so numpy does them at memory
    speed. Empty sets get the maximum value everywhere."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
    out = np.full((len(sets), num_perm), MAX_HASH, dtype=np.uint64)
    tokens = [t for s in sets for t in s]
    hashes = _token_hashes(tokens)
    doc_of_token = np.repeat(np.arange(len(sets)), lengths)
    for lo in range(0, len(tokens), chunk):
        hi = min(len(tokens), lo + chunk)
        phv = (hashes[lo:hi, None] * a[None, :] + b[None, :]) >> np.uint64(32)
        docs = doc_of_token[lo:hi]
        first = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        mins = np.minimum.reduceat(phv, first, axis=0)
        np.minimum.at(out, docs[first], mins)
    return out.astype(np.uint32)


def band_keys(sigs: np.ndarray, threshold: float) -> np.ndarray:
    """(n, bands) uint64: one key per document and band; documents sharing a key share that band.
    Bands and rows are datasketch's optimum with false negatives weighted 0.9: every candidate is
    verified by exact Jaccard, so a false positive costs only time while a false negative is a lost
    duplicate. A band's rows are mixed into 64 bits (a collision only adds a candidate)."""
    bands, rows = _optimal_param(threshold, sigs.shape[1], 0.1, 0.9)
    keys = np.zeros((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            key = np.full(len(sigs), band, dtype=np.uint64)
            for col in range(band * rows, (band + 1) * rows):
                key = (key ^ sigs[:, col].astype(np.uint64)) * np.uint64(0x100000001B3)
                key ^= key >> np.uint64(29)
            keys[:, band] = key
    return keys


def memory_buckets(keys: np.ndarray) -> list[np.ndarray]:
    """Groups of two or more documents sharing a (band, key), by sorting each band in memory."""
    buckets = []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        buckets += [order[lo:hi] for lo, hi in zip(starts, ends) if hi - lo > 1]
    return buckets


def lsh_candidates(sigs: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Pairs (i < j) that share at least one band, grouped in memory (the dedup stage groups them by hash
    partitions instead: curate.dedup.partitions)."""
    pairs: set[tuple[int, int]] = set()
    for bucket in memory_buckets(band_keys(sigs, threshold)):
        members = sorted(int(m) for m in bucket)
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
    return pairs


def near_duplicate_captions(captions: list[str], threshold: float = 0.8, num_perm: int = 128,
                            kind: str = "word", n: int = 1) -> list[tuple[int, int, float]]:
    """Verified pairs (i, j, jaccard >= threshold) among captions, in one process (the benchmark's and the
    tests' reference for the dedup stage's partitioned path); empty captions never match.

    Captions with identical shingle sets are linked to their first occurrence directly (Jaccard 1), and
    only one of them enters LSH, so thousands of copies of one boilerplate caption cost no quadratic work."""
    sets = [shingles(c or "", kind, n) for c in captions]
    first_of: dict[frozenset, int] = {}
    found: list[tuple[int, int, float]] = []
    reps: list[int] = []
    for i, shingle_set in enumerate(sets):
        if not shingle_set:
            continue
        key = frozenset(shingle_set)
        if key in first_of:
            found.append((first_of[key], i, 1.0))
        else:
            first_of[key] = i
            reps.append(i)
    sigs = signatures([sets[i] for i in reps], num_perm)
    for a, b in lsh_candidates(sigs, threshold):
        i, j = reps[a], reps[b]
        jaccard = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
        if jaccard >= threshold:
            found.append((i, j, jaccard))
    return sorted(found)
