"""Download stage vs bare img2dataset.download: same URLs, same loopback server, same workers.

    python benchmarks/bench_download.py [--n 5000] [--workers 2] [--threads 16] [--out benchmarks/results]

Prints one JSON line: samples/s of both, `ratio` = ours / img2dataset, peak RSS of each run
(the process tree, server excluded) and the Ray start-up time (paid once per run, not per stage).
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

from benchmarks.common import PeakRSS, emit, serve_in_subprocess  # noqa: E402


def run_img2dataset(pool: Path, out: Path, args) -> int:
    from img2dataset import download

    download(url_list=str(pool), input_format="parquet", url_col="url", caption_col="caption",
             save_additional_columns=["uid"], output_format="webdataset", output_folder=str(out),
             processes_count=args.workers, thread_count=args.threads, number_sample_per_shard=args.rows_per_part,
             resize_mode="no", skip_reencode=True, encode_format="jpg", min_image_size=32, max_aspect_ratio=5.0,
             compute_hash="sha256", timeout=10, retries=0, distributor="multiprocessing", enable_wandb=False)
    return sum(1 for _ in out.glob("*.tar"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rows-per-part", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from curate.download import DownloadConfig
    from curate.synth import NoiseConfig, SynthConfig, synthesize
    from pipelines.ray_runner import RayRunner
    from pipelines.run import run_download

    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    clean = NoiseConfig(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0,
                        near_duplicate=0, broken=0)
    synthesize(SynthConfig(n=args.n, seed=0, noise=clean), work / "pool")
    server = serve_in_subprocess(work / "pool")
    try:
        with PeakRSS(exclude=(server.pid,)) as base_rss:
            start = time.perf_counter()
            run_img2dataset(work / "pool" / "pool.parquet", work / "img2dataset", args)
            base_s = time.perf_counter() - start
        base_ok = sum(pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success")
                      for p in (work / "img2dataset").glob("*.parquet"))

        runner = RayRunner(num_cpus=args.workers)
        start = time.perf_counter()
        runner.ensure_ray()
        ray_init_s = time.perf_counter() - start
        cfg = DownloadConfig(input=work / "pool" / "pool.parquet", rows_per_part=args.rows_per_part,
                             thread_count=args.threads, timeout_s=10, allow_private_networks=True)
        with PeakRSS(exclude=(server.pid,)) as ours_rss:
            start = time.perf_counter()
            stats = run_download(cfg, work / "ours", runner)
            ours_s = time.perf_counter() - start
        runner.close()
    finally:
        server.terminate()
    ours_ok = stats["by_status"].get("ok", 0)
    emit({
        "n": args.n, "workers": args.workers, "threads": args.threads,
        "ours_samples_per_s": round(ours_ok / ours_s, 1), "img2dataset_samples_per_s": round(base_ok / base_s, 1),
        "ratio": round((ours_ok / ours_s) / (base_ok / base_s), 3),
        "ratio_incl_ray_init": round((ours_ok / (ours_s + ray_init_s)) / (base_ok / base_s), 3),
        "ours_ok": ours_ok, "img2dataset_ok": base_ok, "ours_wall_s": round(ours_s, 2),
        "img2dataset_wall_s": round(base_s, 2), "ray_init_s": round(ray_init_s, 2),
        "ours_peak_rss_gb": ours_rss.peak_gb, "img2dataset_peak_rss_gb": base_rss.peak_gb,
    }, args.out, "download")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
