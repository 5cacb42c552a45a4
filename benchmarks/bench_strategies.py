"""Training speed of the strategies against plain `clip` on the same model and batch: `clipa` at a
quarter of the image tokens (half the resolution) and 8 text tokens, `flip` at 50% patch masking, and
`slip` (three image passes per sample). Two measurements, both interleaved so that a machine shared with
other work disturbs every strategy alike:

- trainer: whole `train()` runs on the twitter emoji shards, one per strategy per round; samples/s is
  the trainer's own figure (samples over the wall time of its loop, data loading included), median
  over rounds;
- step: one optimizer step (forward, backward, AdamW) per strategy in turn on fixed random batches at
  each strategy's resolution and text length, no data loading; median step time over `--step-repeats`.

    python benchmarks/bench_strategies.py [--steps 16] [--batch 256] [--rounds 2] [--out benchmarks/results]

`ratio` = clipa / clip samples/s in the trainer; `<strategy>_speedup` = strategy / clip (trainer) and
`<strategy>_step_speedup` the same from the step timing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_train import write_shards  # noqa: E402
from benchmarks.common import emit  # noqa: E402

STRATEGIES = {
    "clip": {"name": "clip"},
    "clipa": {"name": "clipa", "context_length": 8},  # image_size_px none = half: a quarter of the tokens
    "flip": {"name": "flip", "mask_ratio": 0.5},
    "slip": {"name": "slip"},
}


def run(strategy: dict, model: str, shards: Path, samples: int, batch: int, workers: int, out: Path) -> float:
    from curate.models.train_config import TrainConfig
    from train.train import train

    cfg = TrainConfig.model_validate({
        "model": model, "samples_seen": samples, "batch_size": batch, "strategy": strategy,
        "data": {"shards": str(shards), "workers": workers}, "checkpoint_every_steps": 10**9})
    return train(cfg, out)["samples_per_s"]


def step_times(names: list[str], model: str, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one training step per strategy, the strategies taking turns step by step."""
    import time

    import torch

    from curate.models.clip import create
    from curate.models.train_config import TrainConfig
    from train.strategies import make_strategy, plan_phases
    from train.train import adamw

    setups = {}
    for name in names:
        cfg = TrainConfig.model_validate({"model": model, "batch_size": batch, "samples_seen": batch,
                                          "strategy": STRATEGIES[name], "data": {"shards": "."}})
        torch.manual_seed(0)
        net = create(model)
        strategy = make_strategy(cfg, net)
        phase = plan_phases(cfg)[0]
        size = getattr(strategy, "low_px", strategy.size_px)
        length = STRATEGIES[name].get("context_length", net.context_length)
        views = 3 if name == "slip" else 0
        images = torch.randn(batch, *([views] if views else []), 3, size, size)
        texts = torch.randint(1, 49000, (batch, length))
        texts[:, -1] = 49407  # the end token, where the text tower pools
        setups[name] = (net.train(), strategy, adamw([net, strategy.extra], cfg), phase, images, texts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (net, strategy, optimizer, phase, images, texts) in setups.items():
            with strategy.applied(net, phase):
                start = time.perf_counter()
                loss, _ = strategy.loss(net, net, images, texts)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t[1:]) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes")
    parser.add_argument("--model", default="tiny-vit-64", help="a ViT: 64 px / patch 8 = 64 image tokens")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, clip first")
    parser.add_argument("--step-repeats", type=int, default=10, help="timed steps per strategy (0: skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    names = args.strategies.split(",")
    if names[0] != "clip" or set(names) - set(STRATEGIES):
        parser.error(f"--strategies must start with clip and name only {list(STRATEGIES)}")
    work = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    samples = args.steps * args.batch
    rates: dict[str, list[float]] = {n: [] for n in names}
    try:
        write_shards(work / "shards")
        for r in range(args.rounds):
            for name in names:
                rates[name].append(run(STRATEGIES[name], args.model, work / "shards", samples, args.batch,
                                       args.workers, work / f"{name}-{r}"))
    finally:
        shutil.rmtree(work)  # ~170 MB of checkpoint per run
    median = {n: statistics.median(v) for n, v in rates.items()}
    steps = step_times(names, args.model, args.batch, args.step_repeats) if args.step_repeats else {}
    result = {"model": args.model, "batch": args.batch, "samples": samples, "rounds": args.rounds, "device": "cpu",
              "ratio": round(median["clipa"] / median["clip"], 3) if "clipa" in median else None}
    for name in names:
        result[f"{name}_samples_per_s"] = round(median[name], 1)
        result[f"{name}_runs_samples_per_s"] = rates[name]
        if name != "clip":
            result[f"{name}_speedup"] = round(median[name] / median["clip"], 3)
        if steps:
            result[f"{name}_step_samples_per_s"] = round(args.batch / steps[name], 1)
            if name != "clip":
                result[f"{name}_step_speedup"] = round(steps["clip"] / steps[name], 3)
    result["strategies"] = {n: STRATEGIES[n] for n in names}
    emit(result, args.out, "strategies")


if __name__ == "__main__":
    main()
