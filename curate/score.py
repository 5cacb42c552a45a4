"""The score stage: open_clip image-text similarity per scorer, normalised float16 embeddings for dedup,
and heuristic signals. Rows that were not downloaded pass through unscored; an image that no longer
decodes gets `decode_error`. Images are read from the download stage's tars by key."""
from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.heuristics import COLUMNS as HEURISTIC_COLUMNS, caption_signals, image_signals
from curate.io import Part, fingerprint
from curate.schema import CAPTION, ERROR, STATUS, UID, Status
from curate.stage import MapStage, Resources

log = logging.getLogger(__name__)

IMAGE_EMBEDDING, TEXT_EMBEDDING = "image_embedding", "text_embedding"


class ScorerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="the column becomes score_<name>")
    model: str | None = Field(None, description="open_clip model name (with `pretrained`, or random init)")
    pretrained: str | None = Field(None, description="open_clip tag or local weights file")
    checkpoint: Path | None = Field(None, description="a `curate train` checkpoint (a filter network)")

    @model_validator(mode="after")
    def _source(self) -> "ScorerConfig":
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError(f"scorer {self.name!r}: set either model (+ pretrained) or checkpoint")
        return self


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorers: list[ScorerConfig] = Field(default_factory=lambda: [ScorerConfig(name="filter", checkpoint=Path("filter/checkpoint.pt"))],
                                        description="relative checkpoint paths are inside the run directory")
    batch_size: int = Field(256, ge=1, le=65536)
    actors: int = Field(1, ge=1, le=1024, description="model replicas (Ray actors)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; none = 1 when CUDA is visible here")

    @model_validator(mode="after")
    def _unique(self) -> "ScoreConfig":
        names = [s.name for s in self.scorers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"score.scorers needs at least one scorer and unique names, got {names}")
        return self


def decode_rgb(data: bytes, min_side: int) -> Image.Image:
    """Decode to RGB; a JPEG decodes at a reduced scale (libjpeg's draft mode) that keeps both sides at
    least `min_side`, which the model's resize would throw away anyway."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (min_side, min_side))
        return im.convert("RGB")


def _read_images(table: pa.Table, download_dir: Path) -> dict[str, bytes]:
    """uid -> image bytes for the ok rows, reading each tar once."""
    wanted: dict[str, dict[str, str]] = {}
    for uid, status, shard, key in zip(*(table.column(c).to_pylist() for c in (UID, STATUS, "shard", "key"))):
        if status == Status.OK and shard and key:
            wanted.setdefault(shard, {})[key] = uid
    images: dict[str, bytes] = {}
    for shard, keys in wanted.items():
        with tarfile.open(download_dir / shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if key in keys and ext.lower() in ("jpg", "jpeg", "png", "webp"):
                    images[keys[key]] = tar.extractfile(member).read()
    return images


class ScoreStage(MapStage):
    name = "score"
    requires = (UID, CAPTION, STATUS, ERROR, "shard", "key", "width", "height")

    def __init__(self, cfg: ScoreConfig, download_dir: Path, run_dir: Path):
        self.cfg, self.download_dir, self.run_dir = cfg, Path(download_dir), Path(run_dir)
        self.provides = (STATUS, *(f"score_{s.name}" for s in cfg.scorers), IMAGE_EMBEDDING, TEXT_EMBEDDING,
                         *HEURISTIC_COLUMNS)
        self.resources = Resources(num_cpus=1, num_gpus=self._gpus_per_actor(), batch_size=cfg.batch_size,
                                   actors=cfg.actors)

    def _gpus_per_actor(self) -> float:
        if self.cfg.num_gpus is not None:
            return self.cfg.num_gpus
        if self.cfg.device == "cpu":
            return 0.0
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0

    def _checkpoint_path(self, scorer: ScorerConfig) -> Path:
        return scorer.checkpoint if scorer.checkpoint.is_absolute() else self.run_dir / scorer.checkpoint

    def config_fingerprint(self) -> str:
        """Scorer config plus the identity of each checkpoint file: a retrained filter rescores."""
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in
                 (self._checkpoint_path(s) for s in self.cfg.scorers if s.checkpoint) if p.exists()]
        return fingerprint(self.cfg.model_dump(mode="json", exclude={"actors", "device", "batch_size", "num_gpus"}), files)

    def setup(self) -> None:
        import open_clip
        import torch

        from train.checkpoint import load_model
        from train.models import create, image_size, tokenizer

        device = self.cfg.device
        self._device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self._scorers = []
        for s in self.cfg.scorers:
            if s.checkpoint is not None:
                model, name = load_model(self._checkpoint_path(s), self._device)
            else:
                model, name = create(s.model, s.pretrained, self._device).eval(), s.model
            transform = open_clip.image_transform(image_size(model), is_train=False)
            self._scorers.append((s.name, model, transform, tokenizer(name)))
        self._decode_px = max(image_size(m) for _, m, _, _ in self._scorers)

    def _encode(self, model, transform, tokenize, images: list[Image.Image], captions: list[str]):
        import torch

        img_out, txt_out = [], []
        bs = self.cfg.batch_size
        with torch.no_grad():
            for i in range(0, len(images), bs):
                pixels = torch.stack([transform(im) for im in images[i:i + bs]]).to(self._device)
                img_out.append(model.encode_image(pixels, normalize=True).float().cpu())
                tokens = tokenize(captions[i:i + bs]).to(self._device)
                txt_out.append(model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(img_out).numpy(), torch.cat(txt_out).numpy()

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        raw = _read_images(table, self.download_dir)
        statuses, errors = table.column(STATUS).to_pylist(), table.column(ERROR).to_pylist()
        uids, captions = table.column(UID).to_pylist(), table.column(CAPTION).to_pylist()
        decoded: dict[int, Image.Image] = {}
        for i, uid in enumerate(uids):
            if statuses[i] != Status.OK:
                continue
            try:
                decoded[i] = decode_rgb(raw[uid], self._decode_px)
            except (KeyError, OSError, ValueError, Image.DecompressionBombError) as err:
                statuses[i], errors[i] = Status.DECODE_ERROR, f"score: {type(err).__name__}: {err}"[:500]
        rows = sorted(decoded)
        out = table.set_column(table.schema.get_field_index(STATUS), STATUS, pa.array(statuses, pa.string()))
        out = out.set_column(out.schema.get_field_index(ERROR), ERROR, pa.array(errors, pa.string()))
        embeddings = None
        for name, model, transform, tokenize in self._scorers:
            img, txt = (self._encode(model, transform, tokenize, [decoded[i] for i in rows],
                                     [captions[i] for i in rows]) if rows else (None, None))
            scores = np.full(len(uids), np.nan, dtype=np.float32)
            if rows:
                scores[rows] = (img * txt).sum(1)
                embeddings = embeddings or (img, txt)
            out = out.append_column(f"score_{name}", pa.array(scores, pa.float32(), mask=np.isnan(scores)))
        dim = embeddings[0].shape[1] if embeddings else 1
        for col, values in ((IMAGE_EMBEDDING, embeddings[0] if embeddings else None),
                            (TEXT_EMBEDDING, embeddings[1] if embeddings else None)):
            out = out.append_column(col, _fixed_lists(values, rows, len(uids), dim))
        return _add_heuristics(out, raw)


def _fixed_lists(values: np.ndarray | None, rows: list[int], n: int, dim: int) -> pa.Array:
    """float16 fixed-size lists, null for unscored rows."""
    flat = np.zeros((n, dim), dtype=np.float16)
    if values is not None:
        flat[rows] = values.astype(np.float16)
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(mask))


def _add_heuristics(table: pa.Table, raw: dict[str, bytes]) -> pa.Table:
    signals = {k: [] for k in HEURISTIC_COLUMNS}
    cols = (UID, CAPTION, "width", "height")
    for uid, caption, w, h in zip(*(table.column(c).to_pylist() for c in cols)):
        data = raw.get(uid)
        row = {**caption_signals(caption or ""), **image_signals(w, h, len(data) if data else None)}
        for k in signals:
            signals[k].append(row[k])
    for k, t in HEURISTIC_COLUMNS.items():
        table = table.append_column(k, pa.array(signals[k], t))
    return table
