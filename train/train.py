"""Train a CLIP model on one data source for `samples_seen` samples: `samples_seen / batch_size` steps.

Reads top to bottom: device, model and strategy, optimizer and schedule, resume, data, loop, checkpoint.
Strategy specifics (transforms, model changes per phase, loss) live in train/strategies.py.
A sample that does not decode is left out of its batch: the summary's `samples_seen` counts the samples
the model trained on, `samples_skipped` the ones the data stream gave that it did not."""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import pyarrow.parquet as pq
import torch
from pydantic import ValidationError
from tqdm import tqdm

from curate.models import checkpoint
from curate.models.clip import create
from curate.models.train_config import TrainConfig
from train.augment import normalize_batch
from train.data import PairStream, collate, pairs_records, resolve_shards, shard_records
from train.strategies import make_strategy, phase_lr, plan_phases

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
    """Linear warmup, then cosine decay to zero at the end of the step's phase (one phase for most
    strategies; FLIP and CLIPA may end with a finetune phase on its own schedule)."""
    phase = next(p for p in plan_phases(cfg) if step < p.end_step)
    return phase_lr(phase, step)


def adamw(modules: list[torch.nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    """open_clip's grouping: no weight decay on gains, biases, embeddings' scales and logit_scale."""
    decay, no_decay = [], []
    for name, p in (item for m in modules for item in m.named_parameters()):
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in name or "ln" in name or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def same_config(saved: dict, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's train config is `cfg` (keys added since it was saved take their defaults)."""
    try:
        return TrainConfig.model_validate(saved).model_dump(mode="json") == cfg.model_dump(mode="json")
    except ValidationError:
        return False


def make_loader(cfg: TrainConfig, records, transform, tokenize, position: int) -> torch.utils.data.DataLoader:
    """Batches of the endless seeded stream, starting after `position` samples."""
    stream = PairStream(records, transform, tokenize, cfg.seed, start=position, batch_size=cfg.batch_size)
    return torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.data.workers,
                                       collate_fn=collate, persistent_workers=False)


def train(cfg: TrainConfig, out_dir: Path) -> dict:
    """Train (or resume) into `out_dir`: checkpoint.pt, metrics.jsonl, summary.json. A finished run is
    kept as it is (its summary is returned)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # model, and the strategy (its transforms, model changes, loss and any extra trained modules)
    model = create(cfg.model, cfg.pretrained, device="cpu")
    strategy = make_strategy(cfg, model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model, extra = model.to(device), strategy.extra.to(device)
    forward = torch.compile(model) if cfg.compile else model

    # optimizer, schedule, and where a previous run stopped
    optimizer = adamw([model, extra], cfg)
    step = position = seen = skipped = 0  # steps done, samples the stream gave, trained on, skipped
    ckpt_path, summary_path = out_dir / "checkpoint.pt", out_dir / "summary.json"
    if ckpt_path.exists():
        state = checkpoint.read(ckpt_path)
        if not same_config(state["train_config"], cfg):
            raise ValueError(f"{ckpt_path} was trained with another config; use a new --out to start over")
        checkpoint.load_into(model, state, ckpt_path)
        extra.load_state_dict(state.get("strategy_state") or {})
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        position = state.get("position", step * cfg.batch_size)  # checkpoints from before these counts
        seen, skipped = state.get("samples_seen", position), state.get("samples_skipped", 0)
        if step >= cfg.steps and summary_path.exists():
            log.info("%s is finished (%d steps); keeping it", out_dir, step)
            return json.loads(summary_path.read_text())
        log.info("resuming at step %d of %d", step, cfg.steps)
    records = training_records(cfg)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()

    # loop: phase by phase; each phase's data continues the same seeded stream
    model.train()
    extra.train()
    start_seen, start_time = seen, time.time()
    metrics = open(out_dir / "metrics.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.model} {cfg.strategy.name}", unit="step",
               mininterval=2)
    for phase in plan_phases(cfg):
        if step >= phase.end_step:
            continue
        with strategy.applied(model, phase):
            batches = iter(make_loader(cfg, records, strategy.transform(phase), strategy.tokenizer(phase), position))
            while step < phase.end_step:
                images, texts, n_skipped = next(batches)
                position += len(images) + n_skipped
                if len(images) < 2:  # nothing to contrast: the whole batch is skipped
                    skipped += len(images) + n_skipped
                    continue
                skipped += n_skipped
                lr = cosine_lr(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss, figures = strategy.loss(model, forward, normalize_batch(images.to(device)), texts.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                step += 1
                seen += len(images)
                rate = (seen - start_seen) / (time.time() - start_time)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_per_s=f"{rate:.0f}")
                if step % cfg.log_every_steps == 0 or step == cfg.steps:
                    metrics.write(json.dumps({
                        "step": step, "samples": seen, "phase": phase.name,
                        "loss": round(loss.item(), 5), **{k: round(v, 5) for k, v in figures.items()},
                        "lr": lr, "samples_per_s": round(rate, 1), "samples_skipped": skipped}) + "\n")
                    metrics.flush()
                if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
                    checkpoint.save(ckpt_path, model, optimizer, step, cfg.model, cfg.model_dump(mode="json"),
                                    extra.state_dict(),
                                    {"position": position, "samples_seen": seen, "samples_skipped": skipped})
    bar.close()
    metrics.close()

    wall_s = time.time() - start_time
    summary = {"model": cfg.model, "strategy": cfg.strategy.name, "steps": step, "samples_seen": seen,
               "samples_skipped": skipped, "records": len(records), "wall_s": round(wall_s, 2),
               "samples_per_s": round((seen - start_seen) / max(wall_s, 1e-9), 1),
               "checkpoint": str(ckpt_path)}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
