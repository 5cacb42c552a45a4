"""`curate status`: per stage, parts done, failed and pending, read from the run directory alone.

Parts are the download input split (download/_input); a part is done when its `_done` marker and output
exist, failed when the stage's last stats.json names it (unless a rerun marked it done since), pending
otherwise. Global stages count as one part (tier, dedup, filter), shards as one part per subset, training
as one part per run under train/."""
from __future__ import annotations

from pathlib import Path

import yaml

from curate.io import DONE_DIR, part_name
from curate.report.runfiles import read_json, read_jsonl

STAGE_ORDER = ("synth", "download", "filter", "score", "dedup", "tier", "shard", "train")
COLUMNS = ("stage", "parts", "done", "failed", "pending", "state", "detail")


def configured_stages(run_dir: Path) -> list[str]:
    path = Path(run_dir) / "config.resolved.yaml"
    if not path.exists():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages") or [])


def _row(stage: str, names: list[str], done: set[str], failed: set[str], detail: str = "") -> dict:
    failed = failed - done
    n_done, n_failed = len(done & set(names)), len(failed & set(names))
    pending = len(names) - n_done - n_failed
    if names and n_done == len(names):
        state = "done"
    elif n_failed:
        state = "failed"
    elif n_done:
        state = "incomplete"
    else:
        state = "not started"
    return {"stage": stage, "parts": len(names), "done": n_done, "failed": n_failed, "pending": pending,
            "state": state, "failed_parts": sorted(failed & set(names)), "detail": detail}


def _input_part_names(run_dir: Path) -> list[str]:
    manifest = read_json(run_dir / "download" / "_input" / "manifest.json")
    return [part_name(i) for i in range(manifest["parts"])] if manifest else []


def _map_stage(run_dir: Path, stage: str, names: list[str]) -> dict:
    """A part named failed in stats.json stays failed unless its done marker is newer than that file (a
    rerun finished it since); an older marker is from an earlier config."""
    stage_dir = run_dir / stage
    stats_path = stage_dir / "stats.json"
    stats = read_json(stats_path) or {}
    failed = set(stats.get("failed_parts") or [])
    stats_time = stats_path.stat().st_mtime if stats else 0.0
    done = {p.stem for p in (stage_dir / DONE_DIR).glob("part-*.json")
            if (stage_dir / f"{p.stem}.parquet").exists() and (p.stem not in failed or p.stat().st_mtime > stats_time)}
    pending_rows = (stats.get("by_status") or {}).get("pending", 0)
    detail = f"{pending_rows:,} rows pending in stats.json" if pending_rows else ""
    return _row(stage, names, done, failed, detail)


def _single(stage: str, finished: bool, started: bool, detail: str = "") -> dict:
    row = _row(stage, [stage], {stage} if finished else set(), set(), detail)
    if started and not finished:
        row["state"] = "incomplete"
    return row


def _filter(run_dir: Path) -> dict:
    folder = run_dir / "filter"
    summary = read_json(folder / "summary.json")
    metrics = folder / "metrics.jsonl"
    detail = ""
    if summary:
        detail = f"{summary.get('samples_seen', 0):,} samples seen"
    elif metrics.exists():
        lines = read_jsonl(metrics)
        detail = f"{lines[-1].get('samples', 0):,} samples so far" if lines else ""
    return _single("filter", summary is not None, metrics.exists(), detail)


def _shard(run_dir: Path) -> dict:
    names = sorted(p.stem for p in (run_dir / "tier" / "subsets").glob("*.parquet"))
    done = {n for n in names if (run_dir / "shards" / n / "manifest.json").exists()}
    return _row("shard", names, done, set())


def _train(run_dir: Path) -> dict:
    runs = sorted(p.parent for p in (run_dir / "train").glob("**/config.resolved.yaml"))
    runs += sorted(p.parent for p in (run_dir / "train").glob("**/metrics.jsonl") if p.parent not in runs)
    names = [str(p.relative_to(run_dir / "train")) for p in runs]
    done = {n for n in names if (run_dir / "train" / n / "summary.json").exists()}
    return _row("train", names, done, set())


def run_status(run_dir: Path) -> list[dict]:
    """One row per stage the run is configured for or has written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    configured = configured_stages(run_dir)
    present = {s for s in STAGE_ORDER if (run_dir / ("shards" if s == "shard" else s)).exists()}
    stages = [s for s in STAGE_ORDER if s in configured or s in present]
    stages += [s for s in configured if s not in STAGE_ORDER]
    names = _input_part_names(run_dir)
    rows = []
    for stage in stages:
        if stage in ("download", "score"):
            rows.append(_map_stage(run_dir, stage, names))
        elif stage == "synth":
            rows.append(_single("synth", (run_dir / "synth" / "stats.json").exists(), (run_dir / "synth").exists()))
        elif stage == "filter":
            rows.append(_filter(run_dir))
        elif stage == "dedup":
            rows.append(_single("dedup", (run_dir / "dedup" / "_done.json").exists(), False))
        elif stage == "tier":
            rows.append(_single("tier", (run_dir / "tier" / "counts.json").exists(), False))
        elif stage == "shard":
            rows.append(_shard(run_dir))
        elif stage == "train":
            rows.append(_train(run_dir))
        else:
            rows.append(_row(stage, [], set(), set(), "unknown stage: no status rule"))
    return rows


def format_status(rows: list[dict]) -> str:
    """A fixed-width table, failed part names listed under it."""
    widths = {"stage": 10, "parts": 7, "done": 7, "failed": 7, "pending": 8, "state": 13}
    head = "".join(f"{c:<{w}}" if c in ("stage", "state") else f"{c:>{w}} " for c, w in widths.items()) + "detail"
    lines = [head]
    for r in rows:
        lines.append(f"{r['stage']:<10}{r['parts']:>7} {r['done']:>7} {r['failed']:>7} {r['pending']:>8} "
                     f"{r['state']:<13}{r['detail']}")
    for r in rows:
        if r["failed_parts"]:
            lines.append(f"{r['stage']} failed parts: {', '.join(r['failed_parts'])}")
    return "\n".join(lines)
