"""Download stage vs bare img2dataset.download: same URLs, same loopback server, same workers.

    python benchmarks/bench_download.py [--n 5000] [--workers 2] [--threads 16] [--rounds 3] [--out benchmarks/results]

The two sides take turns, `--rounds` times each. Start-up is counted on both: every img2dataset call
spawns its process pool (and imports cv2 and albumentations there); every run of ours starts Ray, runs the
stage and shuts Ray down (the Ray start alone: `ray_init_s_each`). The fetch differs: ours swaps
img2dataset's `download_image` for curate's guarded fetch (address guard, deadline, byte cap, header
check); the rest of the download (Downloader, resizer, webdataset writer) is img2dataset's on both sides.
Prints one JSON line: samples/s of both (median over rounds, with [min, max]), `ratio` = ours / img2dataset
(per round, median over rounds), and the peak RSS of each side (the process tree, server excluded).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from benchmarks.common import PeakRSS, alternate, emit, median_range, serve_in_subprocess  # noqa: E402


def run_img2dataset(pool: Path, out: Path, args) -> int:
    """Bare img2dataset on the pool; returns the samples it fetched."""
    import pyarrow.parquet as pq
    from img2dataset import download

    download(url_list=str(pool), input_format="parquet", url_col="url", caption_col="caption",
             save_additional_columns=["uid"], output_format="webdataset", output_folder=str(out),
             processes_count=args.workers, thread_count=args.threads, number_sample_per_shard=args.rows_per_part,
             resize_mode="no", skip_reencode=True, encode_format="jpg", min_image_size=32, max_aspect_ratio=5.0,
             compute_hash="sha256", timeout=10, retries=0, distributor="multiprocessing", enable_wandb=False)
    return sum(pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success")
               for p in out.glob("*.parquet"))


def run_ours(pool: Path, out: Path, args, ray_init_s: list[float]) -> int:
    """Our stage on a Ray runner started and stopped here; returns the rows downloaded ok."""
    from curate.download.download import DownloadConfig, run_download
    from pipelines.ray_runner import RayRunner

    runner = RayRunner(num_cpus=args.workers)
    try:
        start = time.perf_counter()
        runner.ensure_ray()
        ray_init_s.append(time.perf_counter() - start)
        cfg = DownloadConfig(input=pool, rows_per_part=args.rows_per_part, thread_count=args.threads, timeout_s=10,
                             allow_private_networks=True)
        stats = run_download(cfg, out, runner)
    finally:
        runner.close()
    return stats["by_status"].get("ok", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rows-per-part", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="the sides take turns; medians count")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from curate.synthetic.synth import NoiseConfig, SynthConfig, synthesize

    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    pool = work / "pool" / "pool.parquet"
    clean = NoiseConfig(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0,
                        near_duplicate=0, broken=0)
    synthesize(SynthConfig(n=args.n, seed=0, noise=clean), work / "pool")
    server = serve_in_subprocess(work / "pool")
    peaks: dict[str, list[float]] = {"ours": [], "img2dataset": []}
    ray_init_s: list[float] = []

    def measured(name: str, run):
        def side(r: int) -> int:
            with PeakRSS(exclude=(server.pid,)) as rss:
                ok = run(work / f"{name}-{r}")
            peaks[name].append(rss.peak_gb)
            shutil.rmtree(work / f"{name}-{r}", ignore_errors=True)
            return ok
        return side

    try:
        seconds, ok = alternate({"img2dataset": measured("img2dataset", lambda out: run_img2dataset(pool, out, args)),
                                 "ours": measured("ours", lambda out: run_ours(pool, out, args, ray_init_s))},
                                args.rounds)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    rates = {name: [k / s for k, s in zip(ok[name], seconds[name])] for name in seconds}
    emit({
        "n": args.n, "workers": args.workers, "threads": args.threads, "rounds": args.rounds,
        **median_range("ratio", [o / b for o, b in zip(rates["ours"], rates["img2dataset"])]),
        **median_range("ours_samples_per_s", rates["ours"], 1),
        **median_range("img2dataset_samples_per_s", rates["img2dataset"], 1),
        "ours_ok_each": ok["ours"], "img2dataset_ok_each": ok["img2dataset"],
        "ours_wall_s_each": [round(s, 2) for s in seconds["ours"]],
        "img2dataset_wall_s_each": [round(s, 2) for s in seconds["img2dataset"]],
        "ray_init_s_each": [round(s, 2) for s in ray_init_s],
        "ours_peak_rss_gb": max(peaks["ours"]), "img2dataset_peak_rss_gb": max(peaks["img2dataset"]),
        "startup": "counted on both sides: img2dataset spawns its process pool per call, ours starts and stops Ray",
        "fetch": "ours: curate's guarded fetch in place of img2dataset's download_image; img2dataset: its own",
    }, args.out, "download")


if __name__ == "__main__":
    main()
