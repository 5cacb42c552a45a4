"""Typed subset rules (no expression strings) and their vectorised evaluation over a run's columns.

A subset is the intersection of its rules. Each rule passes or fails every row and names the reason
of a failure, so a dropped uid can always say which rule dropped it first."""
from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SUBSET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe as a file and directory name


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


class DedupKeep(BaseModel):
    """Keep the kept member of each duplicate group (dedup/dup.parquet's dup_keep)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dedup_keep"] = "dedup_keep"


Rule = Annotated[Union[TopFraction, Threshold, Equals, DedupKeep], Field(discriminator="kind")]


class SubsetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SUBSET_NAME)
    rules: list[Rule] = Field(default_factory=list)
    base: bool = Field(True, description="apply tier.base rules first")


def rule_columns(rule, score_column: str) -> list[str]:
    if isinstance(rule, TopFraction):
        return [rule.column or score_column]
    if isinstance(rule, (Threshold, Equals)):
        return [rule.column]
    return ["dup_keep", "dup_drop_reason"]


def _fmt(x: float) -> str:
    return f"{x:g}"


def evaluate(rule, columns: dict[str, np.ndarray], scored: np.ndarray, score_column: str):
    """(passes, reason, threshold or None) for one rule; the reason is one string or an Arrow array.
    Nulls arrive as NaN (numbers) or None (objects) and never pass. `scored` marks the rows whose
    quantiles count (status ok)."""
    if isinstance(rule, TopFraction):
        col = rule.column or score_column
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
        return values == rule.value, f"{rule.column}_not_{str(rule.value).lower()}", None
    return columns["dup_keep"], columns["dup_drop_reason"], None
