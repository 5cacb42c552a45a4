"""The shard stage: a tier's uid list -> WebDataset tars that open_clip's trainer reads.

Planning (one process) shuffles the subset by seed, cuts it into equal shards and records, per sample,
where its original image bytes lie in the download tars. Writing is a MapStage over those plan parts
(one part = one output tar), so both runners, retries and resume-by-shard come for free. Tars are
written byte-for-byte reproducibly (fixed member order, mtime, owner and mode)."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from curate.io import Part, atomic_write_json, atomic_write_parquet, fingerprint, part_name, read_json
from curate.schema import CAPTION, STATUS, UID
from curate.stage import ConfigError, MapStage, PartsFailed, Resources, RunContext, Step, status_row
from curate.tars import MemberReader, index_tar, shard_path
from curate.tier.tier import available_columns, read_pool
from curate.tier.tier_rules import SUBSET_NAME

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"  # plan parts, per-shard outputs and done markers
# files this stage writes in a subset folder (.tmp: a crashed write)
OURS = re.compile(r"^(\.?\d{5}\.tar(\.tmp)?|sizes\.json|manifest\.json|missing\.parquet|_parts)$")
JSON_COLUMNS = ("width", "height", "original_width", "original_height", "sha256", "url")


class ShardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subsets: list[Annotated[str, Field(pattern=SUBSET_NAME)]] | None = Field(  # names become paths: no `../`
        None, description="tier subsets to shard; default: every subset")
    samples_per_shard: int = Field(1000, ge=1, le=1_000_000)
    seed: int = Field(0, description="shuffle seed: the same seed gives the same tars, byte for byte")


class ShardError(ValueError):
    """A shard request that cannot run; the message says what to change."""


def image_extension(data: bytes) -> str:
    """The real format of the bytes (img2dataset names every kept original `.jpg`)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _check_directory(shard_dir: Path) -> None:
    if not shard_dir.exists():
        return
    foreign = sorted(p.name for p in shard_dir.iterdir() if not OURS.match(p.name))
    if foreign:
        raise ShardError(f"{shard_dir} already holds files this stage did not write ({foreign[:5]}): "
                         "move them away or shard into another run directory")


def read_sources(run_dir: Path) -> pa.Table:
    """Per uid: status, caption, where its image lies, and the columns its json carries. Read once and
    shared by every subset."""
    names = available_columns(run_dir)
    carried = [c for c in JSON_COLUMNS if c in names] + [c for c in names if c.startswith("score_")]
    return read_pool(run_dir, [CAPTION, "shard", "key", *carried])


def plan_subset(run_dir: Path, subset: str, cfg: ShardConfig, sources: pa.Table,
                tar_index: dict) -> tuple[list[Part], dict]:
    """Write the plan parts of one subset (or keep them if unchanged); returns the parts and plan info.
    `sources` is `read_sources(run_dir)`; `tar_index` caches `index_tar` across subsets."""
    uid_path = run_dir / "tier" / "subsets" / f"{subset}.parquet"
    if not uid_path.exists():
        raise ShardError(f"{uid_path} does not exist: run the tier stage (known subsets: {known_subsets(run_dir)})")
    shard_dir = run_dir / "shards" / subset
    _check_directory(shard_dir)
    wanted = pq.read_table(uid_path).column(UID)
    pool = sources.take(pc.index_in(wanted, sources.column(UID)))  # the subset's rows, in its sorted order
    order = np.random.default_rng(cfg.seed).permutation(pool.num_rows)
    pool = pool.take(pa.array(order, pa.int64()))
    src, offsets, sizes, missing = [], [], [], []
    for tar_name, key in zip(pool.column("shard").to_pylist(), pool.column("key").to_pylist()):
        path = str(shard_path(run_dir / "download", tar_name)) if tar_name else ""
        if path and path not in tar_index:
            tar_index[path] = index_tar(Path(path))
        offset, size = tar_index.get(path, {}).get(key, (-1, -1))
        src.append(path)
        offsets.append(offset)
        sizes.append(size)
        missing.append(offset < 0)
    found = pa.array(np.logical_not(missing))
    meta_columns = [c for c in pool.column_names if c not in (STATUS, CAPTION, "shard", "key")]
    meta = [json.dumps({k: v for k, v in row.items() if v is not None}, sort_keys=True)
            for row in pool.select(meta_columns).to_pylist()]
    plan = pa.table({UID: pool.column(UID), CAPTION: pool.column(CAPTION), "src": src, "offset": offsets,
                     "size": sizes, "json": meta}).filter(found)
    identity = fingerprint(cfg.model_dump(mode="json", exclude={"subsets"}), plan.column(UID).to_pylist(),
                           plan.column("offset").to_pylist())
    parts_dir = shard_dir / PARTS_DIR
    plan_file = parts_dir / "plan.json"
    n_parts = -(-plan.num_rows // cfg.samples_per_shard)
    starts = [len(chunk) for chunk in np.array_split(np.arange(plan.num_rows), n_parts)] if n_parts else []
    starts = np.concatenate([[0], np.cumsum(starts)]).astype(int)  # shard sizes differ by at most one
    if not (plan_file.exists() and read_json(plan_file).get("identity") == identity):
        if shard_dir.exists():
            shutil.rmtree(shard_dir)  # ours only (checked above): a changed subset starts afresh
        for i in range(n_parts):
            atomic_write_parquet(parts_dir / "input" / f"{part_name(i)}.parquet",
                                 plan.slice(starts[i], starts[i + 1] - starts[i]))
        atomic_write_json(plan_file, {"identity": identity, "parts": n_parts, "samples": plan.num_rows,
                                      "missing_images": int(sum(missing))})
    lost = sorted(pool.filter(pa.array(missing, pa.bool_())).column(UID).to_pylist())
    atomic_write_parquet(shard_dir / "missing.parquet", pa.table({UID: pa.array(lost, pa.string())}))
    if lost:
        log.warning("shard: %d uid(s) of subset %r have no image in the download tars; listed in %s",
                    len(lost), subset, shard_dir / "missing.parquet")
    parts = [Part(i, parts_dir / "input" / f"{part_name(i)}.parquet", parts_dir) for i in range(n_parts)]
    return parts, read_json(plan_file)


def known_subsets(run_dir: Path) -> list[str]:
    return sorted(p.stem for p in (Path(run_dir) / "tier" / "subsets").glob("*.parquet"))


def tar_name(index: int) -> str:
    return f"{index:05d}.tar"


class TarWriter:
    """A minimal ustar writer: fixed mtime, owner and mode (reproducible bytes), the sha256 computed
    while writing, and headers packed from a template (tarfile's are ~10x slower per member)."""

    BLOCK, RECORD = 512, 10240

    def __init__(self, path: Path):
        self.file, self.sha, self.written = open(path, "wb"), hashlib.sha256(), 0
        header = bytearray(self.BLOCK)
        for offset, value in ((100, b"0000444\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                              (136, b"00000000000\0"), (156, b"0"), (257, b"ustar\x0000")):
            header[offset:offset + len(value)] = value
        self.template = bytes(header)

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.written += len(data)

    def add(self, name: str, data: bytes) -> None:
        encoded = name.encode()
        if len(encoded) > 100:
            raise ValueError(f"tar member name too long for ustar: {name!r}")
        header = bytearray(self.template)
        header[0:len(encoded)] = encoded
        header[124:136] = b"%011o\0" % len(data)
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        self._write(bytes(header))
        self._write(data)
        pad = -len(data) % self.BLOCK
        if pad:
            self._write(b"\0" * pad)

    def close(self) -> str:
        """End-of-archive blocks, padding to a whole record; returns the sha256."""
        end = 2 * self.BLOCK
        self._write(b"\0" * (end + (-(self.written + end) % self.RECORD)))
        self.file.close()
        return self.sha.hexdigest()


class ShardWriter(MapStage):
    """One plan part -> one tar: `<uid>.<ext>` (the original bytes), `<uid>.txt`, `<uid>.json`."""

    name = "shard"
    requires = (UID, CAPTION, "src", "offset", "size", "json")
    provides = ("tar", "tar_sha256")
    resources = Resources(num_cpus=1)

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        out_path = part.stage_dir.parent / tar_name(part.index)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        tar = TarWriter(tmp)
        try:
            with MemberReader() as sources:
                for uid, caption, src, offset, size, meta in zip(*(table.column(c).to_pylist() for c in self.requires)):
                    image = sources.read(src, offset, size)
                    tar.add(f"{uid}.{image_extension(image)}", image)
                    tar.add(f"{uid}.txt", caption.encode("utf-8"))
                    tar.add(f"{uid}.json", meta.encode())
        finally:
            digest = tar.close()
        tmp.replace(out_path)
        n = table.num_rows
        return table.append_column("tar", pa.array([out_path.name] * n)).append_column("tar_sha256", pa.array([digest] * n))


def finish_subset(run_dir: Path, subset: str, parts: list[Part], plan: dict, cfg: ShardConfig) -> dict:
    """sizes.json (open_clip reads it for the dataset size) and manifest.json, from the written parts."""
    shard_dir = run_dir / "shards" / subset
    shards = []
    for part in parts:
        t = pq.read_table(part.output_path, columns=["tar", "tar_sha256"])
        shards.append({"name": tar_name(part.index), "samples": t.num_rows, "sha256": t.column("tar_sha256")[0].as_py()})
    shard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(shard_dir / "sizes.json", {s["name"]: s["samples"] for s in shards})
    manifest = {"subset": subset, "samples": sum(s["samples"] for s in shards), "seed": cfg.seed,
                "samples_per_shard": cfg.samples_per_shard, "missing_images": plan["missing_images"], "shards": shards}
    atomic_write_json(shard_dir / "manifest.json", manifest)
    if not shards:
        log.warning("shard: subset %r is empty; wrote an empty manifest", subset)
    return manifest


def run_shard(cfg: ShardConfig, out_dir: Path, runner) -> dict:
    """Write every requested tier subset as WebDataset shards; a subset whose tars are done is skipped."""
    run_dir = Path(out_dir).resolve()
    subsets = cfg.subsets or known_subsets(run_dir)
    if not subsets:
        raise ShardError(f"{run_dir}/tier/subsets holds no subsets: run the tier stage first")
    start, tar_index, sources = time.time(), {}, read_sources(run_dir)
    manifests, failed = {}, {}
    for subset in subsets:
        parts, plan = plan_subset(run_dir, subset, cfg, sources, tar_index)
        try:
            runner.map_parts(ShardWriter(), parts)
        except PartsFailed as err:
            failed.update({f"{subset}/{name}": error for name, error in err.failed.items()})
            continue
        manifests[subset] = finish_subset(run_dir, subset, parts, plan, cfg)
    stats = {"subsets": {s: m["samples"] for s, m in manifests.items()},
             "shards": {s: len(m["shards"]) for s, m in manifests.items()},
             "missing_images": {s: m["missing_images"] for s, m in manifests.items()},
             "failed_parts": sorted(failed), "wall_s": round(time.time() - start, 2)}
    atomic_write_json(run_dir / "shards" / "stats.json", stats)
    if failed:
        raise PartsFailed("shard", failed)
    return stats


class ShardStep(Step):
    """`shard`: a part per output tar of each subset; a subset is done once its manifest.json exists."""

    name, directory = "shard", "shards"
    config = ShardConfig
    reads = ("tier", "tier/subsets/*.parquet")
    command = "write tier subsets as WebDataset shards that open_clip's trainer reads (OUT/shards/<subset>)"
    identity = "per subset: the shard config, its uids and their image offsets (plan.json); per tar: done markers"

    def check(self, cfg, run_dir: Path, stages: list[str]) -> None:
        if cfg.shard.subsets is None:  # every subset the tier stage makes
            return
        known = [s.name for s in cfg.tier.all_subsets()] if "tier" in stages else known_subsets(run_dir)
        unknown = [s for s in cfg.shard.subsets if s not in known]
        if unknown:
            raise ConfigError(f"shard.subsets names {unknown}, which the tier stage does not make (it makes "
                              f"{known}): change shard.subsets or the tier subsets")

    def run(self, ctx: RunContext) -> dict:
        return run_shard(ctx.cfg.shard, ctx.run_dir, ctx.runner)

    def status(self, run_dir: Path, part_names: list[str]) -> dict:
        names = known_subsets(run_dir)
        done = {n for n in names if (Path(run_dir) / self.directory / n / "manifest.json").exists()}
        return status_row(self.name, names, done, set())

