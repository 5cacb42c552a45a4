"""Recipes: the subsets of tier.recipes (DataComp's baselines, MetaCLIP's) and every subset with a balance rule.
Each one's size and, on pools with ground truth, its precision and recall of clean rows; per balance rule, the
matches per entry over the scored pool and over the subset, found and counted by the code the rule runs."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.report import plots
from curate.report.html import img, missing, note, table
from curate.report.runfiles import subsets
from curate.report.truth import CLEAN, Labels, align, share
from curate.schema import CAPTION, STATUS, UID, Status
from curate.tier.entries import entry_counts
from curate.tier.tier import TierConfig, read_pool
from curate.tier.tier_rules import Balance, RuleInputs, recipe_subsets


def tier_config(run_dir: Path) -> TierConfig | None:
    """The run's tier config (config.resolved.yaml) when it names recipes or balance rules, else None."""
    path = Path(run_dir) / "config.resolved.yaml"
    tier = ((yaml.safe_load(path.read_text()) or {}).get("tier") if path.exists() else None) or {}
    rules = [*(tier.get("base") or []), *(r for s in tier.get("subsets") or [] for r in s.get("rules") or [])]
    if not (tier.get("recipes") or any(r.get("kind") == "balance" for r in rules)):
        return None
    return TierConfig.model_validate(tier)


def recipe_rules(cfg: TierConfig) -> dict[str, tuple[str, list]]:
    """Subset name -> (its recipe, or tier.subsets; the rules it applies, base first), for the recipes' subsets
    and the subsets with a balance rule, in the tier stage's order."""
    origin = {s.name: recipe for recipe in cfg.recipes for s in recipe_subsets(recipe)}
    found = {}
    for s in cfg.all_subsets():
        rules = [*(cfg.base if s.base else []), *s.rules]
        if s.name in origin or any(isinstance(r, Balance) for r in rules):
            found[s.name] = (origin.get(s.name, "tier.subsets"), rules)
    return found


def _sizes(picked: dict[str, tuple[str, list]], written: dict[str, pa.Array], gt: pa.Table | None) -> str:
    head = ["subset", "recipe", "rules", "rows"]
    rows = [[name, origin, ", ".join(r.kind for r in rules) or "none", len(written[name])]
            for name, (origin, rules) in picked.items()]
    if gt is None:
        return table(head, rows)
    clean_in_pool = int(Labels.of(gt.column("gt_noise")).mask(CLEAN).sum())
    for row in rows:
        clean = int(Labels.of(align(gt, written[row[0]])).mask(CLEAN).sum())
        row += [share(clean, row[3]), share(clean, clean_in_pool)]
    return (table(head + ["precision", "recall"], rows)
            + note("precision: clean share of the subset (synth/pool.parquet's gt_noise); recall: share of the "
                   "pool's clean rows it keeps."))


def _balance(run_dir: Path, picked: dict[str, tuple[str, list]], written: dict[str, pa.Array]) -> str:
    """Per balance rule: matches per entry over the scored pool (the counts the rule sampled by) and over the
    subset, as a table and a plot."""
    balanced = [(name, r) for name, (_, rules) in picked.items() for r in rules if isinstance(r, Balance)]
    if not balanced:
        return ""
    pool = read_pool(run_dir, [CAPTION])
    scored = pc.fill_null(pc.equal(pool.column(STATUS), Status.OK), False).to_numpy(zero_copy_only=False)
    inputs = RuleInputs({CAPTION: pool.column(CAPTION)}, scored, path=lambda p: p if p.is_absolute() else run_dir / p)
    panels, rows = {}, []
    for name, rule in balanced:
        member = pc.is_in(pool.column(UID), value_set=written[name]).to_numpy(zero_copy_only=False)
        found, entries, n_entries = inputs.matches(rule.entries)
        before, after = (entry_counts(found, entries, mask, n_entries) for mask in (scored, member))
        panels[f"{name}: {rule.entries.name}, t = {rule.t:,}"] = (before, after, rule.t)
        rows.append([name, str(rule.entries), rule.t, n_entries, int((before > 0).sum()), int((before > rule.t).sum()),
                     int(before.max(initial=0)), int(after.max(initial=0))])
    return ("<h3>balance: matches per entry</h3>"
            + table(["subset", "entries file", "t", "entries", "in the pool", "head (> t)", "most matches: pool",
                     "most matches: subset"], rows)
            + img(plots.entry_counts(panels), "matches per entry before and after balancing")
            + note("Per entry, the scored pool's captions that contain it (what balance counts) and the subset's, "
                   "entries sorted by their pool count. Head entries (count > t) fall to about t; a caption kept "
                   "for one entry also counts for the others it contains."))


def render(run_dir: Path, gt: pa.Table | None) -> str | None:
    """The section, or None when the run's tier config has no recipes and no balance rule."""
    cfg = tier_config(run_dir)
    if cfg is None:
        return None
    wanted, written = recipe_rules(cfg), subsets(run_dir)
    picked = {name: v for name, v in wanted.items() if name in written}
    absent = [name for name in wanted if name not in written]
    body = [missing(f"Not in tier/subsets/ (the tier stage has not run with this config): {', '.join(absent)}.")
            if absent else ""]
    if picked:
        body += [_sizes(picked, written, gt), _balance(Path(run_dir), picked, written)]
    return "".join(body)
