"""Read a run directory for the report: JSON files that may be absent, and only the Parquet columns asked for."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io import list_parts
from curate.schema import UID

GT_COLUMNS = (UID, "gt_noise", "gt_dup_of")


def rows_parts(run_dir: Path) -> list[Path]:
    """The most complete per-row parts: score's (they carry download's columns), else download's."""
    return list_parts(Path(run_dir) / "score") or list_parts(Path(run_dir) / "download")


def schema_names(paths: list[Path]) -> list[str]:
    return pq.read_schema(paths[0]).names if paths else []


def score_columns(paths: list[Path]) -> list[str]:
    return [c for c in schema_names(paths) if c.startswith("score_")]


def read_columns(paths: list[Path], columns: list[str]) -> pa.Table:
    """The given columns (those that exist) across parts; nothing else is read."""
    names = set(schema_names(paths))
    wanted = [c for c in dict.fromkeys(columns) if c in names]
    return pa.concat_tables([pq.read_table(p, columns=wanted) for p in paths]) if paths else pa.table({})


def rows_for_uids(paths: list[Path], uids: list[str], columns: list[str]) -> dict[str, dict]:
    """uid -> row (the given columns) for a few uids, filtering each part on read."""
    if not uids:
        return {}
    names = set(schema_names(paths))
    wanted = [c for c in dict.fromkeys([UID, *columns]) if c in names]
    value_set = pa.array(sorted(set(uids)), pa.string())
    found: dict[str, dict] = {}
    for path in paths:
        table = pq.read_table(path, columns=wanted)
        table = table.filter(pc.is_in(table.column(UID), value_set=value_set))
        found.update({row[UID]: row for row in table.to_pylist()})
    return found


def read_gt(run_dir: Path) -> pa.Table | None:
    """uid, gt_noise, gt_dup_of of a pool with ground truth (synthetic or --from-pairs), else None."""
    path = Path(run_dir) / "synth" / "pool.parquet"
    if not path.exists():
        return None
    names = pq.read_schema(path).names
    if "gt_noise" not in names:
        return None
    return pq.read_table(path, columns=[c for c in GT_COLUMNS if c in names])


def natural(name: str) -> tuple:
    """Sort key that puts top20 before top100."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def subsets(run_dir: Path) -> dict[str, pa.Array]:
    """Tier subset name -> its uids, from tier/subsets/<name>.parquet, in natural order."""
    folder = Path(run_dir) / "tier" / "subsets"
    return {p.stem: pq.read_table(p, columns=[UID]).column(UID).combine_chunks()
            for p in sorted(folder.glob("*.parquet"), key=lambda p: natural(p.stem))}


def gt_labels(gt: pa.Table | None, uids: list[str]) -> dict[str, str]:
    """uid -> gt_noise for a few uids (empty without ground truth)."""
    if gt is None or not uids:
        return {}
    picked = gt.filter(pc.is_in(gt.column(UID), value_set=pa.array(sorted(set(uids)), pa.string())))
    return dict(zip(picked.column(UID).to_pylist(), picked.column("gt_noise").to_pylist()))
