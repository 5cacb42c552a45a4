"""The pixel check's decisions on pictures the copy verifier never saw, side by side with the colour rule it
replaced (the defaults before it), pair by pair:

    python benchmarks/quality_verifier.py            # the held-out vendor and icon sets of the shipped weights

The shipped weights (`curate/dedup/copy_verifier.pt`) were trained with `--hold-out vendor=twitter --hold-out
icon_set=tabler,boxicons,mdi`; this script draws those held-out pictures, makes fresh copies (every edit of
curate.synthetic.copy_edits, a new seed) and lookalikes, and pairs each picture with its nearest other pictures
by the copy search, then asks both deciders. Per pool: recall per edit (copies found), false passes per kind of non-copy
(lookalikes, and `neighbour`: other real pictures), precision and F1. `ratio` = our F1 over the rule's, the
smaller over the pools. The copies take the planted edits, the tone edits (`TONE_EDITS`: contrast, saturation,
noise, sharpening) and watermarks of any look (`ANY_WATERMARK`) in turn; the shipped weights never learnt the last
five, so their recall is on edits it never saw (`unseen_recall`); precision, F1 and `ratio` are over the planted
edits only, as before.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT = {"emoji": {"vendor": {"twitter"}}, "icons": {"icon_set": {"tabler", "boxicons", "mdi"}}}


def decide(name: str, thumbs, first, second):
    """Which pairs each decider calls a copy, and its wall seconds: the colour rule at its old defaults (shape
    0.9, colour 10 levels) or the pixel check at today's defaults (DedupConfig)."""
    from curate.dedup.copy_verifier import Verifier
    from curate.dedup.dedup import DedupConfig
    from curate.dedup.image_match import pixel_match

    cfg = DedupConfig()
    start = time.perf_counter()
    if name == "colour_rule":
        ok = pixel_match(thumbs, first, second, 0.9, 10.0) >= 0.9
    else:
        ok = pixel_match(thumbs, first, second, cfg.image_match_min, cfg.image_colour_max,
                         Verifier(cfg.image_verifier_min)) >= cfg.image_match_min
    return ok, time.perf_counter() - start


def figures(ok: np.ndarray, label: np.ndarray, kind: np.ndarray, seconds: float) -> dict:
    found, false = int((ok & (label == 1)).sum()), int((ok & (label == 0)).sum())
    recall, precision = found / max(int(label.sum()), 1), found / max(found + false, 1)
    return {"recall": round(recall, 4), "precision": round(precision, 4),
            "f1": round(2 * recall * precision / max(recall + precision, 1e-9), 4), "wall_s": round(seconds, 1),
            "recall_by_edit": {k: round(float(ok[kind == k].mean()), 3) for k in np.unique(kind[label == 1])},
            "false_passes": {k: [int(ok[kind == k].sum()), int((kind == k).sum())]
                             for k in np.unique(kind[label == 0])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-pictures", type=int, default=3000, help="held-out pictures drawn per pool")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from curate.dedup.copy_verifier_fit import labelled_pairs, load_pictures
    from curate.synthetic.copy_edits import ANY_WATERMARK, EDITS, TONE_EDITS

    unseen_edits = TONE_EDITS + (ANY_WATERMARK,)

    pools = {}
    for pool, hold_out in HELD_OUT.items():
        pictures = load_pictures([SHARED / pool], hold_out, args.max_pictures, 0, args.seed, held_out_only=True)
        thumbs, first, second, label, kind = labelled_pairs(pictures, args.seed, copies=1, lookalikes=1,
                                                            edits=EDITS + unseen_edits)
        unseen = np.isin(kind, unseen_edits)
        pools[pool] = {"pictures": len(pictures), "pairs": int((~unseen).sum()), "copies": int(label[~unseen].sum())}
        for decider in ("colour_rule", "verifier"):
            ok, seconds = decide(decider, thumbs, first, second)
            pools[pool][decider] = figures(ok[~unseen], label[~unseen], kind[~unseen], seconds)
            pools[pool][decider]["unseen_recall"] = {k: round(float(ok[kind == k].mean()), 3) for k in unseen_edits}
    ratio = min(p["verifier"]["f1"] / max(p["colour_rule"]["f1"], 1e-9) for p in pools.values())
    emit({"ratio": round(ratio, 3), "pools": pools}, args.out, "quality_verifier")


if __name__ == "__main__":
    main()
