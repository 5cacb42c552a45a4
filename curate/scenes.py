"""Procedural scenes: simple shapes on a background, drawn with PIL, with captions that describe them."""
from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 20), "purple": (130, 50, 170), "pink": (245, 130, 190), "cyan": (40, 210, 220),
    "brown": (120, 75, 35), "black": (15, 15, 15),
}
BACKGROUNDS = {
    "white": (250, 250, 250), "gray": (128, 128, 128), "light blue": (170, 210, 245),
    "dark green": (20, 70, 35), "beige": (235, 220, 185), "navy": (20, 25, 80),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "bar")
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5)}
SIZES = {"small": 0.12, "large": 0.24}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
SYNONYMS = {"circle": "disc", "square": "box", "triangle": "pyramid shape", "star": "star shape",
            "ring": "hoop", "cross": "plus sign", "diamond": "rhombus", "bar": "stripe"}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    count: int
    size: str
    position: str
    background: str


def random_scene(rng: np.random.Generator) -> Scene:
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    return Scene(shape, color, int(rng.integers(1, 4)), list(SIZES)[rng.integers(2)],
                 list(POSITIONS)[rng.integers(len(POSITIONS))], background)


def perturb_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """Change exactly one attribute: the caption built from it is partly wrong."""
    field = ("shape", "color", "count", "position", "background")[rng.integers(5)]
    options = {"shape": SHAPES, "color": tuple(COLORS), "count": (1, 2, 3),
               "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}[field]
    choices = [o for o in options if o != getattr(scene, field)]
    return replace(scene, **{field: choices[rng.integers(len(choices))]})


def _plural(word: str, count: int) -> str:
    return word if count == 1 else (word + "es" if word.endswith(("x", "s")) else word + "s")


def describe(scene: Scene, paraphrase: bool = False) -> str:
    shape = SYNONYMS[scene.shape] if paraphrase else scene.shape
    noun = _plural(shape, scene.count)
    count = COUNT_WORDS[scene.count]
    if paraphrase:
        return f"{scene.background} backdrop with {count} {scene.color} {scene.size} {noun} at the {scene.position}"
    where = "in the center" if scene.position == "center" else f"on the {scene.position}"
    return f"{count} {scene.size} {scene.color} {noun} {where} of a {scene.background} background"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
    elif shape == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, r, r / 2.5)
        draw.polygon([(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)], fill=fill)


def render(scene: Scene, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Draw the scene; positions jitter a little so that no two images are pixel-identical."""
    img = Image.new("RGB", (width, height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    r = SIZES[scene.size] * side
    px, py = POSITIONS[scene.position]
    for k in range(scene.count):
        offset = (k - (scene.count - 1) / 2) * 2.3 * r
        dx, dy = (offset, 0.0) if scene.position in ("top", "bottom", "center") else (0.0, offset)
        jitter = rng.normal(0, 0.02 * side, size=2)
        _draw_shape(draw, scene.shape, px * width + dx + jitter[0], py * height + dy + jitter[1], r,
                    COLORS[scene.color])
    noise = rng.normal(0, 4, size=(height, width, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=quality)
    return buf.getvalue()
