"""The `curate` command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

EPILOG = """examples:
  curate run configs/demo.yaml --out runs/demo          synth -> serve -> download, with a funnel
  curate run configs/demo.yaml --out runs/x --set synth.n=500 --set runner.kind=local
  curate synth --n 2000 --seed 0 --out pool/             a web-like pool with ground truth
  curate synth --from-pairs ../shared/data/emoji --out pool/
  curate download --input pool/pool.parquet --serve pool/ --out runs/dl
  curate tier --out runs/demo --set 'tier.standard_fractions=[0.3]'   re-tier in seconds, no model run
  curate shard --out runs/demo                           WebDataset tars per subset
  curate metadata --out runs/demo --t 50                 MetaCLIP entries from the pool's captions, head/tail
  curate status runs/demo                                parts done, failed, pending per stage
  curate report runs/demo                                runs/demo/report.html
  curate compare configs/compare/emoji.yaml --out runs/emoji-compare   tiers x strategies x seeds

exit codes: 0 done; 2 bad config or input, found before any work; 1 the run failed after it started (the
stage and any failed parts named; rerun the same command to retry them) or a compare cell failed
"""


def location(text: str) -> Path | str:
    """A command-line folder or file: a URL (s3://bucket/prefix) stays a string."""
    from curate.storage import is_url, local_path

    return text.rstrip("/") if is_url(text) else local_path(text)


def _local(where) -> Path:
    """A local copy of an input file or folder given as a path or a URL (the store's settings: the environment)."""
    from curate.mirror import fetch_input
    from curate.storage import is_url

    return fetch_input(where, None) if is_url(where) else where


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set download.timeout_s=5 (repeatable)")
    p.add_argument("--runner", choices=["ray", "local"], help="ray (default) or local (in-process, for debugging)")
    p.add_argument("--ray-address", help="join a running Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


STAGE_DESCRIPTION = """.

Runs one stage of a pipeline on an existing run directory, with the settings of that run
(OUT/config.resolved.yaml) or of --config, changed by --set. Finished work is skipped.
examples:
  curate tier --out runs/demo --set 'tier.standard_fractions=[0.1,0.3]'
  curate shard --out runs/demo --set shard.samples_per_shard=500 --set 'shard.subsets=[top20]'
"""


def stage_commands() -> dict[str, str]:
    """`curate NAME --out RUN` for each registered stage that declares a command: name -> help."""
    from curate.registry import STEPS

    return {step.name: step.command for step in STEPS if step.command}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Curate CLIP training data: download a URL+caption pool with img2dataset, score it with "
                    "CLIP, mark duplicates, cut quality tiers, write WebDataset shards, and train small CLIPs "
                    "on them; every input row ends in a tier or with a reason.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline config into a run directory",
                         description="Run the stages of CONFIG into --out. Finished parts are skipped, so "
                                     "rerunning the same command resumes an interrupted run.")
    run.add_argument("config", type=Path, help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("--out", type=location, required=True, help="run directory: a folder or s3://bucket/prefix")
    run.add_argument("--stages", help="comma-separated subset of the config's stages, e.g. download")
    run.add_argument("--no-report", action="store_true",
                     help="do not write RUN/report.html at the end (`curate report RUN` writes it later)")
    _add_common(run)

    synth = sub.add_parser("synth", help="make a synthetic web-like pool with ground-truth noise labels",
                           description="Write OUT/pool.parquet (uid, url, caption, gt_* columns) and the files "
                                       "its URLs serve. Noise fractions: --set noise.mismatched_caption=0.1 ...")
    synth.add_argument("--n", type=int, help="pool rows (default 2000; with --from-pairs: every pair + dups)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--from-pairs", type=location, help="add the noise to a clean pairs directory instead "
                       "(a folder or a URL)")
    synth.add_argument("--out", type=location, required=True, help="output directory (a folder or a URL)")
    synth.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a synth key, e.g. --set noise.broken=0.1")
    synth.add_argument("-v", "--verbose", action="store_true")

    dl = sub.add_parser("download", help="download a URL+caption table with img2dataset",
                        description="Download INPUT (parquet, csv or jsonl; column names via --set "
                                    "download.url_col=...) into OUT/download: img2dataset shards plus a "
                                    "Parquet per part with a status for every input row.")
    dl.add_argument("--input", type=location, required=True, help="input file or folder of files (or a URL)")
    dl.add_argument("--out", type=location, required=True, help="run directory (writes OUT/download)")
    dl.add_argument("--serve", type=Path, metavar="SYNTH_DIR",
                    help="serve a `curate synth` folder on loopback while downloading")
    _add_common(dl)

    tr = sub.add_parser("train", help="train a CLIP model for a fixed number of samples seen",
                        description="Train the model of CONFIG (a train YAML, e.g. configs/train/emoji-twitter.yaml) "
                                    "into OUT: checkpoint.pt, metrics.jsonl, summary.json. Rerunning resumes.")
    tr.add_argument("config", type=Path)
    tr.add_argument("--out", type=location, required=True, help="output folder or URL")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key, e.g. --set samples_seen=5000 --set data.workers=0")
    tr.add_argument("-v", "--verbose", action="store_true")

    cmp = sub.add_parser("compare", help="train and evaluate a grid of subsets x strategies x models x seeds",
                         description="Run CONFIG's pipeline into OUT (resumes), then train every grid cell on "
                                     "OUT/shards/<subset>/ in the equal_samples and/or one_pass regime, evaluate it "
                                     "on the eval sets, and write OUT/results.csv (a row per cell) and "
                                     "OUT/summary.csv (mean and 95% t-interval over seeds). Finished cells are "
                                     "kept; failed cells are recorded with their error and retried on rerun. "
                                     "Exit 1 when some cell failed.")
    cmp.add_argument("config", type=Path, help="compare YAML, e.g. configs/compare/emoji.yaml")
    cmp.add_argument("--out", type=location, required=True,
                     help="run directory (pipeline outputs, train/, results): a folder or a URL")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. --set grids.tiers.seeds=[0] --set samples_seen=2560")
    cmp.add_argument("-v", "--verbose", action="store_true")

    for stage, about in stage_commands().items():
        sp = sub.add_parser(stage, help=about, description=about + STAGE_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--out", type=location, required=True, help="run directory, e.g. runs/demo or s3://b/demo")
        sp.add_argument("--config", type=Path,
                        help="pipeline YAML for the stage's section (default: OUT/config.resolved.yaml if present)")
        _add_common(sp)

    md = sub.add_parser(
        "metadata", help="build MetaCLIP-style metadata entries from a run's captions; print counts, head/tail",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Write OUT/metadata/entries.txt, one entry a line, built the way MetaCLIP built its Wikipedia part,
but from the pool's own captions (rows with status ok): unigrams seen at least --min-count times, bigrams
seen as often whose PMI is at least --min-pmi, plus the class names of --class-names; also
OUT/metadata/class_names.txt (the class names alone) and counts.tsv (entry, captions that contain it).
Then print the most frequent entries and the split MetaCLIP's balancing makes at --t: head entries
(count > t; each of their pairs kept with probability t/count), tail entries (every pair kept) and the
balanced subset's expected size.""",
        epilog="""tier rules that read these files (paths inside the run):
  {kind: balance, entries: metadata/entries.txt, t: 50, seed: 0}     MetaCLIP's balancing (tier.recipes: [metaclip])
  {kind: text_match, entries: metadata/class_names.txt}              DataComp's text-based filter
example:
  curate metadata --out runs/demo --t 50 --class-names configs/compare/emoji_classes.txt
""")
    md.add_argument("--out", type=location, required=True, help="run directory with downloaded (and scored) parts")
    md.add_argument("--t", type=int, default=20000, metavar="T", help="the balancing threshold to show the split for "
                    "(default 20000, MetaCLIP's for a 1.6B pool; scale it with the pool)")
    md.add_argument("--min-count", type=int, metavar="N",
                    help="unigrams and bigrams seen fewer times are left out (default 5)")
    md.add_argument("--min-pmi", type=float, metavar="X",
                    help="bigrams need pointwise mutual information log(p(ab) / (p(a) p(b))) >= this (default 3.0)")
    md.add_argument("--class-names", type=Path, action="append", default=[], metavar="FILE",
                    help="a file of class names, one a line, added as entries (repeatable)")
    md.add_argument("--top", type=int, default=20, metavar="N",
                    help="how many of the most frequent entries to print (default 20)")
    md.add_argument("-v", "--verbose", action="store_true")

    rep = sub.add_parser("report", help="write RUN_DIR/report.html: funnel, tiers, galleries, duplicates, training",
                         description="Render one self-contained HTML page (plots and thumbnails embedded, no "
                                     "network) from the files of RUN_DIR; sections the run lacks say so. "
                                     "`curate run` writes it at the end of every run.")
    rep.add_argument("run_dir", type=location, metavar="RUN_DIR")
    rep.add_argument("--out", type=Path, help="write the page here instead of RUN_DIR/report.html")
    rep.add_argument("-v", "--verbose", action="store_true")

    st = sub.add_parser("status", help="parts done, failed and pending per stage of a run",
                        description="Read RUN_DIR (in progress or finished) and print, per stage, its parts done "
                                    "(done markers), failed (named in the stage's stats.json) and pending.")
    st.add_argument("run_dir", type=location, metavar="RUN_DIR")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.add_argument("-v", "--verbose", action="store_true")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a pairs directory; prints JSON",
                        description="Zero-shot top-1/top-5 per --class-column, image<->text recall@1/5/10, and a "
                                    "linear probe on frozen image features (fixed 80/20 split).")
    ev.add_argument("--checkpoint", type=location, required=True)
    ev.add_argument("--eval-set", type=location, required=True,
                    help="pairs directory (pairs.parquet: path, caption), a folder or a URL")
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


def print_subsets(stage: str, stats: dict, out=None) -> None:
    print(f"\n{stage}: samples per subset", file=out or sys.stdout)
    for name, rows in stats["subsets"].items():
        print(f"  {name:<22}{rows:>9}", file=out or sys.stdout)


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")


# A command checks its config and inputs, then returns its work: an error before the work starts is bad
# config or input (exit 2), an error in the work a failed run (exit 1).
Work = Callable[[], int]


def _cmd_run(args) -> Work:
    from pipelines.config import load_config
    from pipelines.run import check_pipeline, open_run, run_pipeline

    overrides = args.overrides + _runner_overrides(args)
    if args.stages:
        overrides.append(f"stages=[{args.stages}]")
    cfg = load_config(args.config, overrides)
    out_dir, copy = open_run(args.out, cfg.storage)
    check_pipeline(cfg, out_dir)

    def work() -> int:
        stats = run_pipeline(cfg, out_dir, report=not args.no_report, copy=copy)
        for stage, s in stats.items():
            if stage != "synth" and "by_status" in s:
                print_funnel(stage, s)
            elif "subsets" in s:
                print_subsets(stage, s)
        print(f"\nrun directory: {args.out}")
        return 0
    return work


def _cmd_stage(args) -> Work:
    """`curate score|dedup|tier|shard --out RUN`: one stage, on the run's own settings."""
    from pipelines.config import load_config
    from pipelines.run import check_pipeline, open_run, run_pipeline

    overrides = args.overrides + _runner_overrides(args)
    out_dir, copy = open_run(args.out, load_config(args.config, overrides).storage)  # a store: its settings
    resolved = out_dir / "config.resolved.yaml"                                      # come from here or the env
    config = args.config or (resolved if resolved.exists() else None)
    cfg = load_config(config, overrides)
    check_pipeline(cfg, out_dir, [args.command])

    def work() -> int:
        stats = run_pipeline(cfg, out_dir, only=[args.command], copy=copy)[args.command]
        if "by_status" in stats:
            print_funnel(args.command, stats)
        elif "subsets" in stats:
            print_subsets(args.command, stats)
        return 0
    return work


def _push(copy) -> None:
    """Upload what a command wrote into the working copy of a run on a store (nothing for a local run)."""
    if copy is not None:
        copy.push()


def _cmd_synth(args) -> Work:
    from curate.synthetic.synth import synthesize
    from pipelines.config import load_config
    from pipelines.run import open_run

    overrides = [f"synth.{o}" for o in args.overrides] + [f"synth.seed={args.seed}"]
    if args.n is not None:
        overrides.append(f"synth.n={args.n}")
    elif args.from_pairs:
        overrides.append("synth.n=null")
    if args.from_pairs:
        pairs = _local(args.from_pairs)
        _require(pairs / "pairs.parquet", "pairs table")
        overrides.append(f"synth.from_pairs={pairs}")
    cfg = load_config(None, overrides).synth
    out_dir, copy = open_run(args.out)

    def work() -> int:
        table = synthesize(cfg, out_dir)
        _push(copy)
        print(json.dumps({"rows": table.num_rows, "pool": f"{args.out}/pool.parquet"}))
        return 0
    return work


def _cmd_download(args) -> Work:
    from curate.download.download import local_input, run_download
    from curate.download.pool_input import split_input
    from pipelines.config import load_config
    from pipelines.run import make_runner, open_run

    cfg = load_config(None, args.overrides + _runner_overrides(args) + [f"download.input={args.input}"])
    out_dir, copy = open_run(args.out, cfg.storage)
    download = local_input(cfg)
    split_input(download, out_dir.resolve() / "download")  # reads and checks the input (once per run)

    def work() -> int:
        runner = make_runner(cfg.runner, copy)
        try:
            stats = run_download(download, out_dir, runner, args.serve)
        finally:
            runner.close()
            _push(copy)
        print_funnel("download", stats)
        return 0
    return work


def _cmd_train(args) -> Work:
    from curate.models.train_config import TrainConfig
    from pipelines.config import load_config
    from train.data import check_source
    from train.train import train

    from pipelines.run import open_run

    cfg = load_config(args.config, args.overrides, schema=TrainConfig)
    if cfg.data.pairs is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"pairs": _local(cfg.data.pairs)})})
    check_source(cfg.data)
    out_dir, copy = open_run(args.out)

    def work() -> int:
        try:
            print(json.dumps(train(cfg, out_dir)))
        finally:
            _push(copy)
        return 0
    return work


def _cmd_compare(args) -> Work:
    from pipelines.compare import CompareConfig, compare
    from pipelines.config import load_config

    from pipelines.run import check_pipeline, open_run

    cfg = load_config(args.config, args.overrides, schema=CompareConfig)
    out_dir, copy = open_run(args.out, cfg.pipeline.storage if cfg.pipeline is not None else None)
    if cfg.pipeline is not None:
        check_pipeline(cfg.pipeline, out_dir)

    def work() -> int:
        try:
            rows = compare(cfg, out_dir)
        finally:
            _push(copy)
        failed = [f"{r['subset']}/{r['strategy']}/{r['model']}/s{r['seed']}/{r['regime']}: {r['error']}"
                  for r in rows if r["status"] != "ok"]
        print(json.dumps({"cells": len(rows), "ok": len(rows) - len(failed), "failed": len(failed),
                          "results": f"{args.out}/results.csv", "summary": f"{args.out}/summary.csv"}))
        if failed:
            print("failed cells (rerun the same command to retry them):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1 if failed else 0
    return work


def _cmd_metadata(args) -> Work:
    import numpy as np

    from curate.tier.metadata import ENTRIES, MetadataConfig, build_metadata, head_tail
    from curate.tier.tier import ok_captions
    from pipelines.run import open_run

    given = {"min_count": args.min_count, "min_pmi": args.min_pmi}
    cfg = MetadataConfig(class_names=args.class_names, **{k: v for k, v in given.items() if v is not None})
    for path in args.class_names:
        _require(path, "class names file")
    if args.t < 1:
        raise ValueError("--t must be at least 1")
    out_dir, copy = open_run(args.out)
    captions = ok_captions(out_dir)

    def work() -> int:
        built = build_metadata(captions, cfg, out_dir)
        _push(copy)
        counts = built["counts"]
        print(f"{'captions':>9}  {'side':<5} entry")
        for i in np.argsort(-counts, kind="stable")[:args.top]:
            side = "head" if counts[i] > args.t else "tail" if counts[i] else "-"
            print(f"{counts[i]:>9}  {side:<5} {built['entries'][i]}")
        split = head_tail(counts, built["rows"], built["matched"], args.t, len(captions))
        print(json.dumps({**split, "entries_file": f"{args.out}/{ENTRIES}"}))
        return 0
    return work


def _cmd_report(args) -> Work:
    from curate.report.build import write_report
    from pipelines.run import open_run

    run_dir, copy = open_run(args.run_dir)
    _require(run_dir, "run directory")

    def work() -> int:
        page = write_report(run_dir, args.out)
        _push(copy)
        print(f"{args.run_dir}/report.html" if copy is not None and args.out is None else page)
        return 0
    return work


def _cmd_status(args) -> Work:
    from curate.report.status import format_status, run_status
    from pipelines.run import open_run

    run_dir, _ = open_run(args.run_dir)
    _require(run_dir, "run directory")

    def work() -> int:
        rows = run_status(run_dir)
        print(json.dumps(rows, indent=2) if args.json else format_status(rows))
        return 0
    return work


def _cmd_eval(args) -> Work:
    from train.evaluate import evaluate

    where = dict(w.split("=", 1) for w in args.where if "=" in w)
    if len(where) != len(args.where):
        raise ValueError("--where takes COL=VALUE")
    checkpoint, eval_set = _local(args.checkpoint), _local(args.eval_set)
    _require(checkpoint, "checkpoint")
    _require(eval_set / "pairs.parquet", "pairs table")

    def work() -> int:
        print(json.dumps(evaluate(checkpoint, eval_set, args.class_column, where)))
        return 0
    return work


COMMANDS = {"run": _cmd_run, "synth": _cmd_synth, "download": _cmd_download, "train": _cmd_train,
            "compare": _cmd_compare,
            "eval": _cmd_eval, "report": _cmd_report, "status": _cmd_status, "metadata": _cmd_metadata,
            **{stage: _cmd_stage for stage in stage_commands()}}


def main(argv: list[str] | None = None) -> int:
    """0 done; 2 bad config or input, found before any work; 1 the work failed (stage and parts named) or,
    for compare, some cell failed."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from curate.download.pool_input import InputError
    from curate.stage import PartsFailed, StageFailed
    from pipelines.config import ConfigError

    try:
        work = COMMANDS[args.command](args)
    except (ConfigError, InputError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"curate {args.command}: {err}", file=sys.stderr)
        return 2
    try:
        return work()
    except Exception as err:  # noqa: BLE001 - whatever stops the work fails the run: exit 1
        cause = err.error if isinstance(err, StageFailed) else err
        if isinstance(cause, PartsFailed):
            hint = "rerun the same command to retry them"
        else:
            log.error("curate %s failed", args.command, exc_info=cause)
            hint = "finished stages and parts are kept: fix the cause and rerun the same command"
        what = err if isinstance(err, (StageFailed, PartsFailed)) else f"{type(err).__name__}: {err}"
        print(f"curate {args.command}: {what}\n{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
