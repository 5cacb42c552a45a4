"""Lookalikes: a picture with a local change of content, which makes it a different picture that still looks
much like the first (another skin tone or colourway, another glyph in the same frame, a badge added). The
copy verifier (curate.dedup.copy_verifier) learns from them, beside the edits of curate.synthetic.copy_edits,
what a copy is not. Nothing here is tuned to a data set: each change is drawn at random on whatever picture it gets."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("recolour", "patch", "shape")
BACKGROUND_LEVELS = 45  # a pixel this far (sum of |RGB| levels) from the corner colour is foreground


def _recolour(img: Image.Image, other: Image.Image, rng: np.random.Generator) -> Image.Image | None:
    """One connected region of near-uniform colour (2-40% of the picture, at most half its foreground) moved to
    another colour: a skin tone, a colourway."""
    a = np.asarray(img).astype(np.int16)
    h, w, _ = a.shape
    foreground = np.abs(a - a[0, 0]).sum(2) > BACKGROUND_LEVELS
    for _ in range(20):
        y, x = int(rng.integers(h)), int(rng.integers(w))
        labels, _ = ndimage.label(np.abs(a - a[y, x]).sum(2) < 60)
        region = labels == labels[y, x]
        if not 0.02 <= region.mean() <= 0.4 or (region & foreground).sum() > 0.5 * max(foreground.sum(), 1):
            continue
        if rng.random() < 0.5:
            new = a[region] + rng.choice([-1, 1]) * rng.uniform(30, 130)
        else:
            new = a[region][:, rng.permutation(3)] + rng.uniform(-40, 40, 3)
        new = np.clip(new, 0, 255)
        if np.abs(new - a[region]).mean() >= 25:
            a[region] = new
            return Image.fromarray(a.astype(np.uint8))
    return None


def _patch(img: Image.Image, other: Image.Image, rng: np.random.Generator) -> Image.Image | None:
    """A rectangle (20-40% of each side) taken from the same place of another picture: another glyph in the frame."""
    a, b = np.asarray(img).copy(), np.asarray(other.convert("RGB").resize(img.size))
    h, w, _ = a.shape
    ph, pw = int(h * rng.uniform(0.2, 0.4)), int(w * rng.uniform(0.2, 0.4))
    y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    if np.abs(a[y:y + ph, x:x + pw].astype(int) - b[y:y + ph, x:x + pw]).mean() < 25:
        return None
    a[y:y + ph, x:x + pw] = b[y:y + ph, x:x + pw]
    return Image.fromarray(a)


def _shape(img: Image.Image, other: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An opaque disc, bar or thick stroke (15-30% of the side) in one of the picture's own colours, drawn
    where it changes at least 1% of the picture (else in the inverse of the colour under it)."""
    w, h = img.size
    pixels = np.asarray(img)
    out = img
    for attempt in range(10):
        out = img.copy()
        s = rng.uniform(0.15, 0.3) * min(w, h)
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        colour = tuple(int(c) for c in pixels.reshape(-1, 3)[rng.integers(w * h)])
        if attempt == 9:
            colour = tuple(255 - int(c) for c in pixels[int(y + s / 2), int(x + s / 2)])
        draw = ImageDraw.Draw(out)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse((x, y, x + s, y + s), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + s, y + s * rng.uniform(0.3, 1)), fill=colour)
        else:
            draw.line((x, y, x + s, y + s * rng.uniform(-1, 1)), fill=colour, width=max(3, int(s / 4)))
        if (np.abs(np.asarray(out).astype(int) - pixels).sum(2) > 30).mean() >= 0.01:
            break
    return out


def lookalike(img: Image.Image, other: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A different picture much like `img` (RGB) and the kind of change; `other` lends a patch."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    out = {"recolour": _recolour, "patch": _patch, "shape": _shape}[kind](img.convert("RGB"), other, rng)
    if out is None:  # no region fit for the change
        kind, out = "shape", _shape(img.convert("RGB"), other, rng)
    return out, kind
