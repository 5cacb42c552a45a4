"""`curate compare`: train a grid of subsets x strategies x models x seeds on a run's tier shards, in two
regimes (every subset gets the same samples seen; or each subset is seen once), evaluate every cell on
the config's eval sets, and tabulate results with 95% intervals over seeds.

DIR/results.csv has one row per cell, DIR/summary.csv one row per (subset, strategy, model, regime, budget),
and with a `reference:` cell DIR/versus_reference.csv each cell's paired difference from it (pipelines/versus.py)
and, with an `oracle:` cell too, the share of the oracle's gain over the reference that each cell recovers.
A grid's `samples_seen` list sweeps the equal_samples budget: where the best subset moves with compute.
A cell's row lives in DIR/train/<cell>/result.json with the cell's fingerprint: a hash of everything that
decides its result (the subset's shards, the train config, the eval sets). A finished cell whose
fingerprint still holds is never trained again; a changed cell runs again (its checkpoint is kept when
only the eval sets changed); a failed one (any exception: a subset smaller than one batch, a missing eval
set, ...) is recorded with its error and retried on the next run, and the other cells still run."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.interval import t_interval
from curate.io import atomic_write_bytes, atomic_write_json, fingerprint, read_json
from curate.models.train_config import ClipStrategy, Strategy, TrainConfig
from pipelines.config import PipelineConfig
from pipelines.run import run_pipeline
from pipelines.versus import VERSUS, Reference, versus_reference

log = logging.getLogger(__name__)

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
GRID_KEYS = ("model", "seed", "samples_seen", "strategy")  # set per cell, not in `train`
LEADING = ["subset", "subset_size", "strategy", "model", "seed", "regime", "budget", "samples_seen", "samples_skipped",
           "wall_s", "samples_per_s", "status", "error", "fingerprint"]
GROUP = ["subset", "subset_size", "strategy", "model", "regime", "budget", "samples_seen", "seeds_ok", "seeds_failed"]
SUMMARIZED_LEAVES = ("top1", "top5", "r1", "r5", "r10")
TRAINING_MARKER = "training.fingerprint"  # in a cell's folder: the training_fingerprint its checkpoint is of


class EvalSet(BaseModel):
    """A pairs directory (pairs.parquet: path, caption, class columns), as `curate eval` takes it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME, description="prefix of its result columns")
    pairs: Path
    class_columns: list[str] = Field(default_factory=list)
    where: dict[str, str] = Field(default_factory=dict, description="rows where column == value, e.g. vendor")


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subsets: list[str] = Field(min_length=1, description="folders of DIR/shards/ (tier subsets)")
    strategies: dict[str, Strategy] = Field(default_factory=lambda: {"clip": ClipStrategy()},
                                            description="label -> strategy config")
    models: list[str] = Field(default_factory=lambda: ["tiny-vit-32"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    regimes: list[Literal["equal_samples", "one_pass"]] = Field(
        default_factory=lambda: ["equal_samples", "one_pass"], min_length=1)
    samples_seen: list[int] | None = Field(None, min_length=1, description="equal_samples budgets to sweep "
                                           "(each a cell of its own); none = the top-level samples_seen")

    @field_validator("subsets", "strategies")
    @classmethod
    def _names(cls, value):
        bad = [n for n in value if not re.match(NAME, n)]
        if bad:
            raise ValueError(f"{bad}: names are letters, digits, '_', '.', '-'")
        return value


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "compare"
    pipeline: PipelineConfig | None = Field(None, description="run first into DIR (resumes); none = DIR/shards exists")
    grids: dict[str, Grid] = Field(min_length=1, description="named grids; their cells are run in order, once each")
    samples_seen: int = Field(ge=1, description="the equal_samples regime's budget, the same for every subset")
    train: dict[str, Any] = Field(default_factory=dict, description="train config keys shared by every cell")
    eval_sets: list[EvalSet] = Field(min_length=1)
    reference: Reference | None = Field(None, description="measure every cell against this one, paired by "
                                        "seed -> DIR/versus_reference.csv")
    oracle: Reference | None = Field(None, description="an evaluation-only cell (e.g. a tier of the pool's clean "
                                     "rows by ground truth): versus_reference.csv says what share of its gain "
                                     "over the reference each cell recovers")

    @field_validator("train")
    @classmethod
    def _train_keys(cls, train: dict) -> dict:
        owned = [k for k in GRID_KEYS if k in train] + [f"data.{k}" for k in ("pairs", "shards", "uids")
                                                         if k in train.get("data", {})]
        if owned:
            raise ValueError(f"train: {owned} are set per cell by the grid; remove them")
        shared_train(train)
        return train

    @property
    def batch_size(self) -> int:
        return self.train.get("batch_size", TrainConfig.model_fields["batch_size"].default)

    @model_validator(mode="after")
    def _consistent(self) -> "CompareConfig":
        budgets = {self.samples_seen, *(b for grid in self.grids.values() for b in grid.samples_seen or [])}
        for budget in sorted(budgets):
            if budget < 1 or budget % self.batch_size:
                raise ValueError(f"samples_seen ({budget}) must be a positive multiple of train.batch_size "
                                 f"({self.batch_size})")
        names = [e.name for e in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_sets names must be unique: {names}")
        labels: dict[str, dict] = {}
        for grid in self.grids.values():
            for label, strategy in grid.strategies.items():
                if labels.setdefault(label, strategy.model_dump()) != strategy.model_dump():
                    raise ValueError(f"strategy label {label!r} names two different configs; give each its own label")
        subsets = {s for grid in self.grids.values() for s in grid.subsets}
        for role, cell in (("reference", self.reference), ("oracle", self.oracle)):
            if cell and (cell.strategy not in labels or cell.subset not in subsets):
                raise ValueError(f"{role} {cell.model_dump()} is not a cell of the grids "
                                 f"(subsets {sorted(subsets)}, strategies {sorted(labels)})")
        if self.oracle and not self.reference:
            raise ValueError("oracle: the oracle's gain is measured over the reference cell; set reference too")
        return self


def shared_train(train: dict) -> TrainConfig:
    """The shared train keys as a TrainConfig, defaults filled in (the per-cell keys are placeholders)."""
    batch = train.get("batch_size", TrainConfig.model_fields["batch_size"].default)
    data = {**train.get("data", {}), "shards": "."}
    return TrainConfig.model_validate({**train, "samples_seen": batch, "data": data})


@dataclass(frozen=True)
class Cell:
    subset: str
    strategy: str
    model: str
    seed: int
    regime: str
    budget: int | None = None  # equal_samples: samples seen; one_pass: none (each subset once)
    budget_in_id: bool = False  # only budgets other than the top-level samples_seen name their folder

    @property
    def id(self) -> str:
        name = f"{self.subset}__{self.strategy}__{self.model}__s{self.seed}__{self.regime}"
        return f"{name}__n{self.budget}" if self.budget_in_id else name


def cells(cfg: CompareConfig) -> list[tuple[Cell, dict]]:
    """Every (cell, strategy config) of every grid, in order, each cell once."""
    out: dict[str, tuple[Cell, dict]] = {}
    for grid in cfg.grids.values():
        for subset in grid.subsets:
            for label, strategy in grid.strategies.items():
                for model in grid.models:
                    for seed in grid.seeds:
                        for regime in grid.regimes:
                            budgets = (grid.samples_seen or [cfg.samples_seen]) if regime == "equal_samples" else [None]
                            for budget in budgets:
                                cell = Cell(subset, label, model, seed, regime, budget,
                                            budget not in (None, cfg.samples_seen))
                                out.setdefault(cell.id, (cell, strategy.model_dump()))
    return list(out.values())


def subset_size(shards: Path) -> int:
    """Samples of a shard folder: its manifest.json, or a count of its tars' samples."""
    from train.data import resolve_shards, shard_records

    manifest = shards / "manifest.json"
    if manifest.exists():
        return int(json.loads(manifest.read_text())["samples"])
    return len(shard_records(resolve_shards(shards)))


def file_digest(path: Path) -> str | None:
    """sha256 of a (small) file's bytes; None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def subset_identity(shards: Path) -> str | None:
    """What a subset folder holds: its manifest.json (every tar's sha256), else its tars' names, sizes and
    modification times; None when it holds neither."""
    manifest = file_digest(shards / "manifest.json")
    tars = sorted(shards.glob("*.tar"))
    if manifest or not tars:
        return manifest
    return fingerprint([(t.name, t.stat().st_size, t.stat().st_mtime_ns) for t in tars])


def training_fingerprint(cfg: CompareConfig, cell: Cell, strategy: dict, out_dir: Path) -> str:
    """Everything that decides a cell's checkpoint: the subset's shards, the shared train keys, model, seed,
    strategy and samples (one_pass: implied by the subset and the batch size)."""
    shared = shared_train(cfg.train).model_dump(mode="json", exclude=set(GRID_KEYS))
    del shared["data"]["shards"]
    return fingerprint(subset_identity(out_dir / "shards" / cell.subset), shared, cell.model, cell.seed,
                       cell.regime, cell.budget, strategy)


def trained_otherwise(cell_dir: Path, training: str) -> bool:
    """Whether a cell folder holds training of another subset or train config (or of unknown origin)."""
    marker = cell_dir / TRAINING_MARKER
    return cell_dir.exists() and not (marker.exists() and marker.read_text() == training)


def eval_identity(ev: EvalSet) -> dict:
    """An eval set by what decides its metrics: name, rows (`where`), class columns and pairs.parquet."""
    return {"name": ev.name, "where": ev.where, "class_columns": ev.class_columns,
            "pairs": file_digest(ev.pairs / "pairs.parquet")}


def flatten(metrics: dict, prefix: str) -> dict[str, Any]:
    """{"retrieval": {"i2t": {"r1": x}}} -> {"<prefix>/retrieval/i2t/r1": x}."""
    out = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def run_cell(cfg: CompareConfig, cell: Cell, strategy: dict, out_dir: Path) -> dict:
    """Train and evaluate one cell; any exception becomes a `failed` row with its error."""
    from train.evaluate import evaluate
    from train.train import train

    row: dict[str, Any] = {**{k: None for k in LEADING}, "subset": cell.subset, "strategy": cell.strategy,
                           "model": cell.model, "seed": cell.seed, "regime": cell.regime, "budget": cell.budget, "status": "failed",
                           "error": ""}
    try:
        shards = out_dir / "shards" / cell.subset
        size = row["subset_size"] = subset_size(shards)
        batch = cfg.batch_size
        if size < batch:
            raise ValueError(f"subset {cell.subset} has {size} samples, fewer than one batch ({batch}): "
                             f"lower train.batch_size or leave the subset out")
        for ev in cfg.eval_sets:
            if not (ev.pairs / "pairs.parquet").exists():
                raise FileNotFoundError(f"eval set {ev.name}: {ev.pairs}/pairs.parquet not found")
        samples = cell.budget if cell.regime == "equal_samples" else size // batch * batch
        train_cfg = TrainConfig.model_validate({
            **cfg.train, "model": cell.model, "seed": cell.seed, "samples_seen": samples, "strategy": strategy,
            "data": {**cfg.train.get("data", {}), "shards": str(shards)}})
        summary = train(train_cfg, out_dir / "train" / cell.id)
        row.update(samples_seen=summary["samples_seen"], samples_skipped=summary["samples_skipped"],
                   wall_s=summary["wall_s"], samples_per_s=summary["samples_per_s"])
        for ev in cfg.eval_sets:
            metrics = evaluate(Path(summary["checkpoint"]), ev.pairs, ev.class_columns, ev.where)
            row.update(flatten(metrics, ev.name))
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - a crashing cell is a result; the grid goes on
        log.exception("cell %s failed", cell.id)
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def write_csv(path: Path, rows: list[dict], leading: list[str]) -> None:
    columns = leading + sorted({k for r in rows for k in r} - set(leading))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def summarized(metric: str) -> bool:
    return metric in ("wall_s", "samples_per_s") or metric.rsplit("/", 1)[-1] in SUMMARIZED_LEAVES


def summarize(rows: list[dict]) -> list[dict]:
    """Per (subset, strategy, model, regime, budget): seeds ok and failed, and mean and 95% interval of the
    speed and of every eval metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["subset"], r["strategy"], r["model"], r["regime"], r.get("budget")), []).append(r)
    out = []
    for (subset, strategy, model, regime, budget), members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"subset": subset, "subset_size": members[0]["subset_size"], "strategy": strategy, "model": model,
                 "regime": regime, "budget": budget, "samples_seen": ok[0]["samples_seen"] if ok else None,
                 "seeds_ok": len(ok),
                 "seeds_failed": len(members) - len(ok)}
        metrics = [k for k in sorted({k for r in ok for k in r}) if summarized(k)]
        for metric in metrics:
            values = [float(r[metric]) for r in ok if r.get(metric) is not None]
            if values:
                mean, half = t_interval(values)
                entry[f"{metric}/mean"] = round(mean, 5)
                entry[f"{metric}/ci95"] = None if half is None else round(half, 5)
        out.append(entry)
    return out


def compare(cfg: CompareConfig, out_dir: Path) -> list[dict]:
    """Run the pipeline (if any), then every cell not finished with its current fingerprint; returns the
    result rows."""
    out_dir = Path(out_dir).resolve()  # the same cells whether DIR is given relative or absolute
    if cfg.pipeline is not None:
        run_pipeline(cfg.pipeline, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_bytes(out_dir / "compare.resolved.yaml", resolved.encode())
    grid = cells(cfg)
    evals = [eval_identity(ev) for ev in cfg.eval_sets]
    rows: list[dict] = []
    for i, (cell, strategy) in enumerate(grid):
        cell_dir = out_dir / "train" / cell.id
        training = training_fingerprint(cfg, cell, strategy, out_dir)
        if trained_otherwise(cell_dir, training):
            log.info("cell %s: its subset or train config changed; training it afresh", cell.id)
            shutil.rmtree(cell_dir)
        cell_fingerprint = fingerprint(training, evals)
        row = read_json(cell_dir / "result.json") if (cell_dir / "result.json").exists() else None
        if row is None or row["status"] != "ok" or row.get("fingerprint") != cell_fingerprint:
            log.info("cell %d/%d: %s", i + 1, len(grid), cell.id)
            start = time.time()
            atomic_write_bytes(cell_dir / TRAINING_MARKER, training.encode())
            row = {**run_cell(cfg, cell, strategy, out_dir), "fingerprint": cell_fingerprint}
            atomic_write_json(cell_dir / "result.json", row)
            log.info("cell %s: %s in %.0fs", cell.id, row["status"], time.time() - start)
        rows.append({**row, "budget": cell.budget})  # rows written before budgets existed lack it
        write_csv(out_dir / "results.csv", rows, LEADING)
    write_csv(out_dir / "summary.csv", summarize(rows), GROUP)
    if cfg.reference is not None:
        metrics = [k for k in sorted({k for r in rows for k in r}) if summarized(k) and k != "wall_s"]
        write_csv(out_dir / "versus_reference.csv", versus_reference(rows, cfg.reference, metrics, cfg.oracle),
                  VERSUS)
    return rows
