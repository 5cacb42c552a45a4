"""Score stage throughput against the bare model and a per-sample loop, on the same images and model.

    python benchmarks/bench_score.py [--model tiny-vit-32] [--n 2048] [--batch 256] [--rounds 3]
        [--threads 2] [--device cpu|cuda] [--precision fp32|bf16] [--out benchmarks/results]

- stage: `run_part` of the score stage on one download part (read the tar, decode, transform, both
  encoders, heuristics, write Parquet and the done marker);
- bare: the same model's image and text encoders on pre-decoded, pre-transformed tensors and
  pre-tokenised captions, in batches (the ceiling), laid out as the stage runs them: on CPU, batches on
  `--threads` threads with torch's threads split among them (the stage's `score.threads`); also reported
  one batch at a time on all of torch's threads (`bare_one_stream_*`, the layout before `score.threads`);
- per-sample: decode, transform and encode one pair at a time (how Data-Juicer's CLIP filter runs).
`ratio` = stage / bare images per second, each the best of `--rounds` alternating runs after one warm-up
forward (so neither side pays first-call allocations or catches the other's quiet moment alone);
`ratio_vs_one_stream` = stage / bare one batch at a time.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import emit  # noqa: E402


def make_download_part(root: Path, n: int) -> Path:
    """A download part of n drawn JPEG scenes, laid out as the download stage leaves it: img2dataset's
    .jpg, .txt and .json members per sample, each after a pax header with its float mtime (as webdataset writes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.synthetic.scenes import describe, encode, random_scene, render

    rng = np.random.default_rng(0)
    (root / "download" / "shards").mkdir(parents=True)
    rows = []
    with tarfile.open(root / "download" / "shards" / "00000.tar", "w") as tar:
        for i in range(n):
            scene = random_scene(rng)
            w, h = (int(x) for x in rng.integers(96, 161, size=2))
            key, caption = f"{i:09d}", describe(scene)
            meta = json.dumps({"key": key, "caption": caption, "width": w, "height": h, "status": "success"})
            for ext, data in (("jpg", encode(render(scene, rng, w, h))), ("txt", caption.encode()), ("json", meta.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), time.time()
                tar.addfile(info, io.BytesIO(data))
            rows.append({"uid": f"{i:032x}", "caption": caption, "status": "ok", "error": None,
                         "shard": "shards/00000.tar", "key": key, "width": w, "height": h})
    path = root / "download" / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-vit-32")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="the stage's score.threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3, help="stage and bare runs alternate; the best of each counts")
    parser.add_argument("--per-sample-n", type=int, default=256, help="pairs timed in the per-sample loop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import open_clip
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from curate.decode import decode_rgb
    from curate.io import Part
    from curate.models import checkpoint
    from curate.models.clip import create, image_size, tokenizer
    from curate.score.score import ScoreConfig, ScorerConfig, ScoreStage, split_torch_threads
    from curate.stage import run_part

    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    part_path = make_download_part(work, args.n)
    torch.manual_seed(0)
    checkpoint.save(work / "model.pt", create(args.model).eval(), None, 0, args.model, {})
    stage = ScoreStage(ScoreConfig(scorers=[ScorerConfig(name="m", checkpoint=work / "model.pt")],
                                   batch_size=args.batch, threads=args.threads, device=args.device,
                                   precision=args.precision),
                       work / "download", work)
    stage.ensure_setup()  # model load happens once per worker, not per part: keep it out of the timing
    model = stage._scorers[0][1]  # the very model the stage runs, for the bare forward

    rows = pq.read_table(part_path).to_pylist()
    transform = open_clip.image_transform(image_size(model), is_train=False)
    tokenize = tokenizer(args.model)
    with tarfile.open(work / "download" / "shards" / "00000.tar") as tar:
        raw = {m.name.split(".")[0]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}
    pixels = torch.stack([transform(decode_rgb(raw[r["key"]], image_size(model))) for r in rows]).to(args.device)
    tokens = tokenize([r["caption"] for r in rows]).to(args.device)

    def bare(streams: int) -> None:
        """Batches on `streams` threads, torch's threads split among them (as the stage splits them)."""
        def forward(i: int) -> None:
            with torch.inference_mode(), stage._autocast():
                model.encode_image(pixels[i:i + args.batch], normalize=True).float().cpu()
                model.encode_text(tokens[i:i + args.batch], normalize=True).float().cpu()

        with split_torch_threads(streams), ThreadPoolExecutor(streams) as pool:
            list(pool.map(forward, range(0, len(rows), args.batch)))

    streams = args.threads if args.device == "cpu" else 1  # on a GPU the stage's forwards take turns
    bare(streams), bare(1)  # warm-up: first-call allocations and kernel selection count for neither side
    stage_times, bare_times, one_stream_times = [], [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        run_part(stage, Part(0, part_path, work / f"score-{r}"))
        stage_times.append(time.perf_counter() - start)
        for layout, times in ((streams, bare_times), (1, one_stream_times)):
            start = time.perf_counter()
            bare(layout)
            times.append(time.perf_counter() - start)
    stage_s, bare_s, one_stream_s = min(stage_times), min(bare_times), min(one_stream_times)

    with torch.no_grad(), stage._autocast():
        start = time.perf_counter()
        for r in rows[:args.per_sample_n]:
            image = transform(Image.open(io.BytesIO(raw[r["key"]])).convert("RGB"))[None].to(args.device)  # as Data-Juicer does
            text = tokenize([r["caption"]]).to(args.device)
            float((model.encode_image(image, normalize=True) * model.encode_text(text, normalize=True)).sum())
        loop_s = time.perf_counter() - start

    n = len(rows)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}"
    emit({"model": args.model, "image_px": image_size(model), "n": n, "batch": args.batch, "device": device,
          "precision": args.precision, "torch_threads": torch.get_num_threads(), "score_threads": args.threads,
          "rounds": args.rounds,
          "stage_images_per_s": round(n / stage_s, 1), "bare_forward_images_per_s": round(n / bare_s, 1),
          "bare_one_stream_images_per_s": round(n / one_stream_s, 1),
          "stage_s_each": [round(t, 2) for t in stage_times], "bare_s_each": [round(t, 2) for t in bare_times],
          "bare_one_stream_s_each": [round(t, 2) for t in one_stream_times],
          "per_sample_images_per_s": round(args.per_sample_n / loop_s, 1),
          "ratio": round(bare_s / stage_s, 3), "ratio_vs_one_stream": round(one_stream_s / stage_s, 3),
          "stage_over_per_sample": round((n / stage_s) / (args.per_sample_n / loop_s), 2)},
         args.out, f"score_{args.model}" + ("" if args.device == "cpu" else f"_{args.device}_{args.precision}"))


if __name__ == "__main__":
    main()
