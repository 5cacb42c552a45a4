"""The score stage: open_clip image-text similarity per scorer, normalised float16 embeddings for dedup,
and heuristic signals. Rows that were not downloaded pass through unscored; an image that no longer
decodes gets `decode_error`. Images are read from the download stage's tars by key."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.decode import decode_rgb
from curate.io import Part, fingerprint, read_column
from curate.schema import CAPTION, ERROR, STATUS, UID, Status
from curate.score.heuristics import COLUMNS as HEURISTIC_COLUMNS, caption_signals, image_signals
from curate.stage import MapStage, Resources, RunContext, Step, map_status, run_map_stage
from curate.tars import read_images

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
    threads: int = Field(2, ge=1, le=256, description="batches in flight per actor, each decoded and scored on its own "
                         "thread; on CPU each gets torch's threads / threads, on a GPU the forwards take turns")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast for both encoders (GPUs; CPUs with AMX)")

    @model_validator(mode="after")
    def _unique(self) -> "ScoreConfig":
        names = [s.name for s in self.scorers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"score.scorers needs at least one scorer and unique names, got {names}")
        return self


class ScoreStage(MapStage):
    name = "score"
    requires = (UID, CAPTION, STATUS, ERROR, "shard", "key", "width", "height")

    def __init__(self, cfg: ScoreConfig, download_dir: Path, run_dir: Path):
        self.cfg, self.download_dir, self.run_dir = cfg, Path(download_dir), Path(run_dir)
        self.provides = (STATUS, *(f"score_{s.name}" for s in cfg.scorers), IMAGE_EMBEDDING, TEXT_EMBEDDING,
                         *HEURISTIC_COLUMNS)
        self.resources = Resources(num_cpus=cfg.threads, num_gpus=self._gpus_per_actor(), batch_size=cfg.batch_size,
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
        return fingerprint(self.cfg.model_dump(mode="json", exclude={"actors", "device", "batch_size", "num_gpus", "threads"}), files)

    def setup(self) -> None:
        import torch

        from curate.models.checkpoint import load_model
        from curate.models.clip import create, tokenizer
        from curate.models.preprocess import pixel_batcher

        device = self.cfg.device
        self._device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self._scorers = []
        for s in self.cfg.scorers:
            if s.checkpoint is not None:
                model, name = load_model(self._checkpoint_path(s), self._device)
            else:
                model, name = create(s.model, s.pretrained, self._device).eval(), s.model
            self._scorers.append((s.name, model, pixel_batcher(model), tokenizer(name)))
        self._decode_px = max(batcher.size for _, _, batcher, _ in self._scorers)
        self._device_turn = threading.Lock() if self._device.startswith("cuda") else nullcontext()  # one forward at a time on a GPU

    def embed_image_files(self, paths: list[Path]) -> np.ndarray:
        """Image embeddings of files by the first scorer (whose embeddings the stage stores), decoded and
        preprocessed as the pool's images are, so they compare with `image_embedding`; after setup()."""
        import torch

        _, model, batcher, _ = self._scorers[0]
        found = []
        with torch.inference_mode(), self._autocast():
            for lo in range(0, len(paths), self.cfg.batch_size):
                images = [decode_rgb(Path(p).read_bytes(), self._decode_px) for p in paths[lo:lo + self.cfg.batch_size]]
                found.append(self._encode(model.encode_image, batcher(images)))
        return np.concatenate(found) if found else np.zeros((0, 0), dtype=np.float32)

    def _decode(self, rows: list[int], images_by_uid: dict[str, bytes], uids: list[str]):
        """(decoded rows, {row: error}, each scorer's pixel batch or None when no row decoded)."""
        good, failures, images = [], {}, []
        for i in rows:
            if uids[i] not in images_by_uid:
                failures[i] = "score: image missing from its download shard (a damaged or incomplete tar)"
                continue
            try:
                images.append(decode_rgb(images_by_uid[uids[i]], self._decode_px))
                good.append(i)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                failures[i] = f"score: {type(err).__name__}: {err}"[:500]
        return good, failures, [batcher(images) if good else None for _, _, batcher, _ in self._scorers]

    def _encode(self, encode, inputs) -> np.ndarray:
        with self._device_turn:
            return encode(inputs.to(self._device), normalize=True).float().cpu().numpy()

    def _score_batch(self, rows: list[int], captions: list[str], uids: list[str], raw: Future):
        """One batch on a worker thread: captions encode (while the tar may still be read), then images
        decode and encode. Returns (decoded rows, {row: error}, image and text embeddings per scorer)."""
        import torch

        texts = [captions[i] for i in rows]
        with torch.inference_mode(), self._autocast():  # both are per thread
            text_embeddings = [self._encode(model.encode_text, tokenize(texts)) for _, model, _, tokenize in self._scorers]
            good, failures, pixels = self._decode(rows, raw.result(), uids)
            image_embeddings = [self._encode(model.encode_image, px) for (_, model, _, _), px in
                                zip(self._scorers, pixels)] if good else []
        return good, failures, image_embeddings, text_embeddings

    def _autocast(self):
        import torch

        if self.cfg.precision == "bf16":
            return torch.autocast(self._device.split(":")[0], dtype=torch.bfloat16)
        return nullcontext()

    def process_part(self, table: pa.Table, part: Part) -> pa.Table:
        """Batches go to `threads` worker threads, each tokenising, decoding and scoring its own, so one
        thread's decoding overlaps another's forward; a reader thread reads the tar and computes the heuristics."""
        statuses, errors = table.column(STATUS).to_pylist(), table.column(ERROR).to_pylist()
        uids, captions = table.column(UID).to_pylist(), table.column(CAPTION).to_pylist()
        n, bs = len(uids), self.cfg.batch_size
        todo = [i for i in range(n) if statuses[i] == Status.OK]
        batches = [todo[k:k + bs] for k in range(0, len(todo), bs)]
        scores = np.full((len(self._scorers), n), np.nan, dtype=np.float32)
        embeddings: list[np.ndarray] = []
        scored: list[int] = []
        streams = self.cfg.threads if self._device == "cpu" else 1  # on a GPU torch's CPU threads hardly matter
        with split_torch_threads(streams), ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(self.cfg.threads) as workers:
            raw = reader.submit(read_images, table, self.download_dir)
            signals = reader.submit(_heuristic_columns, table, raw)
            results = workers.map(lambda rows: self._score_batch(rows, captions, uids, raw), batches)
            for batch, (good, failures, images, texts) in zip(batches, results):
                for i, error in failures.items():
                    statuses[i], errors[i] = Status.DECODE_ERROR, error
                if not good:
                    continue
                decoded = np.isin(batch, good)
                for s, (img, txt) in enumerate(zip(images, texts)):
                    scores[s, good] = (img * txt[decoded]).sum(1)
                embeddings.append(np.stack([images[0], texts[0][decoded]]))
                scored += good
            signals = signals.result()
        out = table.set_column(table.schema.get_field_index(STATUS), STATUS, pa.array(statuses, pa.string()))
        out = out.set_column(out.schema.get_field_index(ERROR), ERROR, pa.array(errors, pa.string()))
        for s, (name, _, _, _) in enumerate(self._scorers):
            out = out.append_column(f"score_{name}", pa.array(scores[s], pa.float32(), mask=np.isnan(scores[s])))
        both = np.concatenate(embeddings, axis=1) if embeddings else None
        dim = both.shape[2] if both is not None else 1
        for k, col in enumerate((IMAGE_EMBEDDING, TEXT_EMBEDDING)):
            out = out.append_column(col, _fixed_lists(both[k] if both is not None else None, scored, n, dim))
        for name, column in signals.items():
            out = out.append_column(name, column)
        return out


@contextmanager
def split_torch_threads(streams: int):
    """Give each of `streams` model threads an equal share of torch's intra-op threads, restored afterwards
    (the count is per process; threads started inside take the new one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // streams))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fixed_lists(values: np.ndarray | None, rows: list[int], n: int, dim: int) -> pa.Array:
    """float16 fixed-size lists, null for unscored rows."""
    flat = np.zeros((n, dim), dtype=np.float16)
    if values is not None:
        flat[rows] = values.astype(np.float16)
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(mask))


def _heuristic_columns(table: pa.Table, raw: Future) -> dict[str, pa.Array]:
    """The heuristic signal columns of every row (image sizes from the future of the uid -> bytes map)."""
    raw = raw.result()
    signals = {k: [] for k in HEURISTIC_COLUMNS}
    cols = (UID, CAPTION, "width", "height")
    for uid, caption, w, h in zip(*(table.column(c).to_pylist() for c in cols)):
        data = raw.get(uid)
        row = {**caption_signals(caption or ""), **image_signals(w, h, len(data) if data else None)}
        for k in signals:
            signals[k].append(row[k])
    return {k: pa.array(signals[k], t) for k, t in HEURISTIC_COLUMNS.items()}


def run_score(cfg: ScoreConfig, out_dir: Path, runner) -> dict:
    """Score every download part (same part boundaries); rows not downloaded pass through unscored."""
    out_dir = Path(out_dir).resolve()
    download_dir, stage_dir = out_dir / "download", out_dir / "score"
    inputs = sorted(download_dir.glob("part-*.parquet"))
    if not inputs:
        raise FileNotFoundError(f"{download_dir} holds no parts: run the download stage first")
    parts = [Part(int(p.stem.split("-")[1]), p, stage_dir) for p in inputs]
    stage = ScoreStage(cfg, download_dir, out_dir)
    first = f"score_{cfg.scorers[0].name}"

    def scored_rows() -> int:
        done = [p.output_path for p in parts if p.output_path.exists()]
        return int(pc.sum(read_column(done, first).is_valid()).as_py() or 0) if done else 0

    return run_map_stage(stage, parts, runner, stage_dir, scored_rows=scored_rows)


class ScoreStep(Step):
    """`score`: a part per download part."""

    name = directory = "score"
    config = ScoreConfig
    reads = ("download", "download/part-*.parquet")
    command = "score every downloaded pair with CLIP models and keep their embeddings (OUT/score)"
    counts_rows = default = True
    identity = "per part: its input bytes, the scorer config and each checkpoint file (done markers)"

    def run(self, ctx: RunContext) -> dict:
        return run_score(ctx.cfg.score, ctx.run_dir, ctx.runner)

    def status(self, run_dir: Path, part_names: list[str]) -> dict:
        return map_status(Path(run_dir) / self.directory, self.name, part_names)

    def funnel(self, stats: dict) -> tuple[str, str, int] | None:
        return ("scored", "scored", stats["scored_rows"]) if "scored_rows" in stats else None

