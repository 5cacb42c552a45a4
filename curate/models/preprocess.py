"""open_clip's eval preprocessing for batches of decoded images, as the score stage and the pool's
reference images need it."""
from __future__ import annotations

import numpy as np
import open_clip
from PIL import Image

from curate.models.clip import image_size


class PixelBatcher:
    """open_clip's eval preprocessing (shortest side to `size`, bicubic; centre crop; scale; normalise)
    done per image in PIL and per batch in torch, which is several times cheaper than torchvision's
    per-image tensor transforms. Falls back to open_clip's transform for other preprocessing configs."""

    def __init__(self, size: int, mean, std, fallback=None):
        import torch

        self.size, self.fallback = size, fallback
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def _resize_crop(self, im: Image.Image) -> np.ndarray:
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)
        new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = int(round((new_w - self.size) / 2.0)), int(round((new_h - self.size) / 2.0))
        return np.asarray(im.crop((left, top, left + self.size, top + self.size)))

    def __call__(self, images: list[Image.Image]):
        import torch

        if self.fallback is not None:
            return torch.stack([self.fallback(im) for im in images])
        pixels = torch.from_numpy(np.stack([self._resize_crop(im) for im in images])).permute(0, 3, 1, 2)
        return (pixels.float() - self.mean) / self.std


def pixel_batcher(model) -> PixelBatcher:
    size = image_size(model)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean, std = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD)
    standard = cfg.get("interpolation", "bicubic") == "bicubic" and cfg.get("resize_mode", "shortest") == "shortest"
    fallback = None if standard else open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    return PixelBatcher(size, mean, std, fallback)
