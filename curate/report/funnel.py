"""The funnel: rows per stage and per status or drop reason, straight from the stats files.

Every count cell carries `data-stage` and `data-key` attributes, so a test (or a script) can check the
page against the files."""
from __future__ import annotations

from pathlib import Path

from curate.io import read_json_if
from curate.registry import STEPS
from curate.report.html import Cell, esc, fmt, missing, note, pct, side_by_side, table
from curate.report.runfiles import natural

FACTS = ("parts", "failed_parts", "scored_rows", "groups", "keep", "keep_score", "wall_s")


def count_cell(value: int, stage: str, key: str) -> Cell:
    return Cell(fmt(value), True, {"stage": stage, "key": key})


def stage_stats(run_dir: Path) -> dict[str, dict]:
    """stage -> its stats.json, for the stages that count rows and have written one."""
    found = {s.name: read_json_if(Path(run_dir) / s.directory / "stats.json") for s in STEPS if s.counts_rows}
    return {s: v for s, v in found.items() if v}


def shard_manifests(run_dir: Path) -> dict[str, dict]:
    found = sorted((Path(run_dir) / "shards").glob("*/manifest.json"), key=lambda p: natural(p.parent.name))
    return {p.parent.name: read_json_if(p) for p in found}


def overview(stats: dict[str, dict], counts: dict | None, manifests: dict[str, dict]) -> list[tuple[str, str, int]]:
    """(label, key, rows) from the pool down to each subset's shards."""
    steps: list[tuple[str, str, int]] = []
    if stats:
        steps.append(("pool rows", "pool", next(iter(stats.values()))["input_rows"]))
    for step in STEPS:
        found = step.funnel(stats[step.name]) if step.name in stats else None
        steps += [found] if found else []
    for name, rows in sorted(((counts or {}).get("subsets") or {}).items(), key=lambda kv: natural(kv[0])):
        steps.append((f"tier {name}", f"tier:{name}", rows))
    for name, manifest in manifests.items():
        steps.append((f"shards {name}", f"shards:{name}", manifest.get("samples", 0)))
    return steps


def _bars(steps: list[tuple[str, str, int]]) -> str:
    top = max((rows for _, _, rows in steps), default=0) or 1
    rows = []
    for label, key, n in steps:
        bar = f'<div class="bartrack"><div class="bar" style="width:{100 * n / top:.1f}%"></div></div>'
        rows.append([label, count_cell(n, "overview", key), pct(n, steps[0][2]), Cell(bar, raw_html=True)])
    return table(["step", "rows", "of pool", ""], rows)


def _stage_table(stage: str, stats: dict) -> str:
    total = stats["input_rows"]
    by_status = stats["by_status"]
    order = sorted(by_status.items(), key=lambda kv: (kv[0] not in ("ok", "kept"), -kv[1], kv[0]))
    rows = [["input rows", count_cell(total, stage, "input_rows"), ""]]
    rows += [[status, count_cell(n, stage, status), pct(n, total)] for status, n in order]
    summed = sum(by_status.values())
    rows.append(["total", Cell(fmt(summed), True), "= input rows" if summed == total else "!= input rows"])
    facts = ", ".join(f"{k} {fmt(stats[k]) if not isinstance(stats[k], list) else len(stats[k])}"
                      for k in FACTS if k in stats)
    return f"<h3>{esc(stage)}</h3>" + table(["status", "rows", "share"], rows) + note(facts)


def _tier_table(counts: dict) -> str:
    """A column per subset, a row per drop reason (reasons outnumber subsets)."""
    subsets, drops = counts.get("subsets") or {}, counts.get("drops") or {}
    names = sorted(subsets, key=natural)
    reasons = sorted({r for d in drops.values() for r in d})
    total = counts.get("uids", counts.get("input_rows", 0))  # rows with a unique uid: each is accounted once
    rows = [["in subset", *[count_cell(subsets[n], "tier", f"{n}:rows") for n in names]],
            ["share", *[pct(subsets[n], total) for n in names]]]
    rows += [[f"drop: {r}", *[count_cell(drops.get(n, {}).get(r, 0), "tier", f"{n}:drop:{r}") for n in names]]
             for r in reasons]
    sums = [subsets[n] + sum(drops.get(n, {}).values()) for n in names]
    rows.append(["check", *["= uids" if s == total else f"!= uids ({fmt(s)})" for s in sums]])
    oracles = counts.get("evaluation_only") or []
    head = ["rows", *(f"{n} (evaluation only)" if n in oracles else n for n in names)]
    facts = ", ".join(f"{k} {fmt(counts[k])}" for k in ("input_rows", "uids", "duplicate_uid_rows", "holdout")
                      if k in counts)
    warning = note(f"{', '.join(oracles)}: chosen by the synth pool's ground truth (a ground_truth rule), to measure "
                   "filters against; not a way to curate a real pool") if oracles else ""
    return ("<h3>tier</h3>" + note(f"{facts}; every uid not in a subset has exactly one first drop reason")
            + warning + table(head, rows))


def _shard_table(manifests: dict[str, dict]) -> str:
    rows = [[name, count_cell(m.get("samples", 0), "shard", name), len(m.get("shards", []))]
            for name, m in manifests.items()]
    return "<h3>shards</h3>" + table(["subset", "samples", "tar files"], rows)


def render(run_dir: Path) -> str:
    stats = stage_stats(run_dir)
    counts = read_json_if(Path(run_dir) / "tier" / "counts.json")
    manifests = shard_manifests(run_dir)
    if not stats and not counts and not manifests:
        return missing("No stage has written its stats yet (synth/, download/, score/, dedup/ stats.json; "
                       "tier/counts.json; shards/*/manifest.json).")
    body = [_bars(overview(stats, counts, manifests))]
    body.append(side_by_side(_stage_table(s, v) for s, v in stats.items()))
    absent = [f"{s.directory}/stats.json" for s in STEPS if s.counts_rows and s.name not in stats]
    body.append(_tier_table(counts) if counts else "")
    body.append(_shard_table(manifests) if manifests else "")
    if not counts:
        absent.append("tier/counts.json")
    if not manifests:
        absent.append("shards/*/manifest.json")
    if absent:
        body.append(missing("Not in this run yet: " + ", ".join(absent)))
    return "".join(body)
