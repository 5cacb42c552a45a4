"""Training data: pairs directories and WebDataset shards, as one endless, seeded, resumable stream.

Epoch e visits every record once in an order drawn from (seed, e); the stream runs as many epochs as
the sample budget needs (DataComp's rule: every subset gets the same samples seen). Records that fail
to decode are skipped and counted, never fatal.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from curate.models.train_config import DataConfig
from curate.pairs import read_pairs
from curate.tars import IMAGE_EXTS, MemberReader, tar_members

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Record:
    """Where one pair's image bytes live: a file, or a member of a tar."""

    image: str          # file path, or tar path
    member: str | None  # tar member name, or None for a file
    caption: str


def pairs_records(root: Path, column_filter: dict[str, list] | None = None) -> list[Record]:
    """Records of a pairs directory (`pairs.parquet` with `path` and `caption`), optionally filtered by
    column values, e.g. {"vendor": ["twitter"]}."""
    root = Path(root)
    table = read_pairs(root, column_filter)
    return [Record(str(root / p), None, c or "") for p, c in zip(table.column("path").to_pylist(),
                                                                  table.column("caption").to_pylist())]


def shard_records(shards: list[Path], uids: set[str] | None = None) -> list[Record]:
    """Records of WebDataset tars (ours, img2dataset's or open_clip's): samples with an image and a .txt;
    with `uids`, only samples whose .json names one of them."""
    records = []
    with MemberReader() as reader:
        for shard in shards:
            samples: dict[str, dict[str, tuple[str, int, int]]] = {}
            for name, offset, size in tar_members(shard)[0]:  # safe names; a truncated tar gives what precedes
                if "." in name:
                    key, ext = name.split(".", 1)
                    samples.setdefault(key, {})[ext.lower()] = (name, offset, size)
            for files in samples.values():
                image = next((files[e] for e in IMAGE_EXTS if e in files), None)
                if uids is not None and ("json" not in files or _json_uid(reader, shard, files["json"]) not in uids):
                    continue
                if image and "txt" in files:
                    caption = reader.read(shard, *files["txt"][1:]).decode("utf-8", "replace")
                    records.append(Record(str(shard), image[0], caption))
    return records


def _json_uid(reader: MemberReader, shard: Path, member: tuple[str, int, int]) -> str | None:
    try:
        return json.loads(reader.read(shard, *member[1:])).get("uid")
    except (ValueError, AttributeError):
        return None


def resolve_shards(spec: str | Path) -> list[Path]:
    """A folder of tars, a single tar, or a brace pattern like `dir/{00000..00009}.tar`."""
    import braceexpand

    spec = str(spec)
    if Path(spec).is_dir():
        shards = sorted(Path(spec).glob("*.tar"))
    else:
        shards = [Path(p) for p in braceexpand.braceexpand(spec)]
    missing = [str(p) for p in shards if not p.exists()]
    if not shards or missing:
        raise FileNotFoundError(f"no shards at {spec}" + (f" (missing: {missing[:3]})" if missing else ""))
    return shards


def check_source(data: DataConfig) -> None:
    """Fail before any work when the configured data is not there."""
    if data.pairs is not None and not (data.pairs / "pairs.parquet").exists():
        raise FileNotFoundError(f"{data.pairs}/pairs.parquet not found: data.pairs takes a pairs directory")
    if data.shards is not None:
        resolve_shards(data.shards)
    if data.uids is not None and not data.uids.exists():
        raise FileNotFoundError(f"data.uids {data.uids} does not exist")


def load_image(record: Record, tars: dict[str, dict[str, tuple[int, int]]], reader: MemberReader) -> Image.Image:
    """The record's image; `tars` caches each tar's member index, `reader` its open file."""
    if record.member is None:
        data = Path(record.image).read_bytes()
    else:
        if record.image not in tars:
            tars[record.image] = {name: (offset, size) for name, offset, size in tar_members(record.image)[0]}
        data = reader.read(record.image, *tars[record.image][record.member])
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


class PairStream(torch.utils.data.IterableDataset):
    """Endless (image tensor, token ids) pairs in a seeded order, starting after `start` samples.

    A DataLoader worker fills whole batches from its own samples and the loader takes batches from the
    workers in turn, so worker w of W keeps the positions of batches w, w+W, ... after `start`: every
    batch holds the same positions whatever the worker count, and a resume at a batch boundary is exact.
    An undecodable sample yields None in its place (so positions stay exact); `collate` drops and
    counts it."""

    def __init__(self, records: list[Record], transform: Callable, tokenize: Callable, seed: int,
                 start: int = 0, batch_size: int = 1):
        if not records:
            raise ValueError("no training records: the subset, pairs directory or shard list is empty")
        self.records, self.transform, self.tokenize = records, transform, tokenize
        self.seed, self.start, self.batch_size = seed, start, batch_size

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def positions(self) -> Iterator[tuple[int, int]]:
        """(global position, record index) from `start` on, forever."""
        n = len(self.records)
        epoch, offset = divmod(self.start, n)
        position = self.start
        while True:
            for index in self.order(epoch)[offset:]:
                yield position, int(index)
                position += 1
            epoch, offset = epoch + 1, 0

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tars: dict[str, dict[str, tuple[int, int]]] = {}
        reader = MemberReader()
        for position, index in self.positions():
            if (position - self.start) // self.batch_size % workers != worker:
                continue
            record = self.records[index]
            try:
                image = self.transform(load_image(record, tars, reader))
            except (OSError, UnidentifiedImageError, ValueError, KeyError, Image.DecompressionBombError) as err:
                log.warning("skipping undecodable sample %s:%s (%s)", record.image, record.member or "", err)
                yield None
                continue
            yield image, self.tokenize([record.caption])[0]


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the decodable samples; the third item counts the ones skipped."""
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
    images, texts = zip(*good)
    return torch.stack(images), torch.stack(texts), len(batch) - len(good)
