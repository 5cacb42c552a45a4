"""Parts on disk: atomic writes, done markers, and the fingerprints that keep a resume honest."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

DONE_DIR = "_done"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_if(path: Path) -> Any:
    """The file's JSON, or None when it does not exist yet."""
    return read_json(path) if Path(path).exists() else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fingerprint(*items: Any) -> str:
    """A short stable hash of JSON-able items (configs, uid lists, file lists)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


# Done-marker fields that say how a part was made, not what it holds.
MARKER_CIRCUMSTANCES = ("wall_s", "node")


def markers_fingerprint(paths: Iterable[Path]) -> str:
    """What a set of done markers says about their outputs (not how long they took, nor where)."""
    return fingerprint([{k: v for k, v in read_json(p).items() if k not in MARKER_CIRCUMSTANCES}
                        for p in sorted(paths)])


def file_fingerprint(path: Path) -> str:
    """A short hash of a file's bytes (a part's input: a changed input means a stale output)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Part:
    """One unit of work: an input Parquet file and where its output and done marker go. A part with an
    `attempt` is one run of it in progress: its outputs go to `staging_dir` until the driver commits them."""

    index: int
    input_path: Path
    stage_dir: Path
    attempt: str | None = None

    @property
    def name(self) -> str:
        return part_name(self.index)

    @property
    def output_path(self) -> Path:
        return self.stage_dir / f"{self.name}.parquet"

    @property
    def input_rows(self) -> int:
        """Rows of the input file, from its Parquet footer."""
        return pq.ParquetFile(self.input_path).metadata.num_rows

    @property
    def done_path(self) -> Path:
        return self.stage_dir / DONE_DIR / f"{self.name}.json"

    @property
    def staging_dir(self) -> Path:
        """This attempt's own folder, laid out like the stage folder (`shards/...`, `part-*.parquet`)."""
        if not self.attempt:
            raise ValueError(f"{self.name} is not an attempt: only a running attempt has a staging folder")
        return self.stage_dir / f".{self.name}.{self.attempt}.tmp"


def move_staged(part: Part) -> list[Path]:
    """Move every file of an attempt's staging folder to the same place in the stage folder, then remove
    the staging folders of every attempt of this part (ones left by dead workers included); returns the
    files moved."""
    staging, moved = part.staging_dir, []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = part.stage_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved.append(target)
    for stale in part.stage_dir.glob(f".{part.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return moved


def read_done(part: Part) -> dict | None:
    if not part.done_path.exists() or not part.output_path.exists():
        return None
    return read_json(part.done_path)


def write_done(part: Part, marker: dict) -> None:
    atomic_write_json(part.done_path, marker)


def list_parts(stage_dir: Path) -> list[Path]:
    return sorted(Path(stage_dir).glob("part-*.parquet"))


def read_column(paths: Iterable[Path], column: str) -> pa.ChunkedArray:
    """One column across many part files, without loading the others."""
    chunks = [pq.read_table(p, columns=[column]).column(column) for p in paths]
    if not chunks:
        return pa.chunked_array([], type=pa.string())
    return pa.chunked_array([c for ch in chunks for c in ch.chunks], type=chunks[0].type)
