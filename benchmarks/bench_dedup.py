"""Dedup throughput and agreement.

    python benchmarks/bench_dedup.py [--captions 200000] [--images 1000000] [--dim 256] [--out benchmarks/results]

captions: our MinHash-LSH (numpy signatures, identical shingle sets collapsed, exact-Jaccard check)
against a straightforward datasketch loop (`MinHash.update` per shingle, `MinHashLSH.insert`/`query`,
the same exact-Jaccard check) on the same captions; `ratio` = our captions/s over datasketch's.
Agreement = share of captions whose duplicate group (connected component) is the same in both; as both
sides verify every pair exactly, the union of their pairs is a lower bound on the truth, and each side's
`rows_grouped_as_union_*` is the share of captions it groups as that union does.
images: SemDeDup on random unit vectors with planted near copies; wall time, peak RSS, and recall
against exact brute-force pairs on a sample.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402

ICONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "icons"


def make_captions(n: int) -> list[str]:
    """The 64,490 real icon names (with their natural repeats and style variants), then web-like
    captions of 4-12 words drawn from their vocabulary with Zipf frequencies; 5% of those are copies
    with one word added, dropped or replaced (near duplicates around the threshold)."""
    import pyarrow.parquet as pq

    captions = pq.read_table(ICONS / "pairs.parquet", columns=["caption"]).column("caption").to_pylist()[:n]
    from collections import Counter

    vocab = [w for w, _ in Counter(w for c in captions for w in c.split()).most_common()]  # by frequency
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    while len(captions) < n:
        if len(captions) > 100 and rng.random() < 0.05:
            words = captions[int(rng.integers(len(captions)))].split()
            edit = int(rng.integers(3))
            k = int(rng.integers(len(words) + (edit == 0)))
            if edit == 0:
                words.insert(k, vocab[int(rng.integers(len(vocab)))])
            elif len(words) > 1:
                words[min(k, len(words) - 1):min(k, len(words) - 1) + 1] = [] if edit == 1 else [vocab[int(rng.integers(len(vocab)))]]
            captions.append(" ".join(words))
        else:
            captions.append(" ".join(rng.choice(vocab, size=int(rng.integers(4, 13)), p=weights)))
    return captions


def components(n: int, pairs) -> list[int]:
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


def datasketch_loop(captions: list[str], threshold: float, num_perm: int, n_gram: int):
    from datasketch import MinHash, MinHashLSH

    from curate.minhash import shingles

    sets = [shingles(c, "word", n_gram) for c in captions]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, s in enumerate(sets):
        m = MinHash(num_perm=num_perm)
        for token in s:
            m.update(token.encode())
        hashes.append(m)
        if s:
            lsh.insert(i, m)
    pairs = []
    for i, s in enumerate(sets):
        if not s:
            continue
        for j in lsh.query(hashes[i]):
            if j > i and len(s & sets[j]) / len(s | sets[j]) >= threshold:
                pairs.append((i, j))
    return pairs


def bench_captions(n: int, threshold: float, num_perm: int, n_gram: int) -> dict:
    from curate.minhash import near_duplicate_captions

    captions = make_captions(n)
    start = time.perf_counter()
    ours = near_duplicate_captions(captions, threshold, num_perm, "word", n_gram)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = datasketch_loop(captions, threshold, num_perm, n_gram)
    theirs_s = time.perf_counter() - start
    a, b = components(n, ours), components(n, theirs)
    groups_a, groups_b = {}, {}
    for i, (x, y) in enumerate(zip(a, b)):
        groups_a.setdefault(x, set()).add(i)
        groups_b.setdefault(y, set()).add(i)
    same = sum(groups_a[x] == groups_b[y] for x, y in zip(a, b))
    in_dups = sum(len(g) for g in groups_a.values() if len(g) > 1)
    # both sides verify by exact Jaccard, so every pair either finds is real: recall against their union
    truth = components(n, [*ours, *theirs])
    recall = {name: round(sum(x == t for x, t in zip(side, truth)) / n, 5) for name, side in (("ours", a), ("datasketch", b))}
    return {"captions": n, "ours_captions_per_s": round(n / ours_s, 1), "datasketch_captions_per_s": round(n / theirs_s, 1),
            "ratio": round(theirs_s / ours_s, 2), "agreement": round(same / n, 5), "ours_s": round(ours_s, 2),
            "datasketch_s": round(theirs_s, 2), "rows_in_duplicate_groups": in_dups,
            "rows_grouped_as_union_ours": recall["ours"], "rows_grouped_as_union_datasketch": recall["datasketch"]}


def bench_images(n: int, dim: int, eps: float, sample: int, cluster_size: int) -> dict:
    from curate.semdedup import near_duplicate_images

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    copies = n // 100
    src, dst = rng.choice(n, size=copies, replace=False), rng.choice(n, size=copies, replace=False)
    keep = src != dst
    x[dst[keep]] = x[src[keep]] + rng.standard_normal((keep.sum(), dim), dtype=np.float32) * 0.15
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start = time.perf_counter()
    pairs, _ = near_duplicate_images(x, eps, cluster_size)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    sub = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    in_sub = np.zeros(n, dtype=bool)
    in_sub[sub] = True
    found = {(i, j) for i, j, _ in pairs if in_sub[i] and in_sub[j]}
    truth = set()
    xs = x[sub]
    for lo in range(0, len(sub), 2048):
        sims = xs[lo:lo + 2048] @ xs.T
        for r, c in zip(*np.nonzero(sims >= 1 - eps)):
            i, j = sub[lo + r], sub[c]
            if i < j:
                truth.add((int(i), int(j)))
    recall = len(found & truth) / max(1, len(truth))
    return {"vectors": n, "dim": dim, "eps": eps, "semdedup_wall_s": round(wall, 1), "pairs": len(pairs),
            "recall_vs_bruteforce": round(recall, 4), "bruteforce_sample": len(sub), "bruteforce_pairs": len(truth),
            "peak_rss_gb": round(peak_gb, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-n", type=int, default=2)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--cluster-size", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    captions = bench_captions(args.captions, args.threshold, args.num_perm, args.shingle_n)
    print(captions, file=sys.stderr)
    images = bench_images(args.images, args.dim, args.eps, args.sample, args.cluster_size) if args.images else None
    emit({**captions, "images": images}, args.out, "dedup")


if __name__ == "__main__":
    main()
