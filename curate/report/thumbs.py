"""Thumbnails for galleries: read a few images from img2dataset's tars by key, downscale, embed as data URIs."""
from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

from PIL import Image

from curate.report.html import esc, fmt
from curate.tars import MemberReader, index_tar, shard_path

log = logging.getLogger(__name__)


def _thumbnail(data: bytes, size_px: int) -> str:
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size_px, size_px))
        im = im.convert("RGB")
        im.thumbnail((size_px, size_px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(download_dir: Path, wanted: list[tuple[str, str]], size_px: int = 128) -> dict[tuple[str, str], str]:
    """(shard, key) -> JPEG data URI; each tar's header index is read once. Images that no longer read or
    decode, or whose shard is missing or lies outside the download folder, are left out (the tile says so)."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        if shard and key:
            by_shard.setdefault(shard, set()).add(key)
    found: dict[tuple[str, str], str] = {}
    with MemberReader() as reader:
        for shard, keys in sorted(by_shard.items()):
            try:
                path = shard_path(download_dir, shard)
                index = index_tar(path)
            except (OSError, ValueError) as err:
                log.warning("report: %s: %s; its thumbnails are left out", shard, err)
                continue
            for key in sorted(keys & index.keys()):
                try:
                    found[(shard, key)] = _thumbnail(reader.read(path, *index[key]), size_px)
                except (OSError, ValueError, Image.DecompressionBombError) as err:
                    log.warning("report: %s %s does not decode: %s", shard, key, err)
    return found


def tile(uri: str | None, caption: str, lines: list[tuple[str, str]], kept: bool = False) -> str:
    """One sample: image (or a note), caption, and label lines as (css class, text)."""
    picture = f'<img src="{uri}" alt="{esc(caption[:80])}">' if uri else '<p class="muted">image not available</p>'
    extra = "".join(f'<div class="{esc(cls)}">{esc(text)}</div>' for cls, text in lines)
    return (f'<div class="tile{" keep" if kept else ""}">{picture}<div class="cap" title="{esc(caption)}">'
            f'{esc(caption)}</div>{extra}</div>')


def score_lines(row: dict, columns: list[str]) -> list[tuple[str, str]]:
    return [("sc", f"{c.removeprefix('score_')} {fmt(row[c], 3)}") for c in columns if row.get(c) is not None]
