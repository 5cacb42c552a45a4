"""The tier stage: scores, heuristics and dedup marks -> named subsets as sorted uid lists.

Score once, select many: tiering reads columns the earlier stages wrote and never runs a model, so a
new threshold costs seconds. Every input uid is accounted for in every subset: in it, or dropped with
exactly one first reason (its row status, `holdout`, or the first rule it fails). Named recipes
(configs/recipes/<name>.yaml: DataComp's baselines, MetaCLIP's balancing) add ready-made subsets."""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.io import (atomic_write_bytes, atomic_write_json, atomic_write_parquet, file_fingerprint, fingerprint,
                       list_parts, markers_fingerprint, read_json)
from curate.schema import CAPTION, HOLDOUT, NOT_DOWNLOADED, NOT_SCORED, STATUS, UID, Status
from curate.score.score import ScoreConfig, ScoreStage
from curate.stage import RunContext, Step
from curate.tier.metadata import MetadataConfig, build_metadata
from curate.tier.tier_rules import (GROUND_TRUTH, CaptionGroupBest, DedupKeep, GroundTruth, NearestClusters, Rule,
                                    RuleInputs, SubsetConfig, TopFraction, evaluate, recipe_subsets, rule_columns,
                                    rule_files)
from curate.tier.uids import uid_halves, uid_index

log = logging.getLogger(__name__)


class TierError(ValueError):
    """A tier config that cannot run on this run directory; the message says what to change."""


class TierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_column: str | None = Field(None, description="column for top_fraction rules; default: the first score_*")
    base: list[Rule] = Field(default_factory=list, description="rules every subset applies first (dedup, basic filters)")
    standard_fractions: list[float] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0],
        description="the paper's tiers: subsets topNN = base rules + top NN% by score_column")
    subsets: list[SubsetConfig] = Field(default_factory=list, description="further named subsets")
    recipes: list[str] = Field(default_factory=list, description="named subset lists, configs/recipes/<name>.yaml "
                               "(datacomp_baselines, metaclip); a subset of `subsets` with a recipe subset's name "
                               "replaces it")
    metadata: MetadataConfig | None = Field(None, description="first build RUN/metadata/ (entries.txt, "
                                            "class_names.txt) from the pool's captions, as `curate metadata` does")
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="uids held out of every subset for evaluation")
    holdout_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "TierConfig":
        for f in self.standard_fractions:
            if not 0 < f <= 1:
                raise ValueError(f"standard_fractions: {f} is outside (0, 1]")
        names = [s.name for s in self.all_subsets()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"subset names must be unique; repeated: {repeated}")
        return self

    def all_subsets(self) -> list[SubsetConfig]:
        standard = [SubsetConfig(name=f"top{round(f * 100)}", rules=[TopFraction(fraction=f)])
                    for f in self.standard_fractions]
        own = {s.name: s for s in self.subsets}
        from_recipes = [own.get(s.name, s) for name in self.recipes for s in recipe_subsets(name)]
        replaced = {s.name for s in from_recipes}
        return standard + from_recipes + [s for s in self.subsets if s.name not in replaced]

    def rules_of(self, subset: SubsetConfig) -> list[Rule]:
        """A subset's rules in the order they apply: the base rules (unless base: false), then its own."""
        return [*(self.base if subset.base else []), *subset.rules]

    def all_rules(self) -> list[Rule]:
        """The base rules, then every subset's own rules."""
        return [*self.base, *(r for s in self.all_subsets() for r in s.rules)]


def _sources(run_dir: Path) -> list[tuple[Path, str | None]]:
    """Per input part, the latest stage output that holds it, and the status its missing rows get."""
    inputs = list_parts(run_dir / "download" / "_input")
    if not inputs:
        raise TierError(f"{run_dir}/download/_input holds no parts: run the download stage first")
    has_score = (run_dir / "score").is_dir()
    sources = []
    for inp in inputs:
        score, download = run_dir / "score" / inp.name, run_dir / "download" / inp.name
        if score.exists():
            sources.append((score, None))
        elif download.exists():
            sources.append((download, NOT_SCORED if has_score else None))
        else:
            sources.append((inp, NOT_DOWNLOADED))
    return sources


def read_pool(run_dir: Path, columns: list[str]) -> pa.Table:
    """uid, status and `columns` for every input row, in input order; a column a part lacks is null."""
    tables = []
    for path, missing_status in _sources(run_dir):
        names = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=[UID, STATUS] + [c for c in columns if c in names])
        status = t.column(STATUS)
        if missing_status == NOT_SCORED:
            t = t.set_column(1, STATUS, pc.if_else(pc.fill_null(pc.equal(status, Status.OK), False), NOT_SCORED, status))
        elif missing_status == NOT_DOWNLOADED:  # input rows: null status = was still to download
            t = t.set_column(1, STATUS, pc.fill_null(status, NOT_DOWNLOADED))
        for c in columns:
            if c not in names:
                t = t.append_column(c, pa.nulls(t.num_rows))
        tables.append(t.select([UID, STATUS, *columns]))
    return pa.concat_tables(tables, promote_options="permissive")


def available_columns(run_dir: Path) -> list[str]:
    names: set[str] = set()
    for path, _ in _sources(run_dir):
        names |= set(pq.read_schema(path).names)
    return sorted(names)


def _join_dedup(run_dir: Path, uids: pa.ChunkedArray, extra: list[str]) -> dict[str, np.ndarray]:
    """dup_keep and dup_drop_reason (for `dedup_keep`) and the `extra` dup.parquet columns (e.g.
    caption_dup_count), in the order of `uids`."""
    path = run_dir / "dedup" / "dup.parquet"
    if not path.exists():
        raise TierError(f"dedup_keep and the dedup columns need {path}: add dedup to the run's stages")
    rows = uid_index(uids, pq.read_table(path, columns=[UID]).column(UID))  # first occurrence of each uid
    dup = pq.read_table(path, columns=["dup_keep", "dup_reason", *extra])
    keep = dup.column("dup_keep").take(rows)
    reason = pc.binary_join_element_wise(pa.scalar("duplicate_"), dup.column("dup_reason").take(rows), "")
    return {"dup_keep": pc.fill_null(keep, False).to_numpy(zero_copy_only=False),
            "dup_drop_reason": pc.fill_null(reason, "not_deduplicated"),
            **{c: _as_numpy(dup.column(c).take(rows)) for c in extra}}


def _join_ground_truth(run_dir: Path, uids: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """gt_noise of the synth pool, in the order of `uids` (rows the pool lacks: null, so they never pass)."""
    pool = pq.read_table(_ground_truth_path(run_dir), columns=[UID, GROUND_TRUTH])
    return {GROUND_TRUTH: pool.column(GROUND_TRUTH).take(uid_index(uids, pool.column(UID)))}


def _ground_truth_path(run_dir: Path) -> Path:
    """The synth pool with ground truth, or a TierError: only synthetic pools can have an oracle."""
    path = run_dir / "synth" / "pool.parquet"
    if not path.exists() or GROUND_TRUTH not in pq.read_schema(path).names:
        raise TierError(f"a ground_truth rule (an evaluation-only oracle) reads {GROUND_TRUTH} from {path}, and "
                        "this run has no such pool: only pools made by the synth stage carry ground truth")
    return path


def evaluation_only(cfg: TierConfig) -> list[str]:
    """Subsets that read ground truth: oracles for measuring filters, not curated data."""
    return [s.name for s in cfg.all_subsets() if any(isinstance(r, GroundTruth) for r in cfg.rules_of(s))]


def _as_numpy(column: pa.ChunkedArray) -> np.ndarray | pa.ChunkedArray:
    """Numbers as float64 with NaN for null; fixed-size lists (embeddings) as a 2-D float array with NaN rows
    for null; anything else (strings, booleans) stays Arrow."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_null(column.type):
        return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()
    if pa.types.is_fixed_size_list(column.type):
        lists = column.combine_chunks()
        size = column.type.list_size
        flat = lists.values.slice(lists.offset * size, len(lists) * size).to_numpy(zero_copy_only=False)
        rows = flat.reshape(len(lists), size).astype(np.result_type(flat.dtype, np.float16))
        rows[lists.is_null().to_numpy(zero_copy_only=False)] = np.nan
        return rows
    return column


def holdout_mask(uids: pa.ChunkedArray, fraction: float, seed: int) -> np.ndarray:
    """A fixed pseudo-random `fraction` of uids, from the uid's own bits mixed with the seed."""
    if fraction <= 0:
        return np.zeros(len(uids), dtype=bool)
    x = uid_halves(uids)[:, 0] ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def uids_to_npy(sorted_uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """DataComp's subset format: a sorted array of (u8, u8), the two 16-hex halves of each uid.
    Sorted hex strings of one length are in numeric order, so the input order is kept."""
    halves = uid_halves(sorted_uids)
    out = np.empty(len(halves), dtype=np.dtype("u8,u8"))
    out["f0"], out["f1"] = halves[:, 0], halves[:, 1]
    return out


def npy_to_uids(array: np.ndarray) -> list[str]:
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(array["f0"], array["f1"])]


class _Reasons:
    """Per-row first drop reason as small integer codes (0 = still in the subset)."""

    def __init__(self, n: int):
        self.names: list[str] = [""]
        self.codes = np.zeros(n, dtype=np.int16)

    def _code(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def drop(self, fails: np.ndarray, reason: str | pa.ChunkedArray) -> None:
        """Rows that fail and are still in get `reason` (one string, or an Arrow string per row)."""
        rows = np.flatnonzero(fails & (self.codes == 0))
        if isinstance(reason, str):
            self.codes[rows] = self._code(reason)
            return
        encoded = pc.dictionary_encode(reason.take(pa.array(rows))).combine_chunks()
        codes = np.array([self._code(v) for v in encoded.dictionary.to_pylist()] or [0], dtype=np.int16)
        self.codes[rows] = codes[encoded.indices.to_numpy(zero_copy_only=False)]

    def column(self) -> pa.Array:
        indices = pa.array(np.maximum(self.codes - 1, 0), mask=self.codes == 0)
        return pa.DictionaryArray.from_arrays(indices, pa.array(self.names[1:], pa.string()))

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.codes, minlength=len(self.names))
        return {self.names[i]: int(c) for i, c in enumerate(found) if i and c}


def _identity(cfg: TierConfig, run_dir: Path) -> str:
    markers = [*(run_dir / "score" / "_done").glob("*.json"), *(run_dir / "download" / "_done").glob("*.json")]
    dedup = run_dir / "dedup" / "_done.json"
    files = [(str(p), file_fingerprint(p) if p.is_file() else None) for p in _files_read(cfg, run_dir)]
    return fingerprint(cfg.model_dump(mode="json"), [s.model_dump(mode="json") for s in cfg.all_subsets()],
                       markers_fingerprint(markers), read_json(dedup) if dedup.exists() else None, files)


def _in_run(run_dir: Path):
    """A rule's path: relative = inside the run directory (as score checkpoints)."""
    return lambda path: path if Path(path).is_absolute() else run_dir / path


def _files_read(cfg: TierConfig, run_dir: Path) -> list[Path]:
    """Every file the rules and the metadata build read besides the stages' outputs."""
    rules = cfg.all_rules()
    found = [_in_run(run_dir)(f) for rule in rules for f in rule_files(rule)]
    return sorted(set(found + (list(cfg.metadata.class_names) if cfg.metadata else [])))


def ok_captions(run_dir: Path) -> pa.ChunkedArray:
    """The captions of the pool's rows with status ok (downloaded, and scored when the run scores)."""
    pool = read_pool(Path(run_dir), [CAPTION])
    return pool.filter(pc.fill_null(pc.equal(pool.column(STATUS), Status.OK), False)).column(CAPTION)


def _target_embedder(score: ScoreConfig | None, run_dir: Path):
    """Image embeddings of a target pairs folder by the run's first scorer, cached in tier/targets/ by the
    scorer's identity and the folder's pairs.parquet."""
    def embed(pairs_dir: Path) -> np.ndarray:
        stage = ScoreStage(score, run_dir / "download", run_dir)
        table = pairs_dir / "pairs.parquet"
        key = fingerprint(stage.config_fingerprint(), str(pairs_dir.resolve()), file_fingerprint(table))
        cache = run_dir / "tier" / "targets" / f"{key}.npy"
        if cache.exists():
            return np.load(cache)
        paths = [pairs_dir / p for p in pq.read_table(table, columns=["path"]).column("path").to_pylist()]
        log.info("tier: embedding %d target images of %s (scorer %r)", len(paths), pairs_dir, score.scorers[0].name)
        stage.setup()
        vectors = stage.embed_image_files(paths)
        buf = io.BytesIO()
        np.save(buf, vectors)
        atomic_write_bytes(cache, buf.getvalue())
        return vectors
    return embed


def _dedup_columns(run_dir: Path) -> list[str]:
    """Columns of dedup/dup.parquet a rule may name (caption_dup_count, ...), besides the dup_* marks."""
    path = run_dir / "dedup" / "dup.parquet"
    return [c for c in pq.read_schema(path).names if c != UID] if path.exists() else []


def _columns_needed(cfg: TierConfig, run_dir: Path, score: ScoreConfig | None) -> tuple[str, list[str], list[str]]:
    """The score column, and the columns the rules read from the stages' parts and from dup.parquet; checks
    the files the rules read."""
    names, dedup_names = available_columns(run_dir), _dedup_columns(run_dir)
    score_column = cfg.score_column or next((c for c in names if c.startswith("score_")), None)
    rules = cfg.all_rules()
    if any(isinstance(r, GroundTruth) for r in rules):
        _ground_truth_path(run_dir)
    missing = [str(p) for p in _files_read(cfg, run_dir) if not p.is_file()]
    if missing:
        raise TierError(f"tier rules read {missing}, which do not exist (relative paths are inside the run; "
                        "`curate metadata --out RUN` or tier.metadata writes metadata/entries.txt and class_names.txt)")
    needed: list[str] = []
    from_dedup: list[str] = []
    for rule in rules:
        if isinstance(rule, (TopFraction, CaptionGroupBest)) and (rule.column or score_column) is None:
            raise TierError(f"a {rule.kind} rule needs a score column, and this run has none: run the score "
                            "stage, or set tier.standard_fractions: [] and give subsets without top_fraction")
        if isinstance(rule, NearestClusters) and score is None:
            raise TierError("a nearest_clusters rule embeds its target images with the run's first scorer: "
                            "run the tier stage with the run's config (its score section)")
        if isinstance(rule, GroundTruth):
            continue
        for col in rule_columns(rule, score_column):
            if col.startswith("dup_"):
                continue
            if col in names:
                needed += [col] if col not in needed else []
            elif col in dedup_names:
                from_dedup += [col] if col not in from_dedup else []
            else:
                raise TierError(f"tier rule column {col!r} is not in this run's columns: {names + dedup_names}")
    return score_column, needed, from_dedup


def run_tier(cfg: TierConfig, run_dir: Path, score: ScoreConfig | None = None) -> dict:
    """Write tier/subsets/<name>.parquet|.npy, thresholds.json, counts.json and accounting.parquet. `score`
    (the run's score config) is needed by nearest_clusters rules, which embed their target with its scorer."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "tier"
    identity = _identity(cfg, run_dir)
    done = out_dir / "_done.json"
    if done.exists() and read_json(done).get("identity") == identity and (out_dir / "counts.json").exists():
        log.info("tier: %s is up to date", out_dir)
        return read_json(out_dir / "counts.json")
    start = time.time()
    if cfg.metadata is not None:
        build_metadata(ok_captions(run_dir), cfg.metadata, run_dir)
        identity = _identity(cfg, run_dir)  # with the files just written, as the next run will see them
    score_column, needed, from_dedup = _columns_needed(cfg, run_dir, score)
    pool = read_pool(run_dir, needed)
    input_rows = pool.num_rows
    pool = pool.filter(pc.fill_null(pc.not_equal(pool.column(STATUS), Status.DUPLICATE_UID), True))
    pool = pool.take(pc.sort_indices(pool.column(UID)))  # sorted once: every subset comes out sorted
    uids = pool.column(UID)
    columns = {c: _as_numpy(pool.column(c)) for c in needed}
    rules = cfg.all_rules()
    if from_dedup or any(isinstance(r, DedupKeep) for r in rules):  # caption_group_best reads caption_dup_of
        columns.update(_join_dedup(run_dir, uids, from_dedup))
    if any(isinstance(r, GroundTruth) for r in rules):
        columns.update(_join_ground_truth(run_dir, uids))
    status = pc.fill_null(pool.column(STATUS), NOT_DOWNLOADED)
    scored = pc.equal(status, Status.OK).to_numpy(zero_copy_only=False)
    holdout = holdout_mask(uids, cfg.holdout_fraction, cfg.holdout_seed)
    inputs = RuleInputs(columns, scored, score_column, uid_halves(uids)[:, 0], _in_run(run_dir),
                        _target_embedder(score, run_dir), uids=uids)

    subsets_dir = out_dir / "subsets"
    subsets_dir.mkdir(parents=True, exist_ok=True)
    accounting = {UID: uids}
    counts: dict = {"input_rows": input_rows, "uids": pool.num_rows, "duplicate_uid_rows": input_rows - pool.num_rows,
                    "holdout": int(holdout.sum()), "subsets": {}, "drops": {}, "evaluation_only": evaluation_only(cfg)}
    thresholds: dict[str, dict[str, float]] = {}
    written = set()
    for subset in cfg.all_subsets():
        reasons = _Reasons(pool.num_rows)
        reasons.drop(~scored, status)
        reasons.drop(holdout, HOLDOUT)
        thresholds[subset.name] = {}
        for rule in cfg.rules_of(subset):
            passes, reason, cut = evaluate(rule, inputs)
            reasons.drop(~passes, reason)
            if cut is not None:
                thresholds[subset.name][rule_columns(rule, score_column)[0]] = cut
        kept_uids = uids.filter(pa.array(reasons.codes == 0)).combine_chunks()
        if len(kept_uids) == 0:
            log.warning("tier: subset %r selects nothing; writing it empty (drops: %s)", subset.name, reasons.counts())
        written |= write_subset(subsets_dir, subset.name, kept_uids)
        accounting[f"drop_{subset.name}"] = reasons.column()
        counts["subsets"][subset.name] = len(kept_uids)
        counts["drops"][subset.name] = reasons.counts()
    for stale in subsets_dir.iterdir():
        if stale.name not in written and stale.suffix in (".parquet", ".npy"):
            stale.unlink()
    if cfg.holdout_fraction > 0:
        atomic_write_parquet(out_dir / "holdout.parquet", pa.table({UID: uids.filter(pa.array(holdout)).combine_chunks()}))
    atomic_write_parquet(out_dir / "accounting.parquet", pa.table(accounting))
    atomic_write_json(out_dir / "thresholds.json", thresholds)
    counts["wall_s"] = round(time.time() - start, 2)
    atomic_write_json(out_dir / "counts.json", counts)
    atomic_write_json(done, {"identity": identity})
    log.info("tier: %s", counts["subsets"])
    return counts


def write_subset(subsets_dir: Path, name: str, sorted_uids: pa.Array) -> set[str]:
    """`<name>.parquet` (a uid column) and DataComp's `<name>.npy`; returns the file names."""
    atomic_write_parquet(subsets_dir / f"{name}.parquet", pa.table({UID: sorted_uids}))
    buf = io.BytesIO()
    np.save(buf, uids_to_npy(sorted_uids))
    atomic_write_bytes(subsets_dir / f"{name}.npy", buf.getvalue())
    return {f"{name}.parquet", f"{name}.npy"}


class TierStep(Step):
    """`tier`: one global step over every input row."""

    name = directory = "tier"
    config = TierConfig
    reads = ("download", "download/_input/part-*.parquet")
    command = "turn scores, filters and dedup marks into named subsets as sorted uid lists (OUT/tier)"
    identity = "the tier config, the files its rules read and the download, score and dedup markers (tier/_done.json)"

    def run(self, ctx: RunContext) -> dict:
        return run_tier(ctx.cfg.tier, ctx.run_dir, ctx.cfg.score)

    def done(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory / "counts.json").exists()

