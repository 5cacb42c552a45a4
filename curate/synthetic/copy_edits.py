"""The edits a picture gets when it is copied around the web, for planting near duplicates with ground truth.

Each edit keeps the picture (a person would call the result the same image): resize + heavy JPEG, an
off-centre crop, padding, a small rotation, brightness, grayscale, blur, a text watermark. A planted copy
gets one edit (named in the pool's `gt_edit` column), then a JPEG re-encode as a re-upload does."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

VERSION = 1  # part of the synth fingerprint: a change here makes new pools
EDITS = ("resize_jpeg", "crop", "pad", "rotate", "brightness", "grayscale", "blur", "watermark")
# More edits a copy gets, not planted in pools: benchmarks/quality_verifier.py asks whether the copy verifier, which
# learnt EDITS only, finds them too (edits it never saw).
TONE_EDITS = ("contrast", "saturation", "noise", "sharpen")
# Watermarks of any look (random text, size, opacity, colour and place), not planted in pools: quality_verifier.py asks
# whether the verifier, which learnt the planted watermark's few looks, finds them; the fit can learn them instead.
ANY_WATERMARK = "any_watermark"


def _resize_jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """60-90% of the size; the heavy JPEG comes with the re-encode (`jpeg_quality`)."""
    w, h = img.size
    scale = rng.uniform(0.6, 0.9)
    return img.resize((max(32, round(w * scale)), max(32, round(h * scale))), Image.Resampling.BILINEAR)


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """5-15% of each axis cut off, split unevenly between the two sides (off-centre)."""
    w, h = img.size
    cut_x, cut_y = rng.uniform(0.05, 0.15, size=2)
    left, top = rng.uniform(0, 1, size=2)
    x0, y0 = round(w * cut_x * left), round(h * cut_y * top)
    return img.crop((x0, y0, x0 + round(w * (1 - cut_x)), y0 + round(h * (1 - cut_y))))


def _pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A plain border of 3-12% of each side, uneven, in white, black or the picture's corner colour."""
    w, h = img.size
    left, right, top, bottom = (round(s * f) for s, f in zip((w, w, h, h), rng.uniform(0.03, 0.12, size=4)))
    colour = [(255, 255, 255), (0, 0, 0), img.getpixel((0, 0))][int(rng.integers(3))]
    return ImageOps.expand(img, (left, top, right, bottom), fill=colour)


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(2, 6) * rng.choice([-1, 1])
    return img.rotate(angle, Image.Resampling.BICUBIC, fillcolor=img.getpixel((0, 0)))


def _brightness(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))


def _grayscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=min(img.size) * rng.uniform(0.01, 0.02)))


def _contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(rng.choice([rng.uniform(0.65, 0.85), rng.uniform(1.15, 1.4)]))


def _saturation(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Color(img).enhance(rng.choice([rng.uniform(0.4, 0.8), rng.uniform(1.2, 1.6)]))


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian sensor-like noise, 4-10 levels."""
    pixels = np.asarray(img).astype(np.float32)
    return Image.fromarray(np.clip(pixels + rng.normal(0, rng.uniform(4, 10), pixels.shape), 0, 255).astype(np.uint8))


def _sharpen(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.UnsharpMask(radius=rng.uniform(1, 2.5), percent=int(rng.integers(80, 200)),
                                              threshold=int(rng.integers(0, 4))))


def _watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A short half-transparent text in a corner, about a tenth of the picture's height."""
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = ["(c) stock", "sample", "www.pics.com", "PREVIEW"][int(rng.integers(4))]
    size = max(8, round(img.size[1] * 0.1))
    font = draw.getfont() if size < 11 else _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    corner_x, corner_y = rng.integers(2, size=2)
    x = 2 if corner_x == 0 else max(2, img.size[0] - tw - 2)
    y = 2 if corner_y == 0 else max(2, img.size[1] - th - 4)
    shade = int(rng.choice([0, 255]))
    draw.text((x, y), text, fill=(shade, shade, shade, 150), font=font)
    return Image.alpha_composite(out, layer).convert("RGB")


def _any_watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Text of any look: 3-14 random letters, digits and marks, 5-16% of the picture's height, 30-85% opaque,
    black, white, gray or a colour, in a corner, along an edge or across the middle. Text under 10 px is drawn on
    the picture enlarged and shrunk back, as a watermark drawn on a large picture shows in its thumbnail."""
    w, h = img.size
    size = h * rng.uniform(0.05, 0.16)
    scale = max(1, int(np.ceil(10 / size)))
    out = img.convert("RGBA").resize((w * scale, h * scale), Image.Resampling.BICUBIC)
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-(c)@ "
    text = "".join(rng.choice(list(alphabet), size=int(rng.integers(3, 15)))).strip() or "(c)"
    font = _font(round(size * scale))
    box = draw.textbbox((0, 0), text, font=font)
    tw, th, margin = box[2] - box[0], box[3] - box[1], 2 * scale
    x = [margin, (out.size[0] - tw) // 2, out.size[0] - tw - margin][int(rng.integers(3))]
    y = [margin, (out.size[1] - th) // 2, out.size[1] - th - 2 * margin][int(rng.integers(3))]
    shade = [(0, 0, 0), (255, 255, 255), (128, 128, 128), tuple(int(c) for c in rng.integers(256, size=3))]
    fill = shade[int(rng.integers(len(shade)))] + (int(rng.integers(77, 217)),)
    draw.text((max(0, x), max(0, y) - box[1]), text, fill=fill, font=font)
    marked = Image.alpha_composite(out, layer)
    return (marked.resize((w, h), Image.Resampling.LANCZOS) if scale > 1 else marked).convert("RGB")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def edit_copy(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """`img` with the edit `kind` (one of EDITS, TONE_EDITS or ANY_WATERMARK) applied; the caller re-encodes
    it."""
    return {"resize_jpeg": _resize_jpeg, "crop": _crop, "pad": _pad, "rotate": _rotate, "brightness": _brightness,
            "grayscale": _grayscale, "blur": _blur, "watermark": _watermark, "any_watermark": _any_watermark,
            "contrast": _contrast, "saturation": _saturation, "noise": _noise,
            "sharpen": _sharpen}[kind](img.convert("RGB"), rng)


def jpeg_quality(kind: str, rng: np.random.Generator) -> int:
    """The re-upload's JPEG quality: heavy for `resize_jpeg`, ordinary otherwise."""
    return int(rng.integers(30, 50)) if kind == "resize_jpeg" else int(rng.integers(70, 90))
