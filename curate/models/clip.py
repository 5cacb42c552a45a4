"""Models: open_clip architectures from `configs/models/*.json`, random init or a local checkpoint.

The JSON files ship inside this package (`curate/models/configs/`, package data), so an installed `curate`
finds them anywhere; `configs/models` in the repository is a link to that folder."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import open_clip
import torch

MODEL_CONFIG_DIR = Path(str(resources.files("curate.models") / "configs"))
_registered = False


def _register_timm_towers() -> None:
    """Tiny timm towers that open_clip's JSON cannot size: registered under names the JSON uses."""
    from timm.models import register_model
    from timm.models.mlp_mixer import MlpMixer

    @register_model
    def curate_mixer_tiny_64(pretrained: bool = False, **kwargs):  # noqa: ARG001 (timm's signature)
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        model = MlpMixer(img_size=64, patch_size=8, num_blocks=6, embed_dim=192, **kwargs)
        model.default_cfg = model.pretrained_cfg = {"pool_size": None}
        return model


def register_model_configs() -> None:
    """Make `configs/models/*.json` known to open_clip (once per process)."""
    global _registered
    if not _registered:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _register_timm_towers()
        _registered = True


def model_names() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def model_config(name: str) -> dict:
    register_model_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown model {name!r}; configs/models has {model_names()}")
    return cfg


def create(name: str, pretrained: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """An open_clip model by name: random init, an open_clip pretrained tag, or a local weights file."""
    register_model_configs()
    model_config(name)
    if pretrained and not Path(pretrained).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(f"{pretrained!r} is not a local file and HF_HUB_OFFLINE=1 forbids downloading it")
    return open_clip.create_model(name, pretrained=pretrained, device=device)


def tokenizer(name: str):
    """open_clip's tokenizer for this model, with the identical-output fast path of `fast_tokenizer`."""
    from curate.models.fast_tokenizer import accelerate

    register_model_configs()
    return accelerate(open_clip.get_tokenizer(name))


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)

