"""Training configuration (pydantic; unknown keys rejected). Units live in key names."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.storage import Location


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: Location | None = Field(None, description="a pairs directory (pairs.parquet with path, caption) or "
                                                     "its URL (s3://...)")
    pairs_filter: dict[str, list[str]] = Field(default_factory=dict,
                                               description="keep pairs rows whose column is one of these")
    shards: str | None = Field(None, description="WebDataset tars: a folder, a tar, or dir/{00000..00009}.tar")
    uids: Path | None = Field(None, description="Parquet with a uid column: train on these shard samples only")
    workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.pairs is None) == (self.shards is None):
            raise ValueError("set exactly one of data.pairs or data.shards")
        if self.uids is not None and self.shards is None:
            raise ValueError("data.uids selects samples of data.shards; set data.shards too")
        return self


class AugmentConfig(BaseModel):
    """Image augmentation of `clip_aug`: `crop_flip` (random resized crop + horizontal flip),
    `randaugment` (crop_flip then RandAugment), `stacked_randaugment` (crop_flip, colour jitter and
    grayscale, then RandAugment: SupCon's "Stacked RandAugment")."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["crop_flip", "randaugment", "stacked_randaugment"] = "crop_flip"
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="smallest crop, as a share of the image area")
    randaugment_ops: int = Field(2, ge=1, le=14)
    randaugment_magnitude: int = Field(9, ge=0, le=30)


class ClipStrategy(BaseModel):
    """Plain contrastive training (open_clip's train transform and ClipLoss)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["clip"] = "clip"


class NegClipStrategy(BaseModel):
    """CLIP with a hard negative caption per pair (NegCLIP's idea, Yuksekgonul et al. 2023): the caption with one
    token swapped for a token of another caption in the batch is one more wrong caption for every image, so
    the model must read each word of a caption, not a bag of them. Two text passes per step."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["negclip"] = "negclip"


class ClipAugStrategy(BaseModel):
    """CLIP with stronger image augmentation."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["clip_aug"] = "clip_aug"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class SlipStrategy(BaseModel):
    """CLIP loss + SimCLR (NT-Xent) on two augmented views through an MLP head: three image passes per
    sample, ~3.5x the time of `clip` per sample (measured on CPU, BENCHMARKS.md)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["slip"] = "slip"
    ssl_scale: float = Field(1.0, ge=0, description="weight of the SimCLR loss")
    ssl_temperature: float = Field(0.1, gt=0)
    head_hidden_dim: int = Field(512, ge=8)
    head_out_dim: int = Field(128, ge=8)
    view_crop_scale_min: float = Field(0.08, gt=0, le=1, description="SimCLR views' smallest crop")


class FinetuneMixin(BaseModel):
    finetune_samples: int = Field(0, ge=0, description="last samples of the budget, trained at full size")
    finetune_lr_scale: float = Field(0.25, gt=0, description="finetune peak lr = lr x this")


class FlipStrategy(FinetuneMixin):
    """Random image-patch masking (open_clip's PatchDropout) while training, none in eval."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["flip"] = "flip"
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="share of image patches dropped (0.5 or 0.75)")


class ClipaStrategy(FinetuneMixin):
    """Pre-train at a lower resolution (fewer image tokens) and shorter text, then finetune at full size."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["clipa"] = "clipa"
    image_size_px: int | None = Field(None, ge=8, description="pre-training resolution; none = half the "
                                      "model's (a quarter of the image tokens)")
    context_length: int = Field(8, ge=3, description="pre-training text tokens, start and end included")
    text_policy: Literal["truncate", "content_words"] = Field(
        "truncate", description="truncate, or drop function words first (keeps nouns and adjectives)")


Strategy = Annotated[Union[ClipStrategy, NegClipStrategy, ClipAugStrategy, SlipStrategy, FlipStrategy, ClipaStrategy],
                     Field(discriminator="name")]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "tiny-vit-32"
    pretrained: str | None = Field(None, description="open_clip tag or local weights file; none = random init")
    data: DataConfig
    samples_seen: int = Field(20_480, ge=1, description="the compute budget: samples drawn from the data; the "
                              "summary counts those trained on and those skipped (undecodable) apart")
    batch_size: int = Field(256, ge=2)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (on GPU, or CPU with AMX)")
    compile: bool = Field(False, description="torch.compile the model (GPU)")
    grad_checkpointing: bool = False
    log_every_steps: int = Field(10, ge=1)
    checkpoint_every_steps: int = Field(200, ge=1)
    strategy: Strategy = Field(default_factory=ClipStrategy, description="clip, negclip, clip_aug, slip, flip or clipa")

    @model_validator(mode="after")
    def _whole_batches(self) -> "TrainConfig":
        if self.samples_seen % self.batch_size:
            raise ValueError(f"samples_seen ({self.samples_seen}) must be a multiple of batch_size "
                             f"({self.batch_size}), so that every run sees exactly that many samples")
        finetune = getattr(self.strategy, "finetune_samples", 0)
        if finetune % self.batch_size or finetune >= self.samples_seen:
            raise ValueError(f"strategy.finetune_samples ({finetune}) must be a multiple of batch_size "
                             f"({self.batch_size}) and less than samples_seen ({self.samples_seen})")
        return self

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size
