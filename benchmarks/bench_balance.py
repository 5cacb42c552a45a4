"""MetaCLIP balancing and DataComp's text-based filter: captions/s against 500k metadata entries.

    python benchmarks/bench_balance.py [--n 10000000] [--entries 500000] [--baseline-n 200] [--rounds 3]
        [--out benchmarks/results]

Data: N web-like captions of 3-14 words drawn with Zipf frequencies from a 300k-word vocabulary (lower case,
no punctuation, so both sides' text normalisations leave them as they are), and `--entries` metadata
entries in MetaCLIP's proportions (its 500k: about half single words, a fifth bigrams, the rest WordNet
names and Wikipedia titles): the 250k most frequent words of the vocabulary, then 200k bigrams and 50k runs
of 3-6 words drawn at random among the distinct ones in the first 200k captions, in random order.
Ours (`curate/tier/entries.py`, what the `balance` and `text_match` tier rules run): per chunk of 1M captions,
one Arrow hash join of the captions' words against the one-word entries and one of their word pairs against
the two-word entries, and one Aho-Corasick automaton over the longer space-padded entries run once over the
chunk joined into one string; then counts, the per-pair draws and the per-caption decision in numpy. Building
the lookups and the automaton is counted.
Baseline: MetaCLIP's `substr_matching` approach written out here (not copied): per caption, pad it with
spaces and test every space-padded entry with `entry in text`; count the entries with numpy; per caption,
keep it when `random.random() < t / count` for one of its entries. For text_match, the same loop stops at
the first entry found. That loop costs ~entries substring tests per caption, so it runs on a subsample of
`--baseline-n` captions, and its captions/s is taken as what it would do on N (its work per caption does
not depend on N). A second baseline, MetaCLIP's later `substr_matching_ahocorasick` approach (one
automaton, `iter` per caption in a Python loop), runs on min(N, `--automaton-n`) captions. The matched
(caption, entry) pairs of every side are compared on the baseline's subsample. Sides take turns per round;
figures are medians with their [min, max]. `ratio` = our balance captions/s over the entry loop's.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, emit, median_range  # noqa: E402
from curate.tier.entries import EntryMatcher, balance, entry_counts  # noqa: E402

log = logging.getLogger("bench_balance")
VOCAB = 300_000
GOAL = 200_000  # captions/s, this machine


def make_data(n: int, n_entries: int, seed: int = 0) -> tuple[pa.ChunkedArray, list[str]]:
    """Captions (Zipf words, 3-14 a caption) and entries (vocabulary unigrams + caption bigrams, shuffled)."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    lengths = rng.integers(3, 11, VOCAB)
    chars = letters[rng.integers(0, 26, lengths.sum())].tobytes().decode()
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    vocab = pa.array(list(dict.fromkeys(chars[a:b] for a, b in zip(bounds[:-1], bounds[1:]))))
    chunks = []
    for lo in range(0, n, 1 << 20):
        words = rng.integers(3, 15, min(n - lo, 1 << 20))
        ids = np.minimum(rng.zipf(1.3, words.sum()) - 1, len(vocab) - 1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(words)]).astype(np.int32))
        chunks.append(pc.binary_join(pa.ListArray.from_arrays(offsets, vocab.take(pa.array(ids))), " "))
    captions = pa.chunked_array(chunks)
    n_words, n_phrases = min(n_entries // 2, len(vocab)), n_entries // 10
    unigrams = vocab.slice(0, n_words).to_pylist()  # every caption word is one of the first ranks, mostly
    sample = [c.split() for c in captions.slice(0, min(n, 200_000)).to_pylist()]
    bigrams = list(dict.fromkeys(" ".join(c[i:i + 2]) for c in sample for i in range(len(c) - 1)))
    phrases = list(dict.fromkeys(" ".join(c[i:i + 3 + i % 4]) for c in sample for i in range(len(c) - 5)))
    pick = random.Random(seed)  # distinct n-grams at random, not the most frequent (like Wikipedia's titles)
    entries = (unigrams + pick.sample(bigrams, min(len(bigrams), n_entries - n_words - n_phrases))
               + pick.sample(phrases, min(len(phrases), n_phrases)))
    random.Random(seed).shuffle(entries)
    return captions, entries


def ours_balance(captions: pa.ChunkedArray, entries: list[str], keys: np.ndarray, t: int) -> int:
    rows, found = EntryMatcher(entries).match(captions)
    counts = entry_counts(rows, found, np.ones(len(captions), dtype=bool), len(entries))
    return int(balance(rows, found, counts, keys, t, 0, len(captions)).sum())


def ours_text_match(captions: pa.ChunkedArray, entries: list[str]) -> int:
    rows, _ = EntryMatcher(entries).match(captions)
    hit = np.zeros(len(captions), dtype=bool)
    hit[rows] = True
    return int(hit.sum())


def loop_matches(texts: list[str], spaced: list[str], first_only: bool = False) -> list[list[int]]:
    """MetaCLIP's substring matching: every space-padded entry tested against each space-padded caption."""
    found = []
    for text in texts:
        padded = f" {text} "
        ids = []
        for i, entry in enumerate(spaced):
            if entry in padded:
                ids.append(i)
                if first_only:
                    break
        found.append(ids)
    return found


def metaclip_balance(matched: list[list[int]], n_entries: int, t: int) -> int:
    """MetaCLIP's balancing after matching: counts with numpy, then a draw per (caption, entry) in Python."""
    counts = np.bincount(np.fromiter(itertools.chain.from_iterable(matched), np.int64), minlength=n_entries)
    prob = (t / np.maximum(counts, t)).tolist()
    rand = random.Random(0).random
    return sum(any(rand() < prob[e] for e in ids) for ids in matched)


def automaton_matches(texts: list[str], entries: list[str]) -> list[list[int]]:
    """MetaCLIP's later approach: one automaton, `iter` over each padded caption in a Python loop."""
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        automaton.add_word(f" {entry} ", i)
    automaton.make_automaton()
    return [sorted({i for _, i in automaton.iter(f" {text} ")}) for text in texts]


def pairs(matched: list[list[int]]) -> set[tuple[int, int]]:
    return {(row, e) for row, ids in enumerate(matched) for e in ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000, help="captions")
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--t", type=int, default=20_000, help="balancing threshold (MetaCLIP's for 400M)")
    parser.add_argument("--baseline-n", type=int, default=200, help="captions the entry loop runs on")
    parser.add_argument("--automaton-n", type=int, default=1_000_000, help="captions the per-caption automaton runs on")
    parser.add_argument("--rounds", type=int, default=3, help="the sides take turns; medians count")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    captions, entries = make_data(args.n, args.entries)
    keys = np.random.default_rng(1).integers(0, 2**63, len(captions), dtype=np.uint64)
    sub = captions.slice(0, args.baseline_n).to_pylist()
    auto_sub = captions.slice(0, min(args.n, args.automaton_n)).to_pylist()
    spaced = [f" {e} " for e in entries]
    log.info("data: %d captions, %d entries; baselines on %d and %d captions", len(captions), len(entries),
             len(sub), len(auto_sub))
    sides = {"balance": lambda r: ours_balance(captions, entries, keys, args.t),
             "text_match": lambda r: ours_text_match(captions, entries),
             "loop_balance": lambda r: metaclip_balance(loop_matches(sub, spaced), len(entries), args.t),
             "loop_text_match": lambda r: sum(map(bool, loop_matches(sub, spaced, first_only=True))),
             "automaton_balance": lambda r: metaclip_balance(automaton_matches(auto_sub, entries), len(entries),
                                                             args.t)}
    seconds, values = alternate(sides, args.rounds)
    sizes = {"balance": len(captions), "text_match": len(captions), "loop_balance": len(sub),
             "loop_text_match": len(sub), "automaton_balance": len(auto_sub)}
    rate = {k: [sizes[k] / s for s in v] for k, v in seconds.items()}
    ours_pairs = set(zip(*(a.tolist() for a in EntryMatcher(entries).match(captions.slice(0, len(sub))))))
    agree = {"loop": ours_pairs == pairs(loop_matches(sub, spaced)),
             "automaton": ours_pairs == pairs(automaton_matches(sub, entries))}
    per_round = {name: [a / b for a, b in zip(rate[ours], rate[base])] for name, ours, base in
                 (("ratio", "balance", "loop_balance"), ("ratio_text_match", "text_match", "loop_text_match"),
                  ("ratio_vs_per_caption_automaton", "balance", "automaton_balance"))}
    result = {"n": len(captions), "entries": len(entries), "t": args.t, "rounds": args.rounds,
              "baseline_n": len(sub), "automaton_n": len(auto_sub), "baseline_extrapolated": len(sub) < len(captions),
              "pairs_per_caption": round(len(ours_pairs) / max(len(sub), 1), 2), "pairs_agree": agree,
              "kept_by_balance": values["balance"][0], "kept_by_text_match": values["text_match"][0],
              **{k: v for side in rate for k, v in median_range(f"{side}_captions_per_s", rate[side], 1).items()},
              **{k: v for name in per_round for k, v in median_range(name, per_round[name], 3).items()},
              "goal_captions_per_s": GOAL}
    result["goal_met"] = min(result["balance_captions_per_s"], result["text_match_captions_per_s"]) >= GOAL
    emit(result, args.out, "balance")


if __name__ == "__main__":
    main()
