"""Dedup throughput and agreement.

    python benchmarks/bench_dedup.py [--captions 200000] [--rounds 3] [--images 1000000] [--dim 256]
        [--out benchmarks/results]

captions: our MinHash-LSH (numpy signatures, identical shingle sets collapsed, exact-Jaccard check)
against three baselines on the same captions, each with the same exact-Jaccard check of its candidates:
- datasketch_loop: `MinHash.update` per shingle (sha1), `MinHashLSH.insert`/`query`;
- datasketch_bulk: datasketch's fastest path, `MinHash.bulk` (`update_batch` per caption) with xxh32 as
  its hash (ours hashes with xxh32 too), inserted through `MinHashLSH.insertion_session`;
- rensa: the Rust `RMinHash.from_token_sets`, `RMinHashLSH.insert_many`/`query_all` (skipped, and said
  so in the JSON, when rensa is not installed), at the band count that divides `--num-perm` and minimises
  datasketch's equal-weight error.
The sides run once per round, in an order rotating every round; figures are medians over the rounds with
their [min, max]. `ratio` = our captions/s over the FASTEST baseline's (per round, median over rounds);
`ratio_vs_<baseline>` for each. Agreement = share of captions whose duplicate group (connected component)
is the same in ours and a baseline; as every side verifies every pair exactly, the union of all sides'
pairs is a lower bound on the truth, and `rows_grouped_as_union_<side>` is the share of captions a side
groups as that union does.
images: SemDeDup on random unit vectors with planted near copies; wall time, peak RSS, and recall
against exact brute-force pairs on a sample.
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, emit, median_range  # noqa: E402

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
    cdf = np.cumsum(weights / weights.sum())
    cdf /= cdf[-1]
    words_by_rank = np.array(vocab)
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
            draws = rng.random(int(rng.integers(4, 13)))  # what rng.choice(vocab, size, p=...) draws
            captions.append(" ".join(words_by_rank[cdf.searchsorted(draws, side="right")]))
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


def group_sets(roots: list[int]) -> dict[int, set[int]]:
    """The members of each component, by its root."""
    members: dict[int, set[int]] = {}
    for i, root in enumerate(roots):
        members.setdefault(root, set()).add(i)
    return members


def verified(sets: list[set[str]], keys: list[int], candidates, threshold: float) -> list[tuple[int, int]]:
    """Pairs (i < j) whose exact Jaccard reaches the threshold; `candidates[a]` lists positions in `keys`
    that LSH put beside the set `keys[a]`."""
    pairs = []
    for a, found in enumerate(candidates):
        i = keys[a]
        for b in found:
            j = keys[b]
            if j > i and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold:
                pairs.append((i, j))
    return pairs


def datasketch_loop(captions: list[str], threshold: float, num_perm: int, n_gram: int):
    from datasketch import MinHash, MinHashLSH

    from curate.dedup.minhash import shingles

    sets = [shingles(c, "word", n_gram) for c in captions]
    keys = [i for i, s in enumerate(sets) if s]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for a, i in enumerate(keys):
        m = MinHash(num_perm=num_perm)
        for token in sets[i]:
            m.update(token.encode())
        hashes.append(m)
        lsh.insert(a, m)
    return verified(sets, keys, (lsh.query(m) for m in hashes), threshold)


def datasketch_bulk(captions: list[str], threshold: float, num_perm: int, n_gram: int):
    import xxhash
    from datasketch import MinHash, MinHashLSH

    from curate.dedup.minhash import shingles

    sets = [shingles(c, "word", n_gram) for c in captions]
    keys = [i for i, s in enumerate(sets) if s]
    hashes = MinHash.bulk(([t.encode() for t in sets[i]] for i in keys), num_perm=num_perm,
                          hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for a, m in enumerate(hashes):
            session.insert(a, m, check_duplication=False)
    return verified(sets, keys, (lsh.query(m) for m in hashes), threshold)


def rensa_bands(threshold: float, num_perm: int) -> int:
    """The band count datasketch's default weighting (false positives and negatives alike) would pick,
    among those dividing num_perm (rensa's bands must)."""
    from datasketch.lsh import _false_negative_probability, _false_positive_probability

    def error(b: int) -> float:
        r = num_perm // b
        return _false_positive_probability(threshold, b, r) + _false_negative_probability(threshold, b, r)

    return min((b for b in range(1, num_perm + 1) if num_perm % b == 0), key=error)


def rensa_lsh(captions: list[str], threshold: float, num_perm: int, n_gram: int):
    from rensa import RMinHash, RMinHashLSH

    from curate.dedup.minhash import shingles

    sets = [shingles(c, "word", n_gram) for c in captions]
    keys = [i for i, s in enumerate(sets) if s]
    hashes = RMinHash.from_token_sets([sets[i] for i in keys], num_perm, 1)
    lsh = RMinHashLSH(threshold, num_perm, rensa_bands(threshold, num_perm))
    lsh.insert_many(hashes)
    return verified(sets, keys, lsh.query_all(hashes), threshold)


def bench_captions(n: int, threshold: float, num_perm: int, n_gram: int, rounds: int) -> dict:
    from curate.dedup.minhash import near_duplicate_captions

    captions = make_captions(n)
    sides = {"ours": lambda r: near_duplicate_captions(captions, threshold, num_perm, "word", n_gram),
             "datasketch_loop": lambda r: datasketch_loop(captions, threshold, num_perm, n_gram),
             "datasketch_bulk": lambda r: datasketch_bulk(captions, threshold, num_perm, n_gram)}
    skipped = {}
    try:
        import rensa  # noqa: F401

        sides["rensa"] = lambda r: rensa_lsh(captions, threshold, num_perm, n_gram)
    except ImportError:
        skipped["rensa"] = "not installed (it comes with the [test] extra: pip install rensa)"
    seconds, pairs = alternate(sides, rounds, prepare=lambda name, r: gc.collect())  # nobody collects for another
    baselines = [name for name in sides if name != "ours"]
    rates = {name: [n / s for s in seconds[name]] for name in sides}
    fastest = max(baselines, key=lambda name: statistics.median(rates[name]))
    result = {"captions": n, "rounds": rounds, "fastest_baseline": fastest, "skipped": skipped,
              **median_range("ratio", [o / f for o, f in zip(rates["ours"], rates[fastest])])}
    for name in baselines:
        result.update(median_range(f"ratio_vs_{name}", [o / b for o, b in zip(rates["ours"], rates[name])]))
    for name in sides:
        result.update(median_range(f"{name}_captions_per_s", rates[name], 1))
        result[f"{name}_s_each"] = [round(s, 2) for s in seconds[name]]
    groups = {name: components(n, found[-1]) for name, found in pairs.items()}
    # every side verifies by exact Jaccard, so every pair any side finds is real: recall against their union
    truth = components(n, [p for found in pairs.values() for p in found[-1]])
    by_group = {name: group_sets(side) for name, side in groups.items()}
    result["rows_in_duplicate_groups"] = sum(len(g) for g in by_group["ours"].values() if len(g) > 1)
    for name in baselines:
        result[f"agreement_{name}"] = round(sum(by_group["ours"][x] == by_group[name][y] for x, y in
                                                zip(groups["ours"], groups[name])) / n, 5)
    for name, side in groups.items():
        result[f"rows_grouped_as_union_{name}"] = round(sum(x == t for x, t in zip(side, truth)) / n, 5)
    return result


def bench_images(n: int, dim: int, eps: float, sample: int, cluster_size: int) -> dict:
    from curate.dedup.semdedup import near_duplicate_images

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
    parser.add_argument("--rounds", type=int, default=3, help="the caption sides take turns; medians count")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--cluster-size", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    captions = bench_captions(args.captions, args.threshold, args.num_perm, args.shingle_n, args.rounds)
    print(captions, file=sys.stderr)
    images = bench_images(args.images, args.dim, args.eps, args.sample, args.cluster_size) if args.images else None
    emit({**captions, "images": images}, args.out, "dedup")


if __name__ == "__main__":
    main()
