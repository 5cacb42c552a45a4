import io
import tarfile
import time

import pytest

from curate.tars import _plain_members, index_tar, read_files, safe_name


def _tar(path, members, fmt=tarfile.PAX_FORMAT, mtime=None):
    """members: (name, bytes) for files, (name, None) for directories, (name, '->target') for symlinks."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = time.time() if mtime is None else mtime  # a float mtime: a pax header per member, as webdataset writes
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _by_tarfile(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and safe_name(m.name)}


SAMPLES = [(f"{i:08d}.{ext}", bytes([i]) * (i * 97 % 1500)) for i in range(20) for ext in ("jpg", "txt", "json")]
LONG = "d" * 120 + "/00000001.jpg"  # too long for ustar: a pax path record


@pytest.mark.parametrize("fmt,mtime", [(tarfile.PAX_FORMAT, None), (tarfile.USTAR_FORMAT, 0), (tarfile.PAX_FORMAT, 0)])
def test_plain_tars_are_walked_without_tarfile_and_read_the_same(tmp_path, fmt, mtime):
    members = SAMPLES + [("dir", None), ("dir/in.jpg", b"x" * 600), ("empty.jpg", b"")]
    if fmt == tarfile.PAX_FORMAT:
        members.append((LONG, b"long"))
    path = _tar(tmp_path / "a.tar", members, fmt, mtime)
    plain = _plain_members(path.read_bytes(), path.name)
    assert plain is not None, "a tar of plain files takes the header walk"
    assert [name for name, _, _ in plain] == [n for n, d in members if d is not None]
    assert read_files(path, lambda name: True) == (_by_tarfile(path), None)
    index = index_tar(path)
    assert set(index) == {n.partition(".")[0] for n, d in members if d is not None and n.endswith(".jpg")}
    offset, size = index["00000007"]
    assert path.read_bytes()[offset:offset + size] == dict(SAMPLES)["00000007.jpg"]


def test_unsafe_names_are_skipped_by_the_walk_too(tmp_path):
    path = _tar(tmp_path / "a.tar", [("../up.jpg", b"evil"), ("/abs.jpg", b"evil"), ("ok.jpg", b"fine")])
    assert _plain_members(path.read_bytes(), path.name) is not None
    assert read_files(path, lambda name: True) == ({"ok.jpg": b"fine"}, None)


def test_what_the_walk_leaves_to_tarfile(tmp_path):
    links = _tar(tmp_path / "links.tar", [("a.jpg", b"a"), ("b.jpg", "->a.jpg")])
    gnu_long = _tar(tmp_path / "gnu.tar", [(LONG, b"long")], tarfile.GNU_FORMAT, 0)
    whole = _tar(tmp_path / "whole.tar", SAMPLES[:6]).read_bytes()
    truncated, cut_header = tmp_path / "truncated.tar", tmp_path / "cut_header.tar"
    truncated.write_bytes(whole[:len(whole) - 10240 - 300])  # inside the last member's data
    cut_header.write_bytes(whole[:2500])  # inside the second member's pax header block
    bad_checksum = tmp_path / "checksum.tar"
    bad_checksum.write_bytes(whole[:1024 + 100] + b"#" + whole[1024 + 101:])  # the second header is corrupt
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    for path in (links, gnu_long, truncated, cut_header, bad_checksum, empty):
        assert _plain_members(path.read_bytes(), path.name) is None, path.name
    assert read_files(links, lambda name: True) == ({"a.jpg": b"a"}, None)
    assert read_files(gnu_long, lambda name: True) == ({LONG: b"long"}, None)
    files, damage = read_files(truncated, lambda name: True)
    assert damage and set(files) < {n for n, _ in SAMPLES[:6]}
    files, damage = read_files(cut_header, lambda name: True)
    assert files == {"00000000.jpg": b""} and damage
    assert read_files(empty, lambda name: True)[1] is not None
