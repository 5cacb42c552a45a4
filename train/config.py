"""Training configuration (pydantic; unknown keys rejected). Units live in key names."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: Path | None = Field(None, description="a pairs directory (pairs.parquet with path, caption)")
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


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "tiny-vit-32"
    pretrained: str | None = Field(None, description="open_clip tag or local weights file; none = random init")
    data: DataConfig
    samples_seen: int = Field(20_480, ge=1, description="the compute budget: every run sees exactly this many")
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

    @model_validator(mode="after")
    def _whole_batches(self) -> "TrainConfig":
        if self.samples_seen % self.batch_size:
            raise ValueError(f"samples_seen ({self.samples_seen}) must be a multiple of batch_size "
                             f"({self.batch_size}), so that every run sees exactly that many samples")
        return self

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size
