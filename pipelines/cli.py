"""The `curate` command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EPILOG = """examples:
  curate run configs/demo.yaml --out runs/demo          synth -> serve -> download, with a funnel
  curate run configs/demo.yaml --out runs/x --set synth.n=500 --set runner.kind=local
  curate synth --n 2000 --seed 0 --out pool/             a web-like pool with ground truth
  curate synth --from-pairs ../shared/data/emoji --out pool/
  curate download --input pool/pool.parquet --serve pool/ --out runs/dl
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set download.timeout_s=5 (repeatable)")
    p.add_argument("--runner", choices=["ray", "local"], help="ray (default) or local (in-process, for debugging)")
    p.add_argument("--ray-address", help="join a running Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Curate CLIP training data: synthesize or read a URL+caption pool, download it with "
                    "img2dataset, and account for every row.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline config into a run directory",
                         description="Run the stages of CONFIG into --out. Finished parts are skipped, so "
                                     "rerunning the same command resumes an interrupted run.")
    run.add_argument("config", type=Path, help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("--out", type=Path, required=True, help="run directory")
    run.add_argument("--stages", help="comma-separated subset of the config's stages, e.g. download")
    _add_common(run)

    synth = sub.add_parser("synth", help="make a synthetic web-like pool with ground-truth noise labels",
                           description="Write OUT/pool.parquet (uid, url, caption, gt_* columns) and the files "
                                       "its URLs serve. Noise fractions: --set noise.mismatched_caption=0.1 ...")
    synth.add_argument("--n", type=int, help="pool rows (default 2000; with --from-pairs: every pair + dups)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--from-pairs", type=Path, help="add the noise to a clean pairs directory instead")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a synth key, e.g. --set noise.broken=0.1")
    synth.add_argument("-v", "--verbose", action="store_true")

    dl = sub.add_parser("download", help="download a URL+caption table with img2dataset",
                        description="Download INPUT (parquet, csv or jsonl; column names via --set "
                                    "download.url_col=...) into OUT/download: img2dataset shards plus a "
                                    "Parquet per part with a status for every input row.")
    dl.add_argument("--input", type=Path, required=True, help="input file or folder of files")
    dl.add_argument("--out", type=Path, required=True, help="run directory (writes OUT/download)")
    dl.add_argument("--serve", type=Path, metavar="SYNTH_DIR",
                    help="serve a `curate synth` folder on loopback while downloading")
    _add_common(dl)

    tr = sub.add_parser("train", help="train a CLIP model for a fixed number of samples seen",
                        description="Train the model of CONFIG (a train YAML, e.g. configs/train/emoji-twitter.yaml) "
                                    "into OUT: checkpoint.pt, metrics.jsonl, summary.json. Rerunning resumes.")
    tr.add_argument("config", type=Path)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key, e.g. --set samples_seen=5000 --set data.workers=0")
    tr.add_argument("-v", "--verbose", action="store_true")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a pairs directory; prints JSON",
                        description="Zero-shot top-1/top-5 per --class-column, image<->text recall@1/5/10, and a "
                                    "linear probe on frozen image features (fixed 80/20 split).")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--eval-set", type=Path, required=True, help="pairs directory (pairs.parquet: path, caption)")
    ev.add_argument("--class-column", action="append", default=[], help="class column, e.g. group (repeatable)")
    ev.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                    help="evaluate only rows where COL equals VALUE, e.g. --where vendor=google")
    ev.add_argument("-v", "--verbose", action="store_true")
    return parser


def print_funnel(stage: str, stats: dict, out=None) -> None:
    out = out or sys.stdout
    rows = stats["input_rows"]
    print(f"\n{stage} funnel", file=out)
    print(f"  {'input rows':<22}{rows:>9}", file=out)
    for status, count in sorted(stats["by_status"].items(), key=lambda kv: (kv[0] != "ok", -kv[1])):
        print(f"  {status:<22}{count:>9}  {100 * count / max(rows, 1):5.1f}%", file=out)
    total = sum(stats["by_status"].values())
    print(f"  {'total':<22}{total:>9}  {'= input rows' if total == rows else '!= input rows'}", file=out)


def _runner_overrides(args) -> list[str]:
    extra = []
    if getattr(args, "runner", None):
        extra.append(f"runner.kind={args.runner}")
    if getattr(args, "ray_address", None):
        extra.append(f"runner.ray_address={args.ray_address}")
    return extra


def _cmd_run(args) -> int:
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    overrides = args.overrides + _runner_overrides(args)
    if args.stages:
        overrides.append(f"stages=[{args.stages}]")
    cfg = load_config(args.config, overrides)
    stats = run_pipeline(cfg, args.out)
    for stage, s in stats.items():
        if stage != "synth" and "by_status" in s:
            print_funnel(stage, s)
    print(f"\nrun directory: {args.out}")
    return 0


def _cmd_synth(args) -> int:
    from pipelines.config import load_config
    from curate.synth import synthesize

    overrides = [f"synth.{o}" for o in args.overrides] + [f"synth.seed={args.seed}"]
    if args.n is not None:
        overrides.append(f"synth.n={args.n}")
    elif args.from_pairs:
        overrides.append("synth.n=null")
    if args.from_pairs:
        overrides.append(f"synth.from_pairs={args.from_pairs}")
    cfg = load_config(None, overrides).synth
    table = synthesize(cfg, args.out)
    print(json.dumps({"rows": table.num_rows, "pool": str(args.out / "pool.parquet")}))
    return 0


def _cmd_download(args) -> int:
    from pipelines.config import load_config
    from pipelines.run import make_runner, run_download

    cfg = load_config(None, args.overrides + _runner_overrides(args) + [f"download.input={args.input}"])
    runner = make_runner(cfg.runner)
    try:
        stats = run_download(cfg.download, args.out, runner, args.serve)
    finally:
        runner.close()
    print_funnel("download", stats)
    return 0


def _cmd_train(args) -> int:
    from pipelines.config import load_config
    from train.config import TrainConfig
    from train.train import train

    cfg = load_config(args.config, args.overrides, schema=TrainConfig)
    print(json.dumps(train(cfg, args.out)))
    return 0


def _cmd_eval(args) -> int:
    from train.evaluate import evaluate

    where = dict(w.split("=", 1) for w in args.where if "=" in w)
    if len(where) != len(args.where):
        raise ValueError("--where takes COL=VALUE")
    print(json.dumps(evaluate(args.checkpoint, args.eval_set, args.class_column, where)))
    return 0


COMMANDS = {"run": _cmd_run, "synth": _cmd_synth, "download": _cmd_download, "train": _cmd_train,
            "eval": _cmd_eval}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from curate.pool_input import InputError
    from pipelines.config import ConfigError
    from pipelines.runners import PartsFailed

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, InputError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"curate {args.command}: {err}", file=sys.stderr)
        return 2
    except PartsFailed as err:
        print(f"curate {args.command}: {err}\nrerun the same command to retry them", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
