"""The one way to read tars, which may be damaged or hostile: index the members, then read by offset. Only
regular files with plain relative names are listed, a truncated tar yields what precedes the damage instead of
raising, and a download table's `shard` value must name a file inside the download folder (`shard_path`).
Nothing is ever extracted to disk.

A well-formed tar of regular files (ustar, or pax as webdataset and img2dataset write them: a pax header with
the mtime before every member) is indexed by walking its 512-byte headers directly (`tar_members` maps the file
and touches only the headers, `read_files` reads it whole), 3-6x cheaper than `tarfile`'s member objects;
anything else (links, GNU long names, bad checksums, truncation) is left to `tarfile`."""
from __future__ import annotations

import logging
import mmap
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from curate.schema import STATUS, UID, Status

log = logging.getLogger(__name__)


def safe_name(name: str) -> bool:
    """A relative POSIX name without `..`, NUL or backslashes (WebDataset keys never need them)."""
    return bool(name) and not name.startswith("/") and ".." not in name.split("/") and "\\" not in name and "\0" not in name


def _safe(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        if member.isfile() and safe_name(member.name):
            yield member
        elif member.isfile() or member.issym() or member.islnk():
            log.warning("%s: skipping member %r (absolute, `..` or link)", tar.name, member.name)


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
BLOCK = 512
END_BLOCK = bytes(BLOCK)
USTAR_MAGIC = b"ustar\x0000"


class _Unusual(Exception):
    """Something the header walk leaves to `tarfile`."""


def _number(field: bytes) -> int:
    """A header's octal number field (size, checksum)."""
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (sizes over 8 GB)
        raise _Unusual
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise _Unusual from None


def _pax_records(data: bytes) -> dict[str, str]:
    """The newline-ended `LENGTH key=value` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise _Unusual
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _walk_headers(data, tar_name: str) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file of a well-formed tar; raises _Unusual otherwise."""
    file_size = len(data)
    members, pos, pax = [], 0, {}
    while pos + BLOCK <= file_size:
        header = data[pos:pos + BLOCK]
        if header == END_BLOCK:
            return members
        if _number(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * ord(" "):
            raise _Unusual
        kind, size = header[156:157], _number(header[124:136])
        if kind in (b"0", b"\0") and "size" in pax:
            size = int(pax["size"]) if pax["size"].isdigit() else -1
        data_at, end = pos + BLOCK, pos + BLOCK + size
        if size < 0 or end > file_size:
            raise _Unusual
        if kind == b"x":
            pax = _pax_records(data[data_at:end])
        elif kind in (b"0", b"\0"):
            member = pax.get("path") or _ustar_name(header)
            if kind == b"\0" and member.endswith("/"):  # an old-style directory, as tarfile reads it
                pass
            elif safe_name(member):
                members.append((member, data_at, size))
            else:
                log.warning("%s: skipping member %r (absolute, `..` or link)", tar_name, member)
            pax = {}
        elif kind == b"5":
            pax = {}
        else:
            raise _Unusual
        pos = data_at + -(-size // BLOCK) * BLOCK
    if pos != file_size or pax:  # cut inside a header or after a pax header: tarfile reports the damage
        raise _Unusual
    return members


def _ustar_name(header: bytes) -> str:
    """The member name of a ustar header: prefix/name where the POSIX magic says there is a prefix."""
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == USTAR_MAGIC else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def _plain_members(data: bytes, tar_name: str) -> list[tuple[str, int, int]] | None:
    """`_walk_headers` of a tar's bytes, or None where `tarfile` must read it."""
    if len(data) < BLOCK:  # empty, or cut inside the first header: tarfile's error names it
        return None
    try:
        return _walk_headers(data, tar_name)
    except _Unusual:
        return None


def _tarfile_members(path: Path) -> tuple[list[tuple[str, int, int]], str | None]:
    """`tar_members` by `tarfile`, for the tars the header walk leaves to it."""
    file_size, members, damage = path.stat().st_size, [], None
    try:
        with tarfile.open(path) as tar:
            for member in _safe(tar):
                if member.offset_data + member.size <= file_size:
                    members.append((member.name, member.offset_data, member.size))
                else:
                    damage = f"{member.name} is cut off at byte {file_size}"
    except (tarfile.TarError, EOFError) as err:
        damage = f"{type(err).__name__}: {err}"
    if damage:
        log.warning("%s is damaged (%s); kept the %d members before it", path, damage, len(members))
    return members, damage


def tar_members(path: Path) -> tuple[list[tuple[str, int, int]], str | None]:
    """((name, data offset, size) of each safe regular-file member the file fully holds, in order; the damage
    found or None), reading headers only. A missing file raises FileNotFoundError: no tar at all."""
    path = Path(path)
    if path.stat().st_size >= BLOCK:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            members = _plain_members(data, str(path))  # touches the header pages only
        if members is not None:
            return members, None
    return _tarfile_members(path)


class MemberReader:
    """Members' bytes by the offsets `tar_members` or `index_tar` gave, each tar opened once; a context manager."""

    def __init__(self):
        self.files: dict[str, object] = {}

    def read(self, path: Path | str, offset: int, size: int) -> bytes:
        f = self.files.get(str(path)) or self.files.setdefault(str(path), open(path, "rb"))
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()

    def __enter__(self) -> "MemberReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_files(path: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, bytes], str | None]:
    """({member name: bytes} of the safe members `wanted` accepts, the damage found or None), reading the
    file once (for readers that want most of a tar)."""
    data = Path(path).read_bytes()
    members = _plain_members(data, str(path))
    damage = None
    if members is None:
        members, damage = _tarfile_members(Path(path))
    return {name: data[offset:offset + size] for name, offset, size in members if wanted(name)}, damage


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
            return key in keys and ext.lower() in IMAGE_EXTS

        files, _ = read_files(path, wanted_member)
        images.update((keys[name.partition(".")[0]], data) for name, data in files.items())
    return images


def index_tar(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (byte offset, size) of each image member, reading headers only. Members past damage, with
    unsafe names, or whose bytes the file does not fully hold are left out (their samples count as missing)."""
    found = {}
    for name, offset, size in tar_members(path)[0]:
        key, _, ext = name.partition(".")
        if ext.lower() in IMAGE_EXTS:
            found[key] = (offset, size)
    return found
