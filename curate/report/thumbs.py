"""Thumbnails for galleries: read a few images from img2dataset's tars by key, downscale, embed as data URIs."""
from __future__ import annotations

import base64
import io
import logging
import tarfile
from pathlib import Path

from PIL import Image

from curate.report.html import esc, fmt
from curate.tars import IMAGE_EXTS, safe_members

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
    """(shard, key) -> JPEG data URI; each tar is opened once and read only until its keys are found.
    Images that no longer read or decode are left out (the tile says so)."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        if shard and key:
            by_shard.setdefault(shard, set()).add(key)
    found: dict[tuple[str, str], str] = {}
    for shard, keys in sorted(by_shard.items()):
        path = Path(download_dir) / shard
        if not path.exists():
            log.warning("report: %s is missing; its thumbnails are left out", path)
            continue
        left = set(keys)
        with tarfile.open(path) as tar:
            for member in safe_members(tar):
                key, _, ext = member.name.partition(".")
                if key in left and ext.lower() in IMAGE_EXTS:
                    try:
                        found[(shard, key)] = _thumbnail(tar.extractfile(member).read(), size_px)
                    except (OSError, ValueError, tarfile.TarError, Image.DecompressionBombError) as err:
                        log.warning("report: %s %s does not decode: %s", shard, key, err)
                    left.discard(key)
                    if not left:
                        break
    return found


def tile(uri: str | None, caption: str, lines: list[tuple[str, str]], kept: bool = False) -> str:
    """One sample: image (or a note), caption, and label lines as (css class, text)."""
    picture = f'<img src="{uri}" alt="{esc(caption[:80])}">' if uri else '<p class="muted">image not available</p>'
    extra = "".join(f'<div class="{esc(cls)}">{esc(text)}</div>' for cls, text in lines)
    return (f'<div class="tile{" keep" if kept else ""}">{picture}<div class="cap" title="{esc(caption)}">'
            f'{esc(caption)}</div>{extra}</div>')


def score_lines(row: dict, columns: list[str]) -> list[tuple[str, str]]:
    return [("sc", f"{c.removeprefix('score_')} {fmt(row[c], 3)}") for c in columns if row.get(c) is not None]
