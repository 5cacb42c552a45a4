"""Learning is real: a tiny ViT trained on the twitter emoji against the same model untrained,
evaluated on the google emoji (zero-shot `group`, retrieval, linear probe), over several seeds.

    python benchmarks/learning_emoji.py [--samples-seen 40960] [--seeds 0 1 2] [--out benchmarks/results]

Prints one JSON line with per-seed results and the mean and spread of each figure; `ratio` is the
trained model's image-to-text recall@5 over the untrained one's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402

EMOJI = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji"
FIGURES = {"zero_shot_group_top1": ("zero_shot", "group", "top1"), "i2t_r5": ("retrieval", "i2t", "r5"),
           "t2i_r5": ("retrieval", "t2i", "r5"), "i2t_r1": ("retrieval", "i2t", "r1"),
           "probe_group_top1": ("linear_probe", "group", "top1")}


def figures(result: dict) -> dict:
    return {name: result[a][b][c] for name, (a, b, c) in FIGURES.items()}


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-seen", type=int, default=40_960)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="tiny-vit-32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from curate.models.clip import create
    from curate.models.train_config import TrainConfig
    from train.evaluate import evaluate, evaluate_model
    from train.train import train

    runs = []
    work = Path(tempfile.mkdtemp(prefix="learning-emoji-"))
    for seed in args.seeds:
        cfg = TrainConfig.model_validate({
            "model": args.model, "seed": seed, "samples_seen": args.samples_seen, "batch_size": 256,
            "data": {"pairs": str(EMOJI), "pairs_filter": {"vendor": ["twitter"]}, "workers": 1}})
        start = time.time()
        summary = train(cfg, work / f"seed{seed}")
        trained = figures(evaluate(Path(summary["checkpoint"]), EMOJI, ["group"], {"vendor": "google"}))
        import torch

        torch.manual_seed(seed)
        untrained = figures(evaluate_model(create(args.model), args.model, EMOJI, ["group"], {"vendor": "google"}))
        runs.append({"seed": seed, "trained": trained, "untrained": untrained, "train_wall_s": summary["wall_s"],
                     "samples_per_s": summary["samples_per_s"], "total_wall_s": round(time.time() - start, 1)})
        print(runs[-1], file=sys.stderr)
    result = {"model": args.model, "samples_seen": args.samples_seen, "seeds": args.seeds, "runs": runs}
    for side in ("trained", "untrained"):
        result[side] = {name: spread([r[side][name] for r in runs]) for name in FIGURES}
    result["ratio"] = round(result["trained"]["i2t_r5"]["mean"] / max(result["untrained"]["i2t_r5"]["mean"], 1e-9), 2)
    emit(result, args.out, "learning_emoji")


if __name__ == "__main__":
    main()
