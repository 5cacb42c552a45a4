"""Train the copy verifier (curate.dedup.copy_verifier) on pictures you hold:

    python -m curate.dedup.copy_verifier_fit --pairs ../shared/data/emoji --pairs ../shared/data/icons \\
        --scenes 3000 --out curate/dedup/copy_verifier.pt

Copies: each picture with edits of curate.synthetic.copy_edits (each kind in turn), re-encoded. Non-copies: lookalikes
of each picture (curate.synthetic.lookalikes) and each picture's nearest other pictures by the copy search
(curate.dedup.copy_search), which on real data are other glyphs in the same frame, other skin tones, the same thing
drawn alike. Every pair is aligned as the pixel check aligns it and kept when its shape correlation comes near
`--gate`. `--hold-out COLUMN=V1,V2` leaves rows out (to measure on pictures the verifier never saw)."""
from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from curate.dedup.copy_search import CENTRED, copy_candidates
from curate.dedup.copy_verifier import CROP_PX, AlignedPairs, fit, save
from curate.dedup.image_match import align, thumbnail
from curate.pairs import read_pairs
from curate.synthetic.copy_edits import ANY_WATERMARK, EDITS, TONE_EDITS, edit_copy, jpeg_quality
from curate.synthetic.lookalikes import lookalike
from curate.synthetic.scenes import encode, random_scene, render

log = logging.getLogger(__name__)
GATE = 0.6  # the shape correlation (less the pixel check's coarse slack) a training pair must come near


class ArrayStore:
    """Thumbnails held in memory, with the ThumbnailStore's `get`."""

    def __init__(self, thumbs: np.ndarray):
        self.thumbs = thumbs

    def get(self, rows: np.ndarray) -> np.ndarray:
        return self.thumbs[rows]


def _held_out(table, hold_out: dict[str, set[str]]) -> np.ndarray:
    out = np.zeros(table.num_rows, bool)
    for column, values in hold_out.items():
        if column in table.column_names:
            out |= np.isin(np.asarray(table.column(column).to_pylist(), dtype=object), list(values))
    return out


def load_pictures(pairs_dirs: list[Path], hold_out: dict[str, set[str]], max_per_dir: int, scenes: int,
                  seed: int, held_out_only: bool = False) -> np.ndarray:
    """(n, 64, 64, 3) distinct thumbnails: up to `max_per_dir` rows of each pairs folder (rows matching
    `hold_out` left out, or only those with `held_out_only`), plus `scenes` rendered scenes."""
    rng = np.random.default_rng(seed)
    thumbs, seen = [], set()
    for root in pairs_dirs:
        table = read_pairs(root)
        chosen = np.flatnonzero(_held_out(table, hold_out) == held_out_only)
        paths = table.column("path").to_pylist()
        rows = rng.permutation(chosen)[:max_per_dir]
        for row in tqdm(rows, desc=f"pictures of {root.name}", unit="img", leave=False):
            thumb = thumbnail((root / paths[row]).read_bytes())
            digest = None if thumb is None else hashlib.sha256(thumb.tobytes()).digest()
            if digest is not None and digest not in seen:
                seen.add(digest)
                thumbs.append(thumb)
    for _ in range(scenes):
        w, h = (int(v) for v in rng.integers(96, 160, size=2))
        thumbs.append(thumbnail(encode(render(random_scene(rng), rng, w, h))))
    return np.stack(thumbs)


def labelled_pairs(pictures: np.ndarray, seed: int, copies: int = 2, lookalikes: int = 2, neighbours: int = 10,
                   edits: tuple[str, ...] = EDITS):
    """Thumbnails (the pictures, then their copies and lookalikes) and pairs of them: first, second, label
    (1 = copy) and kind (the edit, taken from `edits` in turn; the lookalike's change; or `neighbour`)."""
    rng = np.random.default_rng(seed)
    n = len(pictures)
    extra, first, kind, label = [], [], [], []
    for i in tqdm(range(n), desc="copies and lookalikes", unit="img", leave=False):
        img = Image.fromarray(pictures[i])
        for c in range(copies):
            edit = edits[(i * copies + c) % len(edits)]
            extra.append(thumbnail(encode(edit_copy(img, edit, rng), quality=jpeg_quality(edit, rng))))
            first.append(i), kind.append(edit), label.append(1)
        for _ in range(lookalikes):
            changed, change = lookalike(img, Image.fromarray(pictures[rng.integers(n)]), rng)
            extra.append(thumbnail(encode(changed, quality=int(rng.integers(70, 90)))))
            first.append(i), kind.append(change), label.append(0)
    near_a, near_b = copy_candidates(ArrayStore(pictures), n, neighbours, seed, cuts=CENTRED)
    return (np.concatenate([pictures, np.stack(extra)]), np.concatenate([np.array(first), near_a]),
            np.concatenate([n + np.arange(len(extra)), near_b]),
            np.concatenate([np.array(label), np.zeros(len(near_a), int)]),
            np.concatenate([np.array(kind), np.full(len(near_a), "neighbour")]))


def training_pairs(pictures: np.ndarray, seed: int, copies: int = 2, gate: float = GATE, neighbours: int = 10,
                   edits: tuple[str, ...] = EDITS, crop_px: int = CROP_PX) -> AlignedPairs:
    """The pairs of `labelled_pairs` whose shape correlation comes near `gate`, aligned, with their labels."""
    thumbs, first, second, label, _ = labelled_pairs(pictures, seed, copies, neighbours=neighbours, edits=edits)
    close, _, mine, other, cuts = align(thumbs, first, second, gate)
    return AlignedPairs(thumbs, mine, other, cuts, label[close], crop_px)


def _hold_out_arg(text: str) -> tuple[str, set[str]]:
    column, _, values = text.partition("=")
    if not column or not values:
        raise argparse.ArgumentTypeError(f"--hold-out wants COLUMN=V1,V2, not {text!r}")
    return column, set(values.split(","))


def fit_edits(tone_edits: bool = False, watermarks: str = "planted") -> tuple[str, ...]:
    """The edits the copies take in turn: EDITS, then TONE_EDITS if asked; the planted watermark, or ANY_WATERMARK
    in its place ("any"), or both ("both")."""
    edits = EDITS + TONE_EDITS if tone_edits else EDITS
    if watermarks == "any":
        return tuple(ANY_WATERMARK if edit == "watermark" else edit for edit in edits)
    return edits + (ANY_WATERMARK,) if watermarks == "both" else edits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, action="append", default=[], help="a pairs folder (repeatable)")
    parser.add_argument("--hold-out", type=_hold_out_arg, action="append", default=[],
                        help="COLUMN=V1,V2: leave these rows out of training")
    parser.add_argument("--max-per-dir", type=int, default=8000, help="pictures drawn from each pairs folder")
    parser.add_argument("--scenes", type=int, default=3000, help="rendered scenes added (colour, backgrounds)")
    parser.add_argument("--copies", type=int, default=2, help="copies made of each picture (the edits in turn)")
    parser.add_argument("--tone-edits", action="store_true",
                        help="copies take the tone edits (TONE_EDITS: contrast, saturation, noise, sharpening) "
                             "too, in turn with the planted ones (then --copies 3 keeps as many copies of each "
                             "planted edit)")
    parser.add_argument("--watermarks", choices=("planted", "any", "both"), default="planted",
                        help="the watermark copies take: the planted watermark's few looks, text of any look "
                             "(ANY_WATERMARK: random text, size, opacity, colour and place) in its place, or both "
                             "in turn")
    parser.add_argument("--neighbours", type=int, default=10,
                        help="each picture's nearest other pictures (centred windows of the copy search, k) taken "
                             "as non-copies")
    parser.add_argument("--crop-px", type=int, choices=(32, 64), default=CROP_PX,
                        help="the aligned crops' size: 64 sees every pixel of the 64 px thumbnails")
    parser.add_argument("--steps", type=int, default=24000)
    parser.add_argument("--hard-steps", type=int, default=0,
                        help="then this many more steps with half the non-copies drawn from those the first "
                             "round passes (probability >= 0.5): hard negatives mined from its own mistakes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where the weights go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pictures = load_pictures(args.pairs, dict(args.hold_out), args.max_per_dir, args.scenes, args.seed)
    edits = fit_edits(args.tone_edits, args.watermarks)
    pairs = training_pairs(pictures, args.seed, args.copies, neighbours=args.neighbours, edits=edits,
                           crop_px=args.crop_px)
    log.info("%d pictures, %d aligned pairs (%d copies)", len(pictures), len(pairs.label), int(pairs.label.sum()))
    net = fit(pairs, args.steps, seed=args.seed)
    if args.hard_steps:
        others = np.flatnonzero(pairs.label == 0)
        hard = others[pairs.probabilities(net, others) >= 0.5]
        log.info("%d of %d non-copies pass at 0.5: trained on for %d steps", len(hard), len(others), args.hard_steps)
        net = fit(pairs, args.hard_steps, seed=args.seed + 1, net=net, hard=hard)
    save(net, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
