"""A web-like pool with ground truth: clean pairs, planted noise, planted duplicates, broken entries.

The same noise model runs on procedurally drawn scenes or on a clean pairs directory (`from_pairs`).
Writes `pool.parquet` (uid, url, caption, gt_* columns), the files it serves under `files/`, and
`serve.json` (where the loopback server must listen for the URLs to resolve).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.io import atomic_write_json, atomic_write_parquet, fingerprint, read_json
from curate.mirror import local
from curate.pairs import PAIRS_TABLE, read_pairs
from curate.schema import Status, make_uid
from curate.stage import RunContext, Step
from curate.storage import Location
from curate.synthetic import copy_edits
from curate.synthetic.copy_edits import EDITS, edit_copy, jpeg_quality
from curate.synthetic.scenes import SCENES_VERSION, describe, encode, perturb_scene, random_scene, render
from curate.synthetic.serve import free_port

log = logging.getLogger(__name__)

# Each broken kind and the download status it must end in.
BROKEN_KINDS = {
    "broken_http_404": Status.HTTP_ERROR,
    "broken_http_500": Status.HTTP_ERROR,
    "broken_timeout": Status.TIMEOUT,
    "broken_reset": Status.CONNECTION_ERROR,
    "broken_redirect_loop": Status.REDIRECT_LOOP,
    "broken_robots": Status.BLOCKED_ROBOTS,
    "broken_corrupt": Status.DECODE_ERROR,
    "broken_truncated": Status.DECODE_ERROR,
    "broken_empty": Status.DECODE_ERROR,
    "broken_html": Status.DECODE_ERROR,
    "broken_tiny": Status.TOO_SMALL,
    "broken_aspect": Status.BAD_ASPECT_RATIO,
}
CAPTION_NOISE = ("mismatched_caption", "boilerplate_caption", "partial_caption")
BOILERPLATE = ("IMG_{n:04d}.JPG", "DSC{n:05d}.jpg", "click here", "image", "Untitled", "photo", "thumbnail",
               "stock photo", "no description available", "view larger image", "product image {n}", "placeholder")
SEED_SPLIT = "seed_pairs"  # synth/seed_pairs/: the from_pairs rows kept out of the pool (seed_split_fraction)
PARAPHRASES = ("a picture of {c}", "{c}, shown as an image", "an illustration of {c}", "image: {c}")


class NoiseConfig(BaseModel):
    """Fractions of the whole pool; what is left is clean."""

    model_config = ConfigDict(extra="forbid")
    mismatched_caption: float = Field(0.08, ge=0, le=1)
    boilerplate_caption: float = Field(0.05, ge=0, le=1)
    partial_caption: float = Field(0.07, ge=0, le=1)
    exact_duplicate: float = Field(0.05, ge=0, le=1)
    near_duplicate: float = Field(0.05, ge=0, le=1)
    broken: float = Field(0.06, ge=0, le=1)
    broken_kinds: list[str] = Field(default_factory=lambda: list(BROKEN_KINDS))

    @model_validator(mode="after")
    def _check(self) -> "NoiseConfig":
        unknown = sorted(set(self.broken_kinds) - set(BROKEN_KINDS))
        if unknown:
            raise ValueError(f"unknown broken_kinds {unknown}; choose from {sorted(BROKEN_KINDS)}")
        total = sum(getattr(self, k) for k in (*CAPTION_NOISE, "exact_duplicate", "near_duplicate", "broken"))
        if total > 0.9:
            raise ValueError(f"noise fractions add up to {total:.2f}; keep them at most 0.9")
        return self


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int | None = Field(2000, ge=10, description="pool rows; from_pairs defaults to every pair plus duplicates")
    seed: int = 0
    from_pairs: Location | None = Field(None, description="a clean pairs directory (or its URL) to add noise to")
    pairs_filter: dict[str, list[str]] = Field(
        default_factory=dict, description="from_pairs rows to use, by column values, e.g. {vendor: [twitter]}")
    seed_split_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the from_pairs rows kept out of the pool and written clean to "
                                     "seed_pairs/: a trusted seed set for the filter network, disjoint from the pool")
    min_side_px: int = Field(96, ge=40)
    max_side_px: int = Field(160, ge=40)
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port when the pool is made")
    hang_s: float = Field(30.0, gt=0, description="how long the `slow` route hangs before closing")
    noise: NoiseConfig = Field(default_factory=NoiseConfig)


@dataclass
class Item:
    image: Image.Image
    caption: str
    key: str | None


class SceneSource:
    """Endless procedurally drawn scenes; item i depends only on (seed, i)."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg

    def __len__(self) -> int:
        return 1 << 40

    def _scene(self, i: int):
        rng = np.random.default_rng([self.cfg.seed, i])
        return random_scene(rng), rng

    def item(self, i: int) -> Item:
        scene, rng = self._scene(i)
        w, h = rng.integers(self.cfg.min_side_px, self.cfg.max_side_px + 1, size=2)
        return Item(render(scene, rng, int(w), int(h)), describe(scene), None)

    def caption(self, i: int) -> str:
        return describe(self._scene(i)[0])

    def partial(self, i: int, rng: np.random.Generator) -> str:
        return describe(perturb_scene(self._scene(i)[0], rng))

    def paraphrase(self, i: int, rng: np.random.Generator) -> str:
        return describe(self._scene(i)[0], paraphrase=True)


class PairsSource:
    """A clean pairs directory (`pairs.parquet` with `path` and `caption`; see shared/data/emoji),
    optionally only the rows whose columns hold given values."""

    def __init__(self, root: Path, column_filter: dict[str, list[str]] | None = None):
        self.root = Path(root)
        table = read_pairs(self.root, column_filter)
        if table.num_rows == 0:
            raise ValueError(f"synth.pairs_filter {column_filter} keeps no rows of {self.root / PAIRS_TABLE}")
        self.table = table
        self.paths = table.column("path").to_pylist()
        self.captions = [c or "" for c in table.column("caption").to_pylist()]
        keys = table.column("key").to_pylist() if "key" in table.column_names else self.paths
        self.keys = [str(k) for k in keys]
        self.vocab = sorted({w for c in self.captions for w in c.split()})

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, i: int) -> Item:
        with Image.open(self.root / self.paths[i]) as im:
            return Item(im.convert("RGB"), self.captions[i], self.keys[i])

    def caption(self, i: int) -> str:
        return self.captions[i]

    def partial(self, i: int, rng: np.random.Generator) -> str:
        words = self.captions[i].split() or ["image"]
        k = int(rng.integers(len(words)))
        choices = [w for w in self.vocab if w != words[k]] or ["thing"]
        words[k] = choices[int(rng.integers(len(choices)))]
        return " ".join(words)

    def paraphrase(self, i: int, rng: np.random.Generator) -> str:
        return PARAPHRASES[int(rng.integers(len(PARAPHRASES)))].format(c=self.captions[i])

    def write_pairs(self, rows: np.ndarray, out_dir: Path) -> None:
        """These rows, every column kept, as a pairs directory whose paths point at the source images."""
        table = self.table.take(pa.array(np.sort(rows)))
        paths = [str((self.root / p).resolve()) for p in table.column("path").to_pylist()]
        table = table.set_column(table.column_names.index("path"), "path", pa.array(paths))
        atomic_write_parquet(Path(out_dir) / "pairs.parquet", table)


def _near_copy(img: Image.Image, edit: str, rng: np.random.Generator) -> bytes:
    """The same picture, other bytes: one web-copy edit (curate.synthetic.copy_edits), then a JPEG re-upload."""
    return encode(edit_copy(img, edit, rng), quality=jpeg_quality(edit, rng))


def _broken_payload(kind: str, img: Image.Image, rng: np.random.Generator) -> tuple[str, bytes | None]:
    """The route a broken row is served from, and the bytes of its file (None: no file)."""
    good = encode(img)
    return {
        "broken_http_404": ("x/404", None),
        "broken_http_500": ("x/500", None),
        "broken_timeout": ("x/slow", None),
        "broken_reset": ("x/reset", None),
        "broken_redirect_loop": ("x/loop", None),
        "broken_robots": ("x/noai", good),
        "broken_corrupt": ("f", rng.bytes(2048)),
        "broken_truncated": ("f", encode(img, fmt="PNG")[:200]),
        "broken_empty": ("f", b""),
        "broken_html": ("f", b"<!doctype html><html><body><h1>Page not found</h1></body></html>"),
        "broken_tiny": ("f", encode(img.resize((12, 12)))),
        "broken_aspect": ("f", encode(img.resize((480, 48)))),
    }[kind]


def _plan_kinds(n_base: int, total: int, noise: NoiseConfig, rng: np.random.Generator) -> list[str]:
    kinds: list[str] = []
    for name in CAPTION_NOISE:
        kinds += [name] * round(total * getattr(noise, name))
    n_broken = round(total * noise.broken) if noise.broken_kinds else 0
    kinds += [noise.broken_kinds[k % len(noise.broken_kinds)] for k in range(n_broken)]
    if len(kinds) > n_base:
        raise ValueError("noise fractions leave no room for clean rows")
    kinds += ["clean"] * (n_base - len(kinds))
    return [kinds[k] for k in rng.permutation(n_base)]


def synthesize(cfg: SynthConfig, out_dir: Path) -> pa.Table:
    """Make the pool in `out_dir`; returns pool.parquet's table. Deterministic per config."""
    start = time.time()
    out_dir = Path(out_dir)
    if not cfg.from_pairs and (cfg.pairs_filter or cfg.seed_split_fraction):
        raise ValueError("synth.pairs_filter and synth.seed_split_fraction need synth.from_pairs")
    source = PairsSource(cfg.from_pairs, cfg.pairs_filter) if cfg.from_pairs else SceneSource(cfg)
    available = np.arange(len(source)) if cfg.from_pairs else None
    if cfg.seed_split_fraction:
        n_held = round(len(source) * cfg.seed_split_fraction)
        held = np.random.default_rng([cfg.seed, 1]).permutation(len(source))[:n_held]
        source.write_pairs(held, out_dir / SEED_SPLIT)
        available = np.setdiff1d(available, held)
    noise = cfg.noise
    dup_share = noise.exact_duplicate + noise.near_duplicate
    n_source = len(available) if cfg.from_pairs else len(source)
    total = cfg.n if cfg.n is not None else round(n_source / (1 - dup_share))
    n_exact, n_near = round(total * noise.exact_duplicate), round(total * noise.near_duplicate)
    n_base = total - n_exact - n_near
    if n_base > n_source:
        raise ValueError(f"n={total} needs {n_base} source pairs but {cfg.from_pairs} has {n_source} "
                         f"(after pairs_filter and seed_split_fraction)")
    rng = np.random.default_rng(cfg.seed)
    base_ids = available[rng.permutation(len(available))[:n_base]] if cfg.from_pairs else np.arange(n_base)
    kinds = _plan_kinds(n_base, total, noise, rng)
    clean = [k for k in range(n_base) if kinds[k] == "clean"]
    if n_exact + n_near > len(clean):
        raise ValueError("too few clean rows to copy for the requested duplicates")
    originals = rng.choice(clean, size=n_exact + n_near, replace=False).tolist()
    keep_image = set(originals)

    rows = []  # (gt_noise, route, payload bytes or None, caption, gt_caption, src_key, original row, gt_edit)
    images: dict[int, Image.Image] = {}
    for k in range(n_base):
        i = int(base_ids[k])
        item, kind = source.item(i), kinds[k]
        if k in keep_image:
            images[k] = item.image
        caption, route, payload = item.caption, "f", encode(item.image)
        if kind == "mismatched_caption":
            j = int(base_ids[(k + 1 + int(rng.integers(n_base - 1))) % n_base])
            caption = source.caption(j)
        elif kind == "boilerplate_caption":
            caption = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))].format(n=int(rng.integers(10000)))
        elif kind == "partial_caption":
            caption = source.partial(i, rng)
        elif kind in BROKEN_KINDS:
            route, payload = _broken_payload(kind, item.image, rng)
        rows.append((kind, route, payload, caption, item.caption, item.key, None, None))
    for d, k in enumerate(originals):
        i = int(base_ids[k])
        exact = d < n_exact
        edit = None if exact else EDITS[(d - n_exact) % len(EDITS)]
        if exact:
            payload = rows[k][2]
            caption = rows[k][3] if d % 2 == 0 else source.paraphrase(i, rng)
        else:
            payload, caption = _near_copy(images[k], edit, rng), source.paraphrase(i, rng)
        kind = "exact_duplicate" if exact else "near_duplicate"
        rows.append((kind, "f", payload, caption, rows[k][4], rows[k][5], k, edit))

    port = cfg.port or free_port(cfg.host)
    order = rng.permutation(len(rows))
    position = {int(r): p for p, r in enumerate(order)}
    urls, uids = [""] * len(rows), [""] * len(rows)
    files = out_dir / "files"
    for r in order.tolist():
        kind, route, payload, caption = rows[r][:4]
        p = position[r]
        rel = f"{p // 1000:04d}/{p:07d}.jpg"
        if payload is not None:
            (files / rel).parent.mkdir(parents=True, exist_ok=True)
            (files / rel).write_bytes(payload)
        urls[r] = f"http://{cfg.host}:{port}/{route}/{rel}"
        uids[r] = make_uid(urls[r], caption)
    table = pa.table({
        "uid": [uids[r] for r in order],
        "url": [urls[r] for r in order],
        "caption": [rows[r][3] for r in order],
        "src_key": [rows[r][5] for r in order],
        "gt_noise": [rows[r][0] for r in order],
        "gt_dup_of": [uids[rows[r][6]] if rows[r][6] is not None else None for r in order],
        "gt_caption": [rows[r][4] for r in order],
        "gt_edit": pa.array([rows[r][7] for r in order], pa.string()),
    })
    atomic_write_json(out_dir / "serve.json", {"host": cfg.host, "port": port, "hang_s": cfg.hang_s})
    by_noise = dict(zip(*np.unique(table.column("gt_noise").to_numpy(zero_copy_only=False), return_counts=True)))
    atomic_write_json(out_dir / "stats.json", {
        "input_rows": table.num_rows, "by_status": {Status.OK: table.num_rows},
        "by_gt_noise": {str(k): int(v) for k, v in by_noise.items()},
        "config": _fingerprint(cfg), "wall_s": round(time.time() - start, 2),
    })
    atomic_write_parquet(out_dir / "pool.parquet", table)
    log.info("synth: %d rows in %s (%.1fs)", table.num_rows, out_dir, time.time() - start)
    return table


def is_synthesized(cfg: SynthConfig, out_dir: Path) -> bool:
    """True when `out_dir` already holds a finished pool made from this config."""
    stats = Path(out_dir) / "stats.json"
    if not (Path(out_dir) / "pool.parquet").exists() or not stats.exists():
        return False
    return read_json(stats).get("config") == _fingerprint(cfg)


def _fingerprint(cfg: SynthConfig) -> str:
    return fingerprint(cfg.model_dump(mode="json"), SCENES_VERSION, copy_edits.VERSION)


def serve_settings(synth_dir: Path) -> dict:
    path = Path(synth_dir) / "serve.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `curate synth` into {synth_dir} first")
    return read_json(path)


def write_seed_pairs(n: int, seed: int, out_dir: Path, min_side_px: int = 96, max_side_px: int = 160) -> Path:
    """A trusted, noise-free pairs directory of drawn scenes (for training a filter network), disjoint
    from a pool drawn with another seed."""
    out_dir = Path(out_dir)
    source = SceneSource(SynthConfig(n=max(n, 10), seed=seed, min_side_px=min_side_px, max_side_px=max_side_px))
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        item = source.item(i)
        path = f"img/{i:06d}.jpg"
        (out_dir / path).write_bytes(encode(item.image))
        rows.append({"key": str(i), "path": path, "caption": item.caption})
    atomic_write_parquet(out_dir / "pairs.parquet", pa.Table.from_pylist(rows))
    return out_dir


class SynthStep(Step):
    """`synth`: the pool in RUN/synth."""

    name = directory = "synth"
    config = SynthConfig
    counts_rows = default = True
    identity = "the synth config and the scene and copy-edit versions (stats.json `config`)"

    def run(self, ctx: RunContext) -> dict:
        synth_dir = Path(ctx.run_dir) / self.directory
        cfg = ctx.cfg.synth.model_copy(update={"from_pairs": local(ctx.cfg.synth.from_pairs, ctx.cfg.storage)})
        if is_synthesized(cfg, synth_dir):
            log.info("synth: %s already holds this pool, keeping it", synth_dir)
        else:
            synthesize(cfg, synth_dir)
        return read_json(synth_dir / "stats.json")

    def done(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory / "stats.json").exists()

    def started(self, run_dir: Path) -> bool:
        return (Path(run_dir) / self.directory).exists()

