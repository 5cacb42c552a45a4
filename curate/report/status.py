"""`curate status`: per stage, parts done, failed and pending, read from the run directory alone.

Parts are the download input split (download/_input); each registered stage says how it counts its own
(`Step.status`): map stages per part (done marker and output), global stages as one part, shards as one part
per subset. Training runs under train/ (from `curate compare` or `curate train`) are one part each."""
from __future__ import annotations

from pathlib import Path

import yaml

from curate.io import part_name, read_json_if
from curate.registry import BY_NAME, STEPS
from curate.stage import status_row

TRAIN = "train"  # not a pipeline stage: the training runs under RUN/train
COLUMNS = ("stage", "parts", "done", "failed", "pending", "state", "detail")


def configured_stages(run_dir: Path) -> list[str]:
    path = Path(run_dir) / "config.resolved.yaml"
    if not path.exists():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages") or [])


def _input_part_names(run_dir: Path) -> list[str]:
    manifest = read_json_if(run_dir / "download" / "_input" / "manifest.json")
    return [part_name(i) for i in range(manifest["parts"])] if manifest else []


def _train(run_dir: Path) -> dict:
    runs = sorted(p.parent for p in (run_dir / "train").glob("**/config.resolved.yaml"))
    runs += sorted(p.parent for p in (run_dir / "train").glob("**/metrics.jsonl") if p.parent not in runs)
    names = [str(p.relative_to(run_dir / "train")) for p in runs]
    done = {n for n in names if (run_dir / "train" / n / "summary.json").exists()}
    return status_row(TRAIN, names, done, set())


def run_status(run_dir: Path) -> list[dict]:
    """One row per stage the run is configured for or has written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    configured = configured_stages(run_dir)
    order = [step.name for step in STEPS] + [TRAIN]
    folders = {step.name: step.directory for step in STEPS} | {TRAIN: TRAIN}
    present = {s for s in order if (run_dir / folders[s]).exists()}
    stages = [s for s in order if s in configured or s in present]
    stages += [s for s in configured if s not in order]
    names = _input_part_names(run_dir)
    rows = []
    for stage in stages:
        if stage in BY_NAME:
            rows.append(BY_NAME[stage].status(run_dir, names))
        elif stage == TRAIN:
            rows.append(_train(run_dir))
        else:
            rows.append(status_row(stage, [], set(), set(), "unknown stage: no status rule"))
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
