"""Typed subset rules (no expression strings) and their vectorised evaluation over a run's columns.

A subset is the intersection of its rules. Each rule passes or fails every row and names the reason
of a failure, so a dropped uid can always say which rule dropped it first. Besides thresholds on any
column, the rules include DataComp's baselines (language, caption length, image size, text- and
image-based filters) and MetaCLIP's balancing over metadata entries."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Callable, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.schema import CAPTION
from curate.tier.entries import EntryMatcher, balance, entry_counts, read_entries
from curate.tier.target_clusters import near_target_rows
from curate.tier.uids import uid_index

SUBSET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe as a file and directory name
RECIPE_DIR = Path(str(resources.files("curate") / "recipes"))  # configs/recipes links here (package data)


class TopFraction(BaseModel):
    """Keep rows whose `column` is in the top `fraction` of the whole scored pool (DataComp's way:
    the quantile is taken over every scored row, before any other rule)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["top_fraction"] = "top_fraction"
    column: str | None = Field(None, description="default: tier.score_column")
    fraction: float = Field(gt=0, le=1, description="0.2 keeps the top 20%")


class Threshold(BaseModel):
    """Keep rows with min <= column <= max (either bound optional)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["threshold"] = "threshold"
    column: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _a_bound(self) -> "Threshold":
        if self.min is None and self.max is None:
            raise ValueError(f"threshold on {self.column!r} needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"threshold on {self.column!r}: min {self.min} > max {self.max}")
        return self


class Equals(BaseModel):
    """Keep rows whose `column` equals `value` (e.g. caption_boilerplate: false)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["equals"] = "equals"
    column: str
    value: bool | int | str


class CaptionGroupBest(BaseModel):
    """Among rows whose captions are near-duplicates of each other (dedup's caption groups, `caption_dup_of`),
    keep the `keep` rows whose image matches the caption best by `column`: a caption that different pictures
    share most likely belongs to the one it describes best (alt text copied across a page, a caption on the
    wrong image, a name reused). Rows dedup kept rank before the copies it dropped; a caption no other row
    shares always passes."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["caption_group_best"] = "caption_group_best"
    column: str | None = Field(None, description="default: tier.score_column")
    keep: int = Field(1, ge=1, description="rows kept per caption group")


class GroundTruth(BaseModel):
    """Evaluation only: keep rows whose ground truth (a synth pool's `gt_noise`) is one of `keep`: the oracle
    subset a filter is measured against (`compare`'s `oracle:` cell). Refused on pools without ground truth;
    never a way to curate."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ground_truth"] = "ground_truth"
    keep: list[str] = Field(default_factory=lambda: ["clean"], min_length=1, description="gt_noise values kept")


class DedupKeep(BaseModel):
    """Keep the kept member of each duplicate group (dedup/dup.parquet's dup_keep)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dedup_keep"] = "dedup_keep"


class Language(BaseModel):
    """Keep rows whose language-ID column is one of `keep` (the score stage's caption_language: fastText's
    lid.176, as DataComp's English filter)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["language"] = "language"
    column: str = "caption_language"
    keep: list[str] = Field(default_factory=lambda: ["en"], min_length=1, description="ISO 639 codes")


class CaptionWords(BaseModel):
    """Keep captions of at least `min_words` words (split on whitespace) and `min_chars` characters
    (DataComp's basic filter: more than 1 word and 5 characters = min_words 2, min_chars 6)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["caption_words"] = "caption_words"
    min_words: int = Field(0, ge=0)
    min_chars: int = Field(0, ge=0)


class ImageSize(BaseModel):
    """Keep images whose shorter side is at least `min_side` px and whose long/short side ratio is at most
    `max_aspect` (the download's width and height; DataComp's basic filter: 200 px, 3)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image_size"] = "image_size"
    min_side: int = Field(0, ge=0)
    max_aspect: float | None = Field(None, ge=1)


class NearestClusters(BaseModel):
    """DataComp's image-based filter: k-means on the pool's stored image embeddings, keep the clusters
    nearest the target pairs' images (embedded by the run's first scorer, as the pool was)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["nearest_clusters"] = "nearest_clusters"
    target: Path = Field(description="a pairs folder (pairs.parquet with path); relative = inside the run")
    fraction: float | None = Field(None, gt=0, le=1, description="none: every cluster that is some target "
                                   "image's nearest (DataComp); else the clusters where target images are densest "
                                   "against the pool, until they hold this fraction of it")
    cluster_size: int = Field(128, ge=2, description="rows per cluster (DataComp: 100k clusters, 12.8M rows)")
    seed: int = 0


class TextMatch(BaseModel):
    """DataComp's text-based filter: keep captions that contain an entry of the file as whole words."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["text_match"] = "text_match"
    entries: Path = Field(description="one entry a line; relative = inside the run")


class Balance(BaseModel):
    """MetaCLIP's balancing: entries are counted over the scored pool (captions containing them); an entry
    seen `count` times keeps each of its pairs with probability min(1, t / count); a pair stays if any of its
    entries keeps it, and pairs that contain no entry are dropped. The same seed keeps the same pairs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["balance"] = "balance"
    entries: Path = Field(description="one entry a line (`curate metadata` writes one); relative = inside the run")
    t: int = Field(ge=1, description="entries seen at most t times are the tail and keep every pair")
    seed: int = 0


Rule = Annotated[Union[TopFraction, Threshold, Equals, DedupKeep, Language, CaptionWords, ImageSize,
                       NearestClusters, TextMatch, Balance, CaptionGroupBest, GroundTruth], Field(discriminator="kind")]
GROUND_TRUTH = "gt_noise"  # the synth pool's column a ground_truth rule reads


class SubsetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SUBSET_NAME)
    rules: list[Rule] = Field(default_factory=list)
    base: bool = Field(True, description="apply tier.base rules first")


class Recipe(BaseModel):
    """A named list of subsets: configs/recipes/<name>.yaml, used by `tier.recipes: [<name>]`."""

    model_config = ConfigDict(extra="forbid")
    subsets: list[SubsetConfig] = Field(min_length=1)


@functools.cache
def recipe_subsets(name: str) -> tuple[SubsetConfig, ...]:
    path = RECIPE_DIR / f"{name}.yaml"
    if not re.fullmatch(r"[a-z0-9_]+", name) or not path.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise ValueError(f"unknown recipe {name!r}; configs/recipes has {known}")
    return tuple(Recipe.model_validate(yaml.safe_load(path.read_text())).subsets)


def rule_columns(rule, score_column: str) -> list[str]:
    if isinstance(rule, TopFraction):
        return [rule.column or score_column]
    if isinstance(rule, CaptionGroupBest):
        return [rule.column or score_column, "caption_dup_of", "dup_keep"]
    if isinstance(rule, (Threshold, Equals, Language)):
        return [rule.column]
    if isinstance(rule, GroundTruth):
        return [GROUND_TRUTH]
    if isinstance(rule, CaptionWords):
        return ["caption_words", "caption_chars"]
    if isinstance(rule, ImageSize):
        return ["width", "height"]
    if isinstance(rule, NearestClusters):
        return ["image_embedding"]
    if isinstance(rule, (TextMatch, Balance)):
        return [CAPTION]
    return ["dup_keep", "dup_drop_reason"]


def rule_files(rule) -> list[Path]:
    """The files a rule reads besides the run's columns (as written in the config)."""
    if isinstance(rule, (TextMatch, Balance)):
        return [rule.entries]
    if isinstance(rule, NearestClusters):
        return [rule.target / "pairs.parquet"]
    if isinstance(rule, GroundTruth):
        return [Path("synth/pool.parquet")]
    return []


@dataclass
class RuleInputs:
    """What rules read. `columns`: numbers as float64 with NaN for null, embeddings as 2-D arrays (NaN rows),
    anything else as Arrow. `scored`: rows with status ok (quantiles and entry counts are over them).
    `uid_keys`: 64 bits of each uid (per-row random draws); `uids`: the uids themselves. `path`: where a
    rule's relative path is.
    `embed_pairs`: image embeddings of a pairs folder by the pool's scorer."""

    columns: dict
    scored: np.ndarray
    score_column: str | None = None
    uid_keys: np.ndarray | None = None
    path: Callable[[Path], Path] = Path
    embed_pairs: Callable[[Path], np.ndarray] | None = None
    uids: pa.ChunkedArray | None = None
    cache: dict = field(default_factory=dict)  # entry matches, shared by the rules that read one file

    def matches(self, entries: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(row, entry) pairs of every caption and the file's entries, and the number of entries."""
        path = self.path(entries)
        if path not in self.cache:
            found = read_entries(path)
            self.cache[path] = (*EntryMatcher(found).match(self.columns[CAPTION]), len(found))
        return self.cache[path]


def _fmt(x: float) -> str:
    return f"{x:g}"


def evaluate(rule, inputs: RuleInputs):
    """(passes, reason, threshold or None) for one rule; the reason is one string or an Arrow array.
    Nulls never pass."""
    columns, scored = inputs.columns, inputs.scored
    if isinstance(rule, TopFraction):
        col = rule.column or inputs.score_column
        values = columns[col]
        pool = values[scored & ~np.isnan(values)]
        cut = float(np.quantile(pool, 1 - rule.fraction)) if pool.size else np.inf
        with np.errstate(invalid="ignore"):
            return values >= cut, f"not_top_{_fmt(rule.fraction * 100)}pct_{col}", cut
    if isinstance(rule, Threshold):
        values = columns[rule.column]
        ok = ~np.isnan(values)
        with np.errstate(invalid="ignore"):
            if rule.min is not None:
                ok &= values >= rule.min
            if rule.max is not None:
                ok &= values <= rule.max
        bounds = "_".join(f"{k}_{_fmt(v)}" for k, v in (("min", rule.min), ("max", rule.max)) if v is not None)
        return ok, f"{rule.column}_outside_{bounds}", rule.min
    if isinstance(rule, Equals):
        values = columns[rule.column]
        arrow = isinstance(values, (pa.Array, pa.ChunkedArray))
        equal = _passes(pc.equal(values, rule.value)) if arrow else values == rule.value
        return equal, f"{rule.column}_not_{str(rule.value).lower()}", None
    if isinstance(rule, DedupKeep):
        return columns["dup_keep"], columns["dup_drop_reason"], None
    if isinstance(rule, CaptionGroupBest):
        column = rule.column or inputs.score_column
        key = ("caption_group_rank", column)  # the same for every subset
        if key not in inputs.cache:
            inputs.cache[key] = caption_group_rank(columns["caption_dup_of"], columns[column], columns["dup_keep"],
                                                   inputs.uids)
        rank = inputs.cache[key]
        return rank < rule.keep, f"not_top_{rule.keep}_{column}_for_its_caption", None
    if isinstance(rule, GroundTruth):
        return (_passes(pc.is_in(columns[GROUND_TRUTH], pa.array(rule.keep, pa.string()))),
                f"ground_truth_not_{'_'.join(rule.keep)}", None)
    return _evaluate_curation(rule, inputs)


def caption_group_rank(caption_of: pa.ChunkedArray, score: np.ndarray, kept: np.ndarray,
                       uids: pa.ChunkedArray) -> np.ndarray:
    """Each row's place in its caption group (0 = best): dedup-kept rows first, then by score, highest
    first; rows without a score rank last (a large number). A group is named by its head's row in `uids`
    (sorted), found by the uid's 16 bytes: no string hash of the pool."""
    group = np.arange(len(uids))
    named = np.flatnonzero(pc.is_valid(caption_of).to_numpy(zero_copy_only=False))
    if len(named):
        head = uid_index(caption_of.take(pa.array(named)), uids)
        group[named] = np.where(head.is_null().to_numpy(zero_copy_only=False), named,
                                head.fill_null(0).to_numpy(zero_copy_only=False))
    valid = ~np.isnan(score)
    order = np.lexsort((-np.where(valid, score, -np.inf), ~np.asarray(kept, bool), group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    place = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), np.int64)
    rank[order] = place
    return np.where(valid, rank, np.iinfo(np.int64).max)


def _either(first_fails: np.ndarray, first: str, second: str) -> pa.ChunkedArray:
    """A per-row reason: `first` where `first_fails`, else `second`."""
    codes = pa.array(np.where(first_fails, 0, 1).astype(np.int8))
    return pa.chunked_array([pa.DictionaryArray.from_arrays(codes, [first, second])])


def _passes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow boolean result as numpy, null as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _evaluate_curation(rule, inputs: RuleInputs):
    """The language, caption, image size, cluster and entry rules."""
    columns = inputs.columns
    if isinstance(rule, Language):
        return (_passes(pc.is_in(columns[rule.column], pa.array(rule.keep, pa.string()))),
                f"{rule.column}_not_{'_'.join(rule.keep)}", None)
    if isinstance(rule, CaptionWords):
        with np.errstate(invalid="ignore"):
            few_words = ~(columns["caption_words"] >= rule.min_words)
            few_chars = ~(columns["caption_chars"] >= rule.min_chars)
        return (~(few_words | few_chars), _either(few_words, f"caption_under_{rule.min_words}_words",
                                                  f"caption_under_{rule.min_chars}_chars"), None)
    if isinstance(rule, ImageSize):
        short, long = (f(columns["width"], columns["height"]) for f in (np.minimum, np.maximum))  # NaN stays NaN
        with np.errstate(invalid="ignore", divide="ignore"):
            small = ~(short >= max(rule.min_side, 1))
            wide = ~(long / short <= rule.max_aspect) if rule.max_aspect is not None else np.zeros(len(short), bool)
        return (~(small | wide), _either(small, f"image_side_under_{rule.min_side}px",
                                         f"image_aspect_over_{_fmt(rule.max_aspect or 0)}"), None)
    if isinstance(rule, NearestClusters):
        targets = inputs.embed_pairs(inputs.path(rule.target))
        keep = near_target_rows(columns["image_embedding"], targets, rule.cluster_size, rule.fraction, rule.seed)
        share = "" if rule.fraction is None else f"{_fmt(rule.fraction * 100)}pct_"
        return keep, f"not_in_{share}clusters_near_{inputs.path(rule.target).name}", None
    rows, matched, n_entries = inputs.matches(rule.entries)
    any_entry = np.zeros(len(inputs.scored), dtype=bool)
    any_entry[rows] = True
    if isinstance(rule, TextMatch):
        return any_entry, f"caption_not_in_{inputs.path(rule.entries).stem}", None
    counts = entry_counts(rows, matched, inputs.scored, n_entries)
    keep = balance(rows, matched, counts, inputs.uid_keys, rule.t, rule.seed, len(inputs.scored))
    return keep, _either(~any_entry, "balance_no_entry", f"balance_not_sampled_t{rule.t}"), None
