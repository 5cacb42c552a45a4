"""The demo with its run directory on an object store (moto's S3 server on loopback) vs on local disk.

    python benchmarks/bench_storage.py [--rounds 1] [--set KEY=VALUE ...] [--out benchmarks/results]

Each side is `curate run configs/demo.yaml` in its own process, timed end to end (start-up, every stage, the
report); the sides take turns, round by round, on the same pool (the same loopback port, so the same uids).
The S3 side starts from an empty working copy, so it uploads everything it makes (parts as they are committed,
the rest at the end of each stage). `ratio` = local wall / S3 wall (higher is better; goal >= 0.8, i.e. the
store within 1.25x). `--set` shrinks the demo (e.g. --set synth.n=600 --set filter.samples_seen=4096).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, median_range  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_storage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_run(out: str, overrides: list[str], env: dict) -> float:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "configs/demo.yaml", "--out", out]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{out}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="folder for storage.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")
    scratch = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    overrides = [*args.overrides, f"synth.port={free_port()}"]
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    try:
        for r in range(args.rounds):
            order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
            for side in order:
                cache = scratch / f"cache-{r}"
                out = str(scratch / f"local-{r}") if side == "local" else f"s3://bench/demo-{r}"
                walls[side].append(timed_run(out, overrides, {**env, "CURATE_CACHE_DIR": str(cache)}))
                log.info("round %d %s: %.1f s", r, side, walls[side][-1])
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = [a / b for a, b in zip(walls["local"], walls["s3"])]
    emit({**median_range("local_wall_s", walls["local"], 1), **median_range("s3_wall_s", walls["s3"], 1),
          **median_range("ratio", ratios), "rounds": args.rounds, "overrides": args.overrides}, args.out, "storage")


if __name__ == "__main__":
    main()
