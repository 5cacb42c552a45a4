"""Bytes of hostile and broken images and tars for the bad-input catalogue (made in memory with PIL and
zlib, so nothing is downloaded)."""
import io
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_bomb(side: int = 10_240) -> bytes:
    """A real decompression bomb: side x side zero pixels (105 MB raw for 10,240) in ~100 kB."""
    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    return _png(side, side, b"".join(comp.compress(row) for _ in range(side)) + comp.flush())


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims another size."""
    good = _encode(_rgb(16, 16), "JPEG")
    sof = good.index(b"\xff\xc0")
    return good[:sof + 5] + struct.pack(">HH", height, width) + good[sof + 9:]


IMAGES = {
    "jpeg": lambda: _encode(_rgb(), "JPEG"),
    "cmyk_jpeg": lambda: _encode(_rgb().convert("CMYK"), "JPEG"),
    "grayscale_jpeg": lambda: _encode(_rgb().convert("L"), "JPEG"),
    "png_16bit": lambda: _encode(Image.fromarray(np.random.default_rng(1).integers(0, 65535, (64, 64)).astype(np.uint16)), "PNG"),
    "palette_png": lambda: _encode(_rgb().convert("P"), "PNG"),
    "transparent_png": lambda: _encode(_rgb().convert("RGBA"), "PNG"),
    "animated_gif": lambda: _encode(_rgb(), "GIF", save_all=True, append_images=[_rgb(seed=2), _rgb(seed=3)], duration=50),
    "webp": lambda: _encode(_rgb(), "WEBP"),
    "truncated_jpeg": lambda: _encode(_rgb(), "JPEG")[:600],
    "truncated_png": lambda: _encode(_rgb(), "PNG")[:300],
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
    "html": lambda: b"<!doctype html><html><body>404</body></html>",
    "random_bytes": lambda: np.random.default_rng(5).bytes(4096),
    "empty": lambda: b"",
    "png_declaring_50000px_sides": lambda: _png(50_000, 50_000, zlib.compress(bytes(1000))),
    "jpeg_declaring_60000px_sides": lambda: jpeg_declaring(60_000, 60_000),
    "png_decompression_bomb": png_bomb,
    "tiny": lambda: _encode(_rgb(8, 8), "PNG"),
    "extreme_aspect": lambda: _encode(_rgb(400, 40), "PNG"),
}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
