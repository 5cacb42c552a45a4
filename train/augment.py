"""Image transforms of the training strategies: open_clip's CLIP transform, the `clip_aug` augmentations,
SimCLR views for SLIP, and several views of one image stacked into one tensor.

Every transform returns a uint8 (C, H, W) tensor; `normalize_batch` turns a whole batch into the model's
normalised floats in one vectorised step (per-sample ToTensor + Normalize cost more than the crop itself
on small images, and a loader that spends less per sample is what lets CLIPA's cheap steps show)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import open_clip
import torch
from PIL import Image
from torchvision import transforms as T

from curate.models.train_config import AugmentConfig

BICUBIC = T.InterpolationMode.BICUBIC


MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)


def _to_tensor() -> list:
    return [T.PILToTensor()]


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> floats normalised as open_clip's transforms do."""
    mean, std = MEAN.to(images.device), STD.to(images.device)
    return (images.float().div_(255) - mean).div_(std)


class ClipCrop:
    """open_clip's train transform (random resized crop, scale 0.9-1, aspect 3/4-4/3, bicubic, RGB) as
    one PIL resize of the crop box, returning uint8; the normalisation is `normalize_batch`'s. The box
    is drawn as torchvision draws it, from one batch of torch random numbers (its own draw costs ~0.5 ms)."""

    def __init__(self, size_px: int, scale: tuple[float, float] = (0.9, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size_px, self.scale, self.log_ratio = size_px, scale, (math.log(ratio[0]), math.log(ratio[1]))

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for u_area, u_ratio, u_x, u_y in torch.rand(10, 4).tolist():
            target = area * (self.scale[0] + u_area * (self.scale[1] - self.scale[0]))
            aspect = math.exp(self.log_ratio[0] + u_ratio * (self.log_ratio[1] - self.log_ratio[0]))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(u_x * (width - w + 1)), int(u_y * (height - h + 1))
                return left, top, left + w, top + h
        w, h = width, height  # torchvision's fallback: the central crop at the nearest allowed aspect
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if width / height < lo:
            h = round(width / lo)
        elif width / height > hi:
            w = round(height * hi)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        image = image.resize((self.size_px, self.size_px), Image.BICUBIC, box=self.box(*image.size))
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def clip_transform(size_px: int) -> Callable:
    """open_clip's own train transform (a mild random resized crop, scale 0.9-1)."""
    return ClipCrop(size_px)


def augment_transform(cfg: AugmentConfig, size_px: int) -> Callable:
    """The `clip_aug` transform named by `cfg.kind`."""
    steps = [T.RandomResizedCrop(size_px, scale=(cfg.crop_scale_min, 1.0), interpolation=BICUBIC),
             T.RandomHorizontalFlip()]
    if cfg.kind == "stacked_randaugment":
        steps += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    if cfg.kind in ("randaugment", "stacked_randaugment"):
        steps.append(T.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude))
    return T.Compose(steps + _to_tensor())


def simclr_transform(size_px: int, crop_scale_min: float) -> Callable:
    """SimCLR's view augmentation as SLIP uses it: crop, colour jitter, grayscale, blur, flip."""
    blur_kernel = max(3, (size_px // 10) | 1)  # odd, ~10% of the side, as SimCLR
    return T.Compose([
        T.RandomResizedCrop(size_px, scale=(crop_scale_min, 1.0), interpolation=BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        *_to_tensor(),
    ])


class MultiView:
    """Applies each transform to the same image; returns the views stacked, shape (views, C, H, W)."""

    def __init__(self, *transforms: Callable):
        self.transforms = transforms

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([t(image) for t in self.transforms])
