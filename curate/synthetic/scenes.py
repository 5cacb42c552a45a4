"""Procedural scenes: simple shapes on a background, drawn with PIL, with captions that describe them."""
from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SCENES_VERSION = 2  # part of a pool's identity: a changed generator makes a new pool, never a mix

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
             "center": (0.5, 0.5), "top left": (0.25, 0.25), "top right": (0.75, 0.25),
             "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75)}
SIZES = {"small": 0.09, "medium": 0.13, "large": 0.18}
PATTERNS = ("plain", "striped", "dotted")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
SYNONYMS = {"circle": "disc", "square": "box", "triangle": "pyramid shape", "star": "star shape",
            "ring": "hoop", "cross": "plus sign", "diamond": "rhombus", "bar": "stripe"}


@dataclass(frozen=True)
class Group:
    """`count` equal shapes side by side at one position."""

    shape: str
    color: str
    count: int
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """One or two groups at distinct positions on a plain or patterned background. Millions of
    combinations, so two independently drawn scenes almost never share a caption."""

    groups: tuple[Group, ...]
    background: str
    pattern: str

    @property
    def shape(self) -> str:
        """The first group's shape: the scene's class label."""
        return self.groups[0].shape


def _pick(rng: np.random.Generator, options) -> object:
    options = tuple(options)
    return options[rng.integers(len(options))]


def random_scene(rng: np.random.Generator) -> Scene:
    positions = [str(p) for p in rng.permutation(list(POSITIONS))[:2]]
    n_groups = 2 if rng.random() < 0.6 else 1
    groups = tuple(Group(_pick(rng, SHAPES), _pick(rng, COLORS), int(rng.integers(1, 4)), _pick(rng, SIZES), positions[k])
                   for k in range(n_groups))
    return Scene(groups, _pick(rng, BACKGROUNDS), _pick(rng, PATTERNS))


def perturb_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """Change exactly one attribute (of one group, or the background): the caption is partly wrong."""
    field = _pick(rng, ("shape", "color", "count", "position", "background"))
    if field == "background":
        return replace(scene, background=_pick(rng, [b for b in BACKGROUNDS if b != scene.background]))
    k = int(rng.integers(len(scene.groups)))
    taken = {g.position for g in scene.groups}
    options = {"shape": SHAPES, "color": tuple(COLORS), "count": (1, 2, 3),
               "position": [p for p in POSITIONS if p not in taken]}[field]
    group = scene.groups[k]
    group = replace(group, **{field: _pick(rng, [o for o in options if o != getattr(group, field)])})
    return replace(scene, groups=scene.groups[:k] + (group,) + scene.groups[k + 1:])


def _plural(word: str, count: int) -> str:
    return word if count == 1 else (word + "es" if word.endswith(("x", "s")) else word + "s")


def _where(position: str) -> str:
    if position == "center":
        return "in the center"
    return f"{'on' if position in ('left', 'right') else 'at'} the {position}"


def describe(scene: Scene, paraphrase: bool = False) -> str:
    background = scene.background if scene.pattern == "plain" else f"{scene.pattern} {scene.background}"
    if paraphrase:
        parts = [f"{COUNT_WORDS[g.count]} {g.color} {g.size} {_plural(SYNONYMS[g.shape], g.count)} at the {g.position}"
                 for g in scene.groups]
        return f"{background} backdrop with " + " plus ".join(parts)
    parts = [f"{COUNT_WORDS[g.count]} {g.size} {g.color} {_plural(g.shape, g.count)} {_where(g.position)}"
             for g in scene.groups]
    return " and ".join(parts) + f" of a {background} background"


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


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, base, width: int, height: int) -> None:
    shade = tuple(int(c * 0.8 + 20) for c in base)
    step = max(6, min(width, height) // 10)
    if pattern == "striped":
        for x in range(0, width, step):
            draw.rectangle((x, 0, x + step // 3, height), fill=shade)
    elif pattern == "dotted":
        for x in range(step // 2, width, step):
            for y in range(step // 2, height, step):
                draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=shade)


def render(scene: Scene, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Draw the scene; positions jitter a little so that no two images are pixel-identical."""
    img = Image.new("RGB", (width, height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    _draw_pattern(draw, scene.pattern, BACKGROUNDS[scene.background], width, height)
    side = min(width, height)
    for group in scene.groups:
        r = SIZES[group.size] * side
        px, py = POSITIONS[group.position]
        for k in range(group.count):
            offset = (k - (group.count - 1) / 2) * 2.2 * r
            dx, dy = (0.0, offset) if group.position in ("left", "right") else (offset, 0.0)
            jitter = rng.normal(0, 0.015 * side, size=2)
            _draw_shape(draw, group.shape, px * width + dx + jitter[0], py * height + dy + jitter[1], r,
                        COLORS[group.color])
    noise = rng.normal(0, 4, size=(height, width, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=quality)
    return buf.getvalue()
