"""A pool's metadata entries, built the way MetaCLIP built its Wikipedia part, from the pool's own captions:
unigrams seen at least `min_count` times, bigrams seen as often whose pointwise mutual information is at
least `min_pmi`, plus class names from list files. Written as RUN/metadata/entries.txt (one entry a line),
with the class names alone in RUN/metadata/class_names.txt (DataComp's text-based filter reads those)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curate.tier.entries import EntryMatcher, entry_counts, normalise, read_entries, write_entries

log = logging.getLogger(__name__)

ENTRIES, CLASS_NAMES, COUNTS = "metadata/entries.txt", "metadata/class_names.txt", "metadata/counts.tsv"


class MetadataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_count: int = Field(5, ge=1, description="unigrams and bigrams seen fewer times in the captions are left out")
    min_pmi: float = Field(3.0, description="bigrams need log(p(a b) / (p(a) p(b))) >= this (natural log)")
    class_names: list[Path] = Field(default_factory=list, description="files of class names, one a line, "
                                    "added as entries (MetaCLIP adds WordNet's; DataComp's text filter, ImageNet's)")


def ngram_entries(captions: pa.Array | pa.ChunkedArray, min_count: int, min_pmi: float) -> list[str]:
    """Frequent unigrams, then collocated bigrams (consecutive words of one caption), each most frequent first."""
    words = pc.split_pattern(normalise(captions), " ")
    words = words.combine_chunks() if isinstance(words, pa.ChunkedArray) else words
    flat = words.flatten()  # an empty caption is one empty word, dropped below
    unigrams = pa.Table.from_struct_array(pc.value_counts(flat)).rename_columns(["entry", "n"])
    unigrams = unigrams.filter(pc.not_equal(unigrams["entry"], ""))
    n_words = float(pc.sum(unigrams["n"]).as_py() or 0)
    starts = np.setdiff1d(np.arange(max(len(flat) - 1, 0)), words.offsets.to_numpy()[1:] - 1)  # not a last word
    pairs = pc.binary_join_element_wise(flat.take(starts), flat.take(starts + 1), " ")
    bigrams = pa.Table.from_struct_array(pc.value_counts(pairs)).rename_columns(["entry", "n"])
    halves = pc.split_pattern(bigrams["entry"], " ")
    word_counts = unigrams["n"].to_numpy().astype(np.float64)
    first, second = (pc.index_in(pc.list_element(halves, k), unigrams["entry"]) for k in (0, 1))
    valid = pc.and_(first.is_valid(), second.is_valid()).to_numpy(zero_copy_only=False)
    expected = np.ones(bigrams.num_rows)  # c(a) c(b), for bigrams of two non-empty words
    expected[valid] = (word_counts[first.filter(valid).to_numpy()] * word_counts[second.filter(valid).to_numpy()])
    pmi = np.log(bigrams["n"].to_numpy() * n_words**2 / expected / max(len(starts), 1))  # log p(ab) / (p(a) p(b))
    bigrams = bigrams.filter(pa.array(valid & (pmi >= min_pmi)))
    kept = [t.filter(pc.greater_equal(t["n"], min_count)).sort_by([("n", "descending"), ("entry", "ascending")])
            for t in (unigrams, bigrams)]
    return kept[0]["entry"].to_pylist() + kept[1]["entry"].to_pylist()


def build_metadata(captions: pa.Array | pa.ChunkedArray, cfg: MetadataConfig, run_dir: Path) -> dict:
    """Write RUN/metadata/entries.txt, class_names.txt and counts.tsv (entry, captions that contain it: the
    counts MetaCLIP's balancing uses); returns the entries, their counts and the (row, entry) matches."""
    class_names = list(dict.fromkeys(n for path in cfg.class_names for n in read_entries(path)))
    entries = list(dict.fromkeys(ngram_entries(captions, cfg.min_count, cfg.min_pmi) + class_names))
    rows, matched = EntryMatcher(entries).match(captions)
    counts = entry_counts(rows, matched, np.ones(len(captions), dtype=bool), len(entries))
    write_entries(run_dir / ENTRIES, entries)
    write_entries(run_dir / CLASS_NAMES, class_names)
    (run_dir / COUNTS).write_text("".join(f"{e}\t{c}\n" for e, c in zip(entries, counts.tolist())), encoding="utf-8")
    log.info("metadata: %d entries (%d class names) from %d captions -> %s", len(entries), len(class_names),
             len(captions), run_dir / ENTRIES)
    return {"entries": entries, "counts": counts, "rows": rows, "matched": matched}


def head_tail(counts: np.ndarray, rows: np.ndarray, matched: np.ndarray, t: int, n_captions: int) -> dict:
    """The split MetaCLIP's balancing makes at `t`: head entries (count > t), tail entries, entries no caption
    contains, captions that contain no entry, and the balanced subset's expected size (a caption stays unless
    every entry it contains leaves it out)."""
    keep = np.minimum(1.0, t / np.maximum(counts[matched], 1))
    with np.errstate(divide="ignore"):
        log_left_out = np.bincount(rows, weights=np.log1p(-keep), minlength=n_captions)
    has_entry = np.bincount(rows, minlength=n_captions) > 0
    return {"captions": n_captions, "entries": len(counts), "t": t, "head_entries": int((counts > t).sum()),
            "tail_entries": int(((counts > 0) & (counts <= t)).sum()), "unmatched_entries": int((counts == 0).sum()),
            "captions_without_entry": int(n_captions - has_entry.sum()),
            "expected_balanced_captions": round(float((1 - np.exp(log_left_out))[has_entry].sum()), 1)}
