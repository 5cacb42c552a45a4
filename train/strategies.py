"""Training strategies: what differs between plain CLIP, CLIP + augmentation, SLIP, FLIP and CLIPA.

A strategy gives the phases of a run (one main phase; FLIP and CLIPA may end with a short full-size
finetune), each phase's image transform and tokenizer, what it changes in the model during a phase,
and the loss. `train/train.py` runs the loop and owns the optimizer. Whatever a strategy changes in the
model is undone when its phase ends, so checkpoints always hold the plain open_clip model."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout, VisionTransformer
from torch import nn
from torch.nn.utils import parametrize

from curate.models.clip import image_size, model_config, tokenizer
from curate.models.train_config import TrainConfig
from train.augment import MultiView, augment_transform, clip_transform, simclr_transform

# Dropped first by CLIPA's `content_words` text policy: what is left is mostly nouns and adjectives.
FUNCTION_WORDS = frozenset(
    "a an the of with and or in on at to for from by as into onto over under up down out off is are be "
    "this that these those its it his her their our your my".split())


@dataclass(frozen=True)
class Phase:
    name: str          # "main" or "finetune"
    start_step: int
    steps: int
    lr: float          # peak learning rate of this phase's warmup + cosine
    warmup_steps: int
    reduced: bool      # FLIP's masking or CLIPA's low resolution and short text are on

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """The main phase, then (FLIP, CLIPA with finetune_samples > 0) a finetune phase at full size with its
    own short warmup and cosine at lr x finetune_lr_scale."""
    s = cfg.strategy
    finetune = getattr(s, "finetune_samples", 0) // cfg.batch_size
    main = Phase("main", 0, cfg.steps - finetune, cfg.lr, cfg.warmup_steps, s.name in ("flip", "clipa"))
    if not finetune:
        return [main]
    return [main, Phase("finetune", main.end_step, finetune, cfg.lr * s.finetune_lr_scale, finetune // 10, False)]


def phase_lr(phase: Phase, step: int) -> float:
    """Linear warmup, then cosine decay to zero at the phase's last step."""
    local = step - phase.start_step
    if local < phase.warmup_steps:
        return phase.lr * (local + 1) / phase.warmup_steps
    progress = (local - phase.warmup_steps) / max(1, phase.steps - phase.warmup_steps)
    return 0.5 * phase.lr * (1 + math.cos(math.pi * min(1.0, progress)))


class Clip:
    """Plain CLIP: open_clip's train transform and ClipLoss, nothing changed in the model."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        self.cfg = cfg
        self.size_px = image_size(model)
        self.loss_fn = open_clip.ClipLoss()
        self.extra = nn.ModuleList()  # trainable modules outside the CLIP model, checkpointed apart from it

    def transform(self, phase: Phase) -> Callable:
        return clip_transform(self.size_px)

    def tokenizer(self, phase: Phase) -> Callable:
        return tokenizer(self.cfg.model)

    @contextmanager
    def applied(self, model: nn.Module, phase: Phase):
        yield

    def loss(self, model: nn.Module, forward: Callable, images: torch.Tensor, texts: torch.Tensor):
        """(loss, extra figures to log)."""
        image_features, text_features, logit_scale = forward(images, texts)
        return self.loss_fn(image_features, text_features, logit_scale), {}


def swap_one_token(texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption with one of its tokens (between the start and end tokens) replaced by a token drawn from
    the batch's captions; and whether the copy differs from its caption (an empty caption or a draw of the
    same token does not). open_clip's layout: a start token, the words, an end token, then 0s."""
    lengths = (texts != 0).sum(1)
    inner = (lengths - 2).clamp(min=0)
    position = torch.arange(texts.shape[1], device=texts.device)
    is_word = (position[None] >= 1) & (position[None] < (lengths - 1)[:, None])
    pool = texts[is_word]
    if pool.numel() == 0:
        return texts.clone(), torch.zeros(len(texts), dtype=torch.bool, device=texts.device)
    at = 1 + (torch.rand(len(texts), device=texts.device) * inner.clamp(min=1)).long()
    drawn = pool[torch.randint(len(pool), (len(texts),), device=texts.device)]
    rows = torch.arange(len(texts), device=texts.device)
    swapped = texts.clone()
    swapped[rows, at] = torch.where(inner > 0, drawn, texts[rows, at])
    return swapped, (inner > 0) & (drawn != texts[rows, at])


class NegClip(Clip):
    """CLIP whose image-to-text softmax also holds each caption with one token swapped (NegCLIP)."""

    def loss(self, model, forward, images, texts):
        image_features, text_features, logit_scale = forward(images, texts)
        negatives, valid = swap_one_token(texts)
        negative_features = model.encode_text(negatives, normalize=True)
        hard = (logit_scale * image_features @ negative_features.T).masked_fill(~valid[None], float("-inf"))
        to_texts = torch.cat([logit_scale * image_features @ text_features.T, hard], dim=1)
        to_images = logit_scale * text_features @ image_features.T
        target = torch.arange(len(texts), device=texts.device)
        loss = (F.cross_entropy(to_texts, target) + F.cross_entropy(to_images, target)) / 2
        return loss, {"hard_negatives": int(valid.sum())}


class ClipAug(Clip):
    """CLIP on augmented images (random resized crop + flip, RandAugment, or stacked RandAugment)."""

    def transform(self, phase: Phase) -> Callable:
        return augment_transform(self.cfg.strategy.augment, self.size_px)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view's positive is the other view of its image, the other 2n-2 are negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class Slip(Clip):
    """SLIP: CLIP loss on one view + SimCLR on two more augmented views, through an MLP head on the image
    embedding. Three image passes per sample: measured 3.4-3.6x the time of `clip` per sample on CPU
    (tiny-vit-64, BENCHMARKS.md), more than the "about 2x" often quoted. The head is
    trained and checkpointed (`strategy_state`) but is not part of the CLIP model's weights."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        super().__init__(cfg, model)
        s = cfg.strategy
        dim = model_config(cfg.model)["embed_dim"]
        self.extra.append(nn.Sequential(
            nn.Linear(dim, s.head_hidden_dim), nn.BatchNorm1d(s.head_hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(s.head_hidden_dim, s.head_hidden_dim), nn.BatchNorm1d(s.head_hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(s.head_hidden_dim, s.head_out_dim)))

    def transform(self, phase: Phase) -> Callable:
        view = simclr_transform(self.size_px, self.cfg.strategy.view_crop_scale_min)
        return MultiView(clip_transform(self.size_px), view, view)

    def loss(self, model, forward, images, texts):
        n = images.shape[0]
        features = model.encode_image(images.transpose(0, 1).flatten(0, 1))  # [clip views; views 1; views 2]
        clip_features, view1, view2 = features.split(n)
        text_features = model.encode_text(texts, normalize=True)
        clip = self.loss_fn(F.normalize(clip_features, dim=-1), text_features, model.logit_scale.exp())
        head = self.extra[0]
        ssl = nt_xent(head(view1), head(view2), self.cfg.strategy.ssl_temperature)
        return clip + self.cfg.strategy.ssl_scale * ssl, {"clip_loss": clip.item(), "ssl_loss": ssl.item()}


def require_vit(model: nn.Module, cfg: TrainConfig) -> VisionTransformer:
    if not isinstance(model.visual, VisionTransformer):
        raise ValueError(f"strategy {cfg.strategy.name} changes the image tokens and needs a ViT image tower; "
                         f"{cfg.model} has {type(model.visual).__name__}: pick a ViT model or another strategy")
    return model.visual


class Flip(Clip):
    """FLIP: drop a random `mask_ratio` of the image patches in training (open_clip's PatchDropout; the
    eval forward keeps every patch), optionally finetune unmasked at the end."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        super().__init__(cfg, model)
        require_vit(model, cfg)

    @contextmanager
    def applied(self, model, phase):
        if not phase.reduced:
            yield
            return
        before = model.visual.patch_dropout
        model.visual.patch_dropout = PatchDropout(self.cfg.strategy.mask_ratio)
        try:
            yield
        finally:
            model.visual.patch_dropout = before


class ResampleGrid(nn.Module):
    """A ViT's position embeddings (class token + grid) resampled to a smaller grid; gradients reach the
    full-size embeddings, which stay the model's parameters."""

    def __init__(self, grid_from: tuple[int, int], grid_to: tuple[int, int]):
        super().__init__()
        self.grid_from, self.grid_to = grid_from, grid_to

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        width = pos.shape[1]
        grid = pos[1:].reshape(1, *self.grid_from, width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=self.grid_to, mode="bilinear", antialias=True, align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, width)])


class Truncate(nn.Module):
    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return pos[:self.length]


class ShortText:
    """Tokenize to `context_length` tokens, after dropping function words when `content_words`."""

    def __init__(self, tokenize: Callable, context_length: int, policy: str):
        self.tokenize, self.context_length, self.policy = tokenize, context_length, policy

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self.policy == "content_words":
            texts = [" ".join(w for w in t.split() if w.lower() not in FUNCTION_WORDS) or t for t in texts]
        return self.tokenize(texts, context_length=self.context_length)


class Clipa(Clip):
    """CLIPA: pre-train at a lower resolution (fewer image tokens; position embeddings resampled) and
    shorter text (position embeddings and causal mask cut), then optionally finetune at full size."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        super().__init__(cfg, model)
        visual, s = require_vit(model, cfg), cfg.strategy
        patch = visual.patch_size[0]
        self.low_px = s.image_size_px or self.size_px // 2
        if self.low_px % patch or not patch <= self.low_px < self.size_px:
            raise ValueError(f"strategy.image_size_px={self.low_px} must be a multiple of {cfg.model}'s patch "
                             f"size ({patch}) and below its resolution ({self.size_px})")
        if not hasattr(model, "attn_mask") or s.context_length >= model.context_length:
            raise ValueError(f"strategy.context_length={s.context_length} must be below {cfg.model}'s text "
                             f"length ({getattr(model, 'context_length', '?')}) and the model must have "
                             f"open_clip's built-in text tower")

    def transform(self, phase):
        return clip_transform(self.low_px if phase.reduced else self.size_px)

    def tokenizer(self, phase):
        tokenize = super().tokenizer(phase)
        if not phase.reduced:
            return tokenize
        return ShortText(tokenize, self.cfg.strategy.context_length, self.cfg.strategy.text_policy)

    @contextmanager
    def applied(self, model, phase):
        if not phase.reduced:
            yield
            return
        length, full_mask = self.cfg.strategy.context_length, model.attn_mask
        low_grid = (self.low_px // model.visual.patch_size[0],) * 2
        parametrize.register_parametrization(model.visual, "positional_embedding",
                                             ResampleGrid(model.visual.grid_size, low_grid), unsafe=True)
        parametrize.register_parametrization(model, "positional_embedding", Truncate(length), unsafe=True)
        model.attn_mask = full_mask[:length, :length]
        try:
            yield
        finally:
            model.attn_mask = full_mask
            parametrize.remove_parametrizations(model, "positional_embedding", leave_parametrized=False)
            parametrize.remove_parametrizations(model.visual, "positional_embedding", leave_parametrized=False)


STRATEGIES = {"clip": Clip, "negclip": NegClip, "clip_aug": ClipAug, "slip": Slip, "flip": Flip, "clipa": Clipa}


def make_strategy(cfg: TrainConfig, model: nn.Module) -> Clip:
    return STRATEGIES[cfg.strategy.name](cfg, model)
