"""Reading tars that may be damaged or hostile: only regular files with plain relative names, and a
truncated tar yields what precedes the damage instead of raising. Nothing is ever extracted to disk."""
from __future__ import annotations

import logging
import tarfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import pyarrow as pa

from curate.schema import STATUS, UID, Status

log = logging.getLogger(__name__)


def safe_name(name: str) -> bool:
    """A relative POSIX name without `..`, NUL or backslashes (WebDataset keys never need them)."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and not any(c in name for c in "\\\0")


def _safe(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        if member.isfile() and safe_name(member.name):
            yield member
        elif member.isfile() or member.issym() or member.islnk():
            log.warning("%s: skipping member %r (absolute, `..` or link)", tar.name, member.name)


def safe_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Regular-file members with safe names, in order; stops with a warning where the tar is damaged."""
    try:
        yield from _safe(tar)
    except (tarfile.TarError, EOFError) as err:
        log.warning("%s is damaged (%s); reading only what precedes it", tar.name, err)


def read_files(path: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, bytes], str | None]:
    """({member name: bytes} of the safe members `wanted` accepts, the damage found or None).
    A missing file raises FileNotFoundError: that is not damage inside a tar but no tar at all."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for member in _safe(tar):
                if wanted(member.name):
                    files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as err:
        log.warning("%s is damaged (%s); kept the %d members before it", path, err, len(files))
        return files, f"{type(err).__name__}: {err}"
    return files, None


def shard_path(download_dir: Path, shard: str) -> Path:
    """A download part's `shard` value as a path, which must lie inside `download_dir`."""
    root = Path(download_dir).resolve()
    path = (root / shard).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"shard {shard!r} points outside {root}; the download parts are not ours")
    return path


def read_images(table: pa.Table, download_dir: Path) -> dict[str, bytes]:
    """uid -> image bytes of a download table's `ok` rows (columns uid, status, shard, key), reading each
    tar once. A row whose member is missing or in the damaged part of its tar is absent from the result."""
    wanted: dict[str, dict[str, str]] = {}
    for uid, status, shard, key in zip(*(table.column(c).to_pylist() for c in (UID, STATUS, "shard", "key"))):
        if status == Status.OK and shard and key:
            wanted.setdefault(shard, {})[key] = uid
    images: dict[str, bytes] = {}
    for shard, keys in wanted.items():
        path = shard_path(download_dir, shard)

        def wanted_member(name: str) -> bool:
            key, _, ext = name.partition(".")
            return key in keys and ext.lower() in ("jpg", "jpeg", "png", "webp")

        files, _ = read_files(path, wanted_member)
        images.update((keys[name.partition(".")[0]], data) for name, data in files.items())
    return images


def index_tar(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (byte offset, size) of each image member, reading headers only. Members past damage, with
    unsafe names, or whose bytes the file does not fully hold are left out (their samples count as missing)."""
    found = {}
    file_size = path.stat().st_size
    with tarfile.open(path) as tar:
        for member in safe_members(tar):
            key, _, ext = member.name.partition(".")
            if ext.lower() in ("jpg", "jpeg", "png", "webp") and member.offset_data + member.size <= file_size:
                found[key] = (member.offset_data, member.size)
    return found
