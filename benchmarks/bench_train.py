"""Training throughput: our trainer against open_clip's own entry point (`open_clip_train.main`) on
the same WebDataset shards, model and batch, in one run; plus the speedup of CLIPA-style token reduction
(the same architecture at a quarter of the image tokens, our trainer).

    python benchmarks/bench_train.py [--steps 8] [--batch 256] [--rounds 3] [--out benchmarks/results]

Every side first runs one untimed step (imports, first-call allocations, shards in the page cache), then
the sides take turns, `--rounds` times each. Each run is timed end to end (model build, data start-up,
steps); samples/s = samples / wall, the median over rounds with [min, max]; `ratio` = ours / open_clip
per round, median over rounds.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import alternate, emit, median_range  # noqa: E402

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


def run_ours(model: str, shards_dir: Path, samples: int, batch: int, out: Path) -> None:
    from curate.models.train_config import TrainConfig
    from train.train import train

    cfg = TrainConfig.model_validate({"model": model, "samples_seen": samples, "batch_size": batch,
                                      "data": {"shards": str(shards_dir), "workers": 1},
                                      "checkpoint_every_steps": 10**9})
    train(cfg, out)


def run_open_clip(model: str, shards: list[Path], samples: int, batch: int, out: Path) -> None:
    from open_clip_train.main import main as open_clip_main

    from curate.models.clip import register_model_configs

    register_model_configs()
    pattern = f"{shards[0].parent}/{{{shards[0].stem}..{shards[-1].stem}}}.tar"
    argv = ["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--batch-size", str(batch), "--model", model, "--epochs", "1", "--workers", "1", "--lr", "5e-4",
            "--warmup", "20", "--precision", "fp32", "--logs", str(out), "--name", "bench", "--save-frequency", "0",
            "--report-to", "", "--log-every-n-steps", "5", "--seed", "0"]
    open_clip_main(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--model", default="tiny-vit-64")
    parser.add_argument("--reduced-model", default="tiny-vit-32", help="same architecture, 1/4 of the image tokens")
    parser.add_argument("--rounds", type=int, default=3, help="the sides take turns; medians count")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    shards = write_shards(work / "shards")
    samples = args.steps * args.batch
    runs = {"open_clip": lambda n, out: run_open_clip(args.model, shards, n, args.batch, out),
            "ours": lambda n, out: run_ours(args.model, work / "shards", n, args.batch, out),
            "reduced": lambda n, out: run_ours(args.reduced_model, work / "shards", n, args.batch, out)}

    def side(name: str):
        return lambda r: runs[name](samples, work / f"{name}-{r}")

    try:
        for name, run in runs.items():
            run(args.batch, work / f"warmup-{name}")  # one step
        seconds, _ = alternate({name: side(name) for name in runs}, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit({
        "model": args.model, "batch": args.batch, "samples": samples, "rounds": args.rounds, "device": "cpu",
        **median_range("ratio", [t / o for o, t in zip(seconds["ours"], seconds["open_clip"])]),
        **median_range("ours_samples_per_s", [samples / s for s in seconds["ours"]], 1),
        **median_range("open_clip_samples_per_s", [samples / s for s in seconds["open_clip"]], 1),
        "ours_wall_s_each": [round(s, 2) for s in seconds["ours"]],
        "open_clip_wall_s_each": [round(s, 2) for s in seconds["open_clip"]],
        "reduced_model": args.reduced_model,
        **median_range("reduced_samples_per_s", [samples / s for s in seconds["reduced"]], 1),
        **median_range("token_reduction_speedup", [o / r for o, r in zip(seconds["ours"], seconds["reduced"])], 2),
    }, args.out, "train")


if __name__ == "__main__":
    main()
