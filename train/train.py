"""Train a CLIP model on one data source for exactly `samples_seen` samples.

Reads top to bottom: device, model, data, optimizer and schedule, resume, loop, checkpoint."""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from train import checkpoint
from train.config import TrainConfig
from train.data import PairStream, collate, pairs_records, resolve_shards, shard_records
from train.models import create, image_size, tokenizer

log = logging.getLogger(__name__)


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but CUDA is not available")
    return choice


def training_records(cfg: TrainConfig):
    data = cfg.data
    if data.pairs is not None:
        return pairs_records(data.pairs, data.pairs_filter)
    uids = None
    if data.uids is not None:
        uids = set(pq.read_table(data.uids, columns=["uid"]).column("uid").to_pylist())
    return shard_records(resolve_shards(data.shards), uids)


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup for `warmup_steps`, then cosine decay to zero at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """open_clip's grouping: no weight decay on gains, biases, embeddings' scales and logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in name or "ln" in name or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def train(cfg: TrainConfig, out_dir: Path) -> dict:
    """Train (or resume) into `out_dir`: checkpoint.pt, metrics.jsonl, summary.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # model
    model = create(cfg.model, cfg.pretrained, device="cpu")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model = model.to(device)
    forward = torch.compile(model) if cfg.compile else model
    transform = open_clip.image_transform(image_size(model), is_train=True)
    tokenize = tokenizer(cfg.model)

    # optimizer, schedule, and where a previous run stopped
    optimizer = adamw(model, cfg)
    step = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = checkpoint.read(ckpt_path)
        if state["train_config"] != cfg.model_dump(mode="json"):
            raise ValueError(f"{ckpt_path} was trained with another config; use a new --out to start over")
        checkpoint.load_into(model, state, ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info("resuming at step %d of %d", step, cfg.steps)

    # data: an endless seeded stream, started where the last run stopped
    stream = PairStream(training_records(cfg), transform, tokenize, cfg.seed, start=step * cfg.batch_size)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.data.workers,
                                         collate_fn=collate, persistent_workers=False)
    loss_fn = open_clip.ClipLoss()
    autocast = torch.autocast(device, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()

    # loop
    model.train()
    skipped, start_step, start_time = 0, step, time.time()
    metrics = open(out_dir / "metrics.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.model}", unit="step", mininterval=2)
    batches = iter(loader)
    while step < cfg.steps:
        images, texts, n_skipped = next(batches)
        skipped += n_skipped
        if len(images) < 2:
            continue
        lr = cosine_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            image_features, text_features, logit_scale = forward(images.to(device), texts.to(device))
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        rate = (step - start_step) * cfg.batch_size / (time.time() - start_time)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", samples_per_s=f"{rate:.0f}")
        if step % cfg.log_every_steps == 0 or step == cfg.steps:
            metrics.write(json.dumps({"step": step, "samples": step * cfg.batch_size, "loss": round(loss.item(), 5),
                                      "lr": lr, "samples_per_s": round(rate, 1), "skipped": skipped}) + "\n")
            metrics.flush()
        if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
            checkpoint.save(ckpt_path, model, optimizer, step, cfg.model, cfg.model_dump(mode="json"))
    bar.close()
    metrics.close()

    wall_s = time.time() - start_time
    summary = {"model": cfg.model, "steps": step, "samples_seen": step * cfg.batch_size, "records": len(stream.records),
               "skipped": skipped, "wall_s": round(wall_s, 2),
               "samples_per_s": round((step - start_step) * cfg.batch_size / max(wall_s, 1e-9), 1),
               "checkpoint": str(ckpt_path)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
