"""Uids as numbers: each uid's two 16-hex halves (DataComp's subset format) and joins on them, which hold
16 bytes a row where a hash join on the strings holds several times that."""
from __future__ import annotations

import binascii

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def uid_halves(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 2) uint64: each uid's two 16-hex halves, straight from Arrow's buffers (no Python strings)."""
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    if len(arr) == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    if arr.null_count or not pc.all(pc.equal(pc.binary_length(arr), 32)).as_py():
        raise ValueError("uids must be 32 hex characters")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    hex_bytes = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].tobytes()
    return np.frombuffer(binascii.unhexlify(hex_bytes), dtype=">u8").reshape(-1, 2).astype(np.uint64)


def uid_bytes(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each uid as 16 big-endian bytes ('S16'), which sort as the hex strings do; a chunk at a time."""
    chunks = uids.chunks if isinstance(uids, pa.ChunkedArray) else [uids]
    out = np.empty(len(uids), "S16")
    at = 0
    for chunk in chunks:
        out[at:at + len(chunk)] = np.ascontiguousarray(uid_halves(chunk).astype(">u8")).view("S16").reshape(-1)
        at += len(chunk)
    return out


def uid_index(targets: pa.Array | pa.ChunkedArray, uids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Like `pc.index_in(targets, uids)`: per target, the first row of `uids` with that uid, null where none."""
    keys = uid_bytes(uids)
    order = np.argsort(keys, kind="stable")
    ordered, wanted = keys[order], uid_bytes(targets)
    if not len(ordered):
        return pa.nulls(len(wanted), pa.int64())
    at = np.searchsorted(ordered, wanted).clip(max=len(ordered) - 1)
    return pa.array(order[at], mask=ordered[at] != wanted)
