"""Image transforms of the training strategies: open_clip's CLIP transform, the `clip_aug` augmentations,
SimCLR views for SLIP, and several views of one image stacked into one tensor."""
from __future__ import annotations

from typing import Callable

import open_clip
import torch
from torchvision import transforms as T

from train.config import AugmentConfig

BICUBIC = T.InterpolationMode.BICUBIC


def _to_tensor() -> list:
    return [T.ToTensor(), T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)]


def clip_transform(size_px: int) -> Callable:
    """open_clip's own train transform (a mild random resized crop, scale 0.9-1)."""
    return open_clip.image_transform(size_px, is_train=True)


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
