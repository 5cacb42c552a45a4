"""A run directory on a store, worked on through a local copy (the stages read and write real files).

`pull` makes the copy the store's trusted state: a part counts only with its done marker, a marker only with
its part, and staging files never; what the store lacks is removed from the copy, so a part lost on the store
is redone. `push` uploads what changed (objects first, done markers last); `publish` does so for one committed
part at once. `stage_through_store` runs a part where the run directory is not mounted (a Ray worker on
another node): its input comes from the store and its outputs go to a staging prefix that `commit_staged`
moves into place before writing the marker."""
from __future__ import annotations

import hashlib
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from curate.io import DONE_DIR, Part, atomic_write_json, read_json_if, write_done
from curate.stage import stage_part
from curate.storage import StorageConfig, Store, cache_root, is_url, open_store

log = logging.getLogger(__name__)

INPUT_FOLDERS = ("_input", "input")  # split inputs (download, shard plans): written whole before any work
INDEX = "sync.json"
TRANSFERS = 16  # files moved at once: an object store serves many requests in parallel


def each(fn, items: list) -> None:
    """`fn` over the items on a few threads (transfers wait on the network); the first error is raised."""
    if len(items) < 2:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(min(TRANSFERS, len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def _staging(rel: str) -> bool:
    return any(seg.startswith(".") and seg.endswith(".tmp") for seg in rel.split("/"))


def _marker(rel: str) -> bool:
    return f"/{DONE_DIR}/" in f"/{rel}"


def trusted(names: dict) -> dict:
    """The entries of a store listing a reader may use (see the module docstring)."""
    out = {}
    for rel, meta in names.items():
        folder, _, base = rel.rpartition("/")
        if _staging(rel):
            continue
        if base.startswith("part-") and base.endswith(".parquet") and folder.rpartition("/")[2] not in INPUT_FOLDERS:
            if f"{folder}/{DONE_DIR}/{base[:-len('.parquet')]}.json".lstrip("/") not in names:
                continue
        if folder.rpartition("/")[2] == DONE_DIR and base.startswith("part-") and base.endswith(".json"):
            stage = folder[:-len(DONE_DIR)]
            if f"{stage}{base[:-len('.json')]}.parquet" not in names:
                continue
        out[rel] = meta
    return out


@dataclass(frozen=True)
class RemoteRun:
    """What a worker needs to reach a run on a store: its URL, the storage settings, and the driver's copy
    root (to turn a Part's paths into names on the store)."""

    url: str
    cfg: StorageConfig
    local: Path

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.local).as_posix()


class WorkingCopy:
    """The local copy of a run (or input folder) on a store, and what is known to be in sync."""

    def __init__(self, store: Store, cfg: StorageConfig, kind: str = "runs"):
        base = cache_root(cfg) / kind / hashlib.sha256(store.url.encode()).hexdigest()[:16]
        self.store, self.cfg = store, cfg
        self.local, self.index_path = base / "copy", base / INDEX
        self.local.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, list] = read_json_if(self.index_path) or {}

    @property
    def remote(self) -> RemoteRun:
        return RemoteRun(self.store.url, self.cfg, self.local)

    def _local_files(self) -> dict[str, Path]:
        return {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*")
                if p.is_file() and not _staging(p.relative_to(self.local).as_posix())}

    def _save(self) -> None:
        atomic_write_json(self.index_path, self.index)

    def _synced(self, rel: str, path: Path) -> bool:
        entry = self.index.get(rel)
        return bool(entry) and path.exists() and path.stat().st_mtime_ns == entry[2]

    def _record(self, rel: str, size: int, mtime: float) -> None:
        self.index[rel] = [size, mtime, (self.local / rel).stat().st_mtime_ns]

    def pull(self, trust_markers: bool = True) -> None:
        """Make the copy what the store holds (only its trusted files when `trust_markers`)."""
        listing = self.store.listing()
        keep = trusted(listing) if trust_markers else listing
        for rel, path in self._local_files().items():
            if rel not in keep:
                path.unlink()
                self.index.pop(rel, None)
        fetch = [rel for rel, meta in keep.items()
                 if not (self._synced(rel, self.local / rel) and self.index[rel][:2] == list(meta))]
        each(lambda rel: self.store.get(rel, self.local / rel), fetch)
        for rel in fetch:
            self._record(rel, *keep[rel])
        self.index = {rel: e for rel, e in self.index.items() if rel in keep}
        self._save()
        log.debug("pulled %d of %d files from %s", len(fetch), len(keep), self.store.url)

    def push(self) -> None:
        """Upload what changed in the copy, objects before done markers; delete what the copy no longer has
        (markers first)."""
        files = self._local_files()
        gone = sorted((rel for rel in self.index if rel not in files), key=lambda r: not _marker(r))
        for rel in gone:
            if self.store.exists(rel):
                self.store.delete(rel)
            self.index.pop(rel)
        self._upload([rel for rel, p in files.items() if not self._synced(rel, p)])

    def _upload(self, rels: list[str]) -> None:
        """Upload in three waves, each once the one before is all there: the files, then the newest file of
        each top-level folder (a stage's last write, which says it is done), then the done markers; then
        record what the store now holds."""
        files = sorted((r for r in rels if not _marker(r)), key=lambda r: (self.local / r).stat().st_mtime_ns)
        last = {r.split("/", 1)[0]: r for r in files}  # per top-level folder, the newest
        for wave in ([r for r in files if r not in last.values()], list(last.values()), [r for r in rels if _marker(r)]):
            each(lambda rel: self.store.put(self.local / rel, rel), wave)
        self._note(rels)

    def _note(self, rels: list[str]) -> None:
        """Record the store's size and mtime of files now the same in the copy and on the store."""
        listing = self.store.listing() if len(rels) > 50 else {rel: self.store.stat(rel) for rel in rels}
        for rel in rels:
            self._record(rel, *listing[rel])
        self._save()

    def fetch_one(self, rel: str) -> Path:
        """Fetch one file of the store into the copy (unless it is there already) and return its path."""
        meta = self.store.stat(rel)
        if meta is None:
            raise FileNotFoundError(f"{self.store.url}/{rel} does not exist")
        path = self.local / rel
        if not (self._synced(rel, path) and self.index[rel][:2] == list(meta)):
            self.store.get(rel, path)
            self._record(rel, *meta)
            self._save()
        return path

    def publish(self, paths: list[Path]) -> None:
        """Upload one committed part's files (its marker last). If that fails, the local marker goes too: the
        part is not done anywhere, and a rerun redoes it."""
        try:
            self._upload([Path(p).relative_to(self.local).as_posix() for p in paths])
        except BaseException:
            marker = [p for p in paths if _marker(Path(p).relative_to(self.local).as_posix())]
            for p in marker:
                Path(p).unlink(missing_ok=True)
            raise

    def commit_staged(self, attempt: Part, marker: dict) -> None:
        """Commit an attempt a worker staged on the store: move its objects into place, fetch them into the
        copy, then write the done marker (copy and store)."""
        remote = self.remote
        staging, stage = remote.rel(attempt.staging_dir), remote.rel(attempt.stage_dir)
        placed = []
        for name in sorted(rel[len(staging) + 1:] for rel in self.store.listing(staging)):
            self.store.move(f"{staging}/{name}", f"{stage}/{name}")
            self.store.get(f"{stage}/{name}", attempt.stage_dir / name)
            placed.append(f"{stage}/{name}")
        self._note(placed)
        write_done(attempt, marker)
        self.publish([attempt.done_path])


def stage_through_store(stage, part: Part, remote: RemoteRun, node: str) -> tuple[Part, dict]:
    """Stage one part on a node that does not mount the run: input (and any earlier output) from the store,
    outputs uploaded under the part's staging prefix there. Returns the attempt (driver paths) and marker."""
    store = open_store(remote.url, remote.cfg, check=False)
    with tempfile.TemporaryDirectory(prefix="curate-part-") as tmp:
        here = Part(part.index, Path(tmp) / remote.rel(part.input_path), Path(tmp) / remote.rel(part.stage_dir))
        store.get(remote.rel(part.input_path), here.input_path)
        for earlier, copy in ((part.output_path, here.output_path), (part.done_path, here.done_path)):
            if store.exists(remote.rel(earlier)):  # a part run again reads what it made before
                store.get(remote.rel(earlier), copy)
        attempt, marker = stage_part(stage, here, node)
        ours = replace(part, attempt=attempt.attempt)
        prefix = remote.rel(ours.staging_dir)
        for path in sorted(p for p in attempt.staging_dir.rglob("*") if p.is_file()):
            store.put(path, f"{prefix}/{path.relative_to(attempt.staging_dir).as_posix()}")
    return ours, marker


def open_copy(location: str, cfg: StorageConfig | None, kind: str = "runs", pull: bool = True) -> WorkingCopy:
    """The working copy of a run (or an input folder, `kind="inputs"`) at `location`, checked and pulled."""
    cfg = cfg or StorageConfig()
    copy = WorkingCopy(open_store(location, cfg), cfg, kind)
    if pull:
        copy.pull(trust_markers=kind == "runs")
    return copy


def fetch_input(location: str, cfg: StorageConfig | None) -> Path:
    """A local copy of an input on a store: a file (its path in the copy) or a folder (the copy's root)."""
    store_cfg = cfg or StorageConfig()
    store = open_store(location, store_cfg)
    if store.stat("") is not None:
        parent, name = location.rstrip("/").rsplit("/", 1)
        return open_copy(parent, store_cfg, "inputs", pull=False).fetch_one(name)
    return open_copy(location, store_cfg, "inputs").local


def local(location, cfg: StorageConfig | None):
    """A config value naming an input, made local: a URL's local copy, else the value itself."""
    return fetch_input(str(location), cfg) if location is not None and is_url(location) else location
