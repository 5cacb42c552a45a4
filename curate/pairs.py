"""Pairs folders: `pairs.parquet` (a `path` relative to the folder and a `caption` per row, plus any columns)
beside the images, as in ../shared/data/emoji. The one reader: the synthetic pool, the trainer and the
evaluation all read them here."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PAIRS_TABLE = "pairs.parquet"


def read_pairs(root: Path, where: dict[str, list] | None = None, columns: tuple[str, ...] = ()) -> pa.Table:
    """The folder's table with `path`, `caption` and `columns` checked, limited to the rows whose column
    holds one of the given values (`where`: column -> values, compared as strings)."""
    table_path = Path(root) / PAIRS_TABLE
    if not table_path.exists():
        raise FileNotFoundError(f"{table_path} not found: a pairs directory holds {PAIRS_TABLE}")
    table = pq.read_table(table_path)
    missing = [c for c in ("path", "caption", *columns) if c not in table.column_names]
    if missing:
        raise ValueError(f"{table_path} has no column(s) {missing}; it has {table.column_names}")
    for col, allowed in (where or {}).items():
        if col not in table.column_names:
            raise ValueError(f"filter column {col!r} is not in {table_path} (columns: {table.column_names})")
        values = pc.cast(table.column(col), pa.string())
        table = table.filter(pc.fill_null(pc.is_in(values, value_set=pa.array([str(v) for v in allowed])), False))
    return table
