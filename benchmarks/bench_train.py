"""Training throughput: our trainer against open_clip's own entry point (`open_clip_train.main`) on
the same WebDataset shards, model and batch, one after the other in one run; plus the speedup of
CLIPA-style token reduction (the same architecture at a quarter of the image tokens).

    python benchmarks/bench_train.py [--steps 12] [--batch 256] [--out benchmarks/results]

Both sides are timed end to end (model build, data start-up, steps); samples/s = samples / wall.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import emit  # noqa: E402

EMOJI = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji"


def write_shards(out: Path, per_shard: int = 1000) -> list[Path]:
    """The twitter emoji as png+txt WebDataset shards (what img2dataset or `curate shard` would write)."""
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(EMOJI / "pairs.parquet", columns=["path", "caption", "vendor"]).to_pylist()
            if r["vendor"] == "twitter"]
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(rows), per_shard):
        path = out / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, r in enumerate(rows[s:s + per_shard]):
                for ext, data in (("png", (EMOJI / r["path"]).read_bytes()), ("txt", r["caption"].encode())):
                    info = tarfile.TarInfo(f"{s + i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


def run_ours(model: str, shards_dir: Path, samples: int, batch: int, out: Path) -> float:
    from train.config import TrainConfig
    from train.train import train

    cfg = TrainConfig.model_validate({"model": model, "samples_seen": samples, "batch_size": batch,
                                      "data": {"shards": str(shards_dir), "workers": 1},
                                      "checkpoint_every_steps": 10**9})
    start = time.perf_counter()
    train(cfg, out)
    return time.perf_counter() - start


def run_open_clip(model: str, shards: list[Path], samples: int, batch: int, out: Path) -> float:
    from open_clip_train.main import main as open_clip_main

    from train.models import register_model_configs

    register_model_configs()
    pattern = f"{shards[0].parent}/{{{shards[0].stem}..{shards[-1].stem}}}.tar"
    argv = ["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--batch-size", str(batch), "--model", model, "--epochs", "1", "--workers", "1", "--lr", "5e-4",
            "--warmup", "20", "--precision", "fp32", "--logs", str(out), "--name", "bench", "--save-frequency", "0",
            "--report-to", "", "--log-every-n-steps", "5", "--seed", "0"]
    start = time.perf_counter()
    open_clip_main(argv)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--model", default="tiny-vit-64")
    parser.add_argument("--reduced-model", default="tiny-vit-32", help="same architecture, 1/4 of the image tokens")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    shards = write_shards(work / "shards")
    samples = args.steps * args.batch
    theirs_s = run_open_clip(args.model, shards, samples, args.batch, work / "open_clip")
    ours_s = run_ours(args.model, work / "shards", samples, args.batch, work / "ours")
    reduced_s = run_ours(args.reduced_model, work / "shards", samples, args.batch, work / "ours_reduced")
    emit({
        "model": args.model, "batch": args.batch, "samples": samples, "device": "cpu",
        "ours_samples_per_s": round(samples / ours_s, 1), "open_clip_samples_per_s": round(samples / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 3), "ours_wall_s": round(ours_s, 2), "open_clip_wall_s": round(theirs_s, 2),
        "reduced_model": args.reduced_model, "reduced_samples_per_s": round(samples / reduced_s, 1),
        "token_reduction_speedup": round(ours_s / reduced_s, 2),
    }, args.out, "train")


if __name__ == "__main__":
    main()
