"""Decoding downloaded images to RGB at the smallest scale a model needs.

A JPEG decodes at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or 1/8) that keeps both sides at least
`min_side`, exactly as PIL's draft mode picks it. Plain baseline and progressive JPEGs with one or three
components that end in an EOI marker go through OpenCV's decoder (img2dataset's own dependency), which gives the
same pixels as PIL's draft mode at less than half the cost; everything else (other formats, CMYK, truncated
files, images over PIL's pixel limit) goes through PIL, whose errors and conversions are the defined behaviour."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

FRAME_MARKERS = (0xC0, 0xC1, 0xC2)  # SOF0-2: baseline, extended and progressive Huffman
OTHER_FRAMES = {m for m in range(0xC3, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}  # lossless, arithmetic, ...
START_OF_SCAN = 0xDA
REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a Huffman JPEG's frame header; None for anything else."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in FRAME_MARKERS:
            if pos + 10 > end:
                return None
            return (int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big"),
                    data[pos + 9])
        if marker == START_OF_SCAN or marker in OTHER_FRAMES:
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def draft_scale(width: int, height: int, min_side: int) -> int:
    """The DCT scale denominator PIL's draft mode picks: the largest of 8, 4, 2, 1 keeping both sides >= min_side."""
    fits = min(width // min_side, height // min_side)
    return next((a for a in (8, 4, 2) if fits >= a), 1)


def _decode_jpeg_fast(data: bytes, min_side: int) -> np.ndarray | None:
    """RGB pixels of a plain JPEG through OpenCV at draft scale (EXIF orientation ignored, as PIL does);
    None where PIL should decide."""
    frame = jpeg_frame(data)
    if frame is None or frame[2] not in (1, 3) or not data.endswith(b"\xff\xd9"):
        return None
    width, height, _ = frame
    if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")) or min(width, height) == 0:
        return None
    flags = REDUCED_FLAGS[draft_scale(width, height, max(min_side, 1))] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_rgb(data: bytes, min_side: int) -> Image.Image:
    """Decode to an RGB image whose sides are at least `min_side` where the original's are (a JPEG decodes at a
    reduced scale, which the model's resize would throw away anyway). Raises PIL's errors for what does not decode."""
    pixels = _decode_jpeg_fast(data, min_side)
    if pixels is not None:
        return Image.fromarray(pixels)
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (min_side, min_side))
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")  # convert would copy even an RGB image
