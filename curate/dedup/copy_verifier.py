"""The copy verifier: a small network that, given two aligned images (curate.dedup.image_match.align), says whether
the second is a copy of the first. It learns what rules of thumb about cells and colours could not: a
watermark or a rotation leaves a copy, a face in another skin tone or another digit in the frame does not.

It sees the two aligned RGB crops (32 px, or 64 px for weights trained with `--crop-px 64`) and their difference,
both ways round (the score is symmetric), and answers with a probability. A weights file holds one network or an
ensemble whose probabilities are averaged (`python -m curate.dedup.copy_verifier A.pt B.pt --out E.pt`).
`curate/dedup/copy_verifier.pt` holds the project's: a 32 px and a 64 px network, each trained by `python -m
curate.dedup.copy_verifier_fit` on copies made with curate.synthetic.copy_edits and lookalikes made with
curate.synthetic.lookalikes of pictures the project holds (see that module for how to train your own)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from curate.dedup import VERIFIER_WEIGHTS
from curate.dedup.image_match import resample, window_weights

CROP_PX = 32  # the crop size of a network trained without --crop-px
BATCH = 2048
IDENTICAL = 2  # levels: aligned crops this close are the same picture, whatever the network says


class CopyNet(nn.Module):
    """Two aligned crops (n, 3, crop_px, crop_px) in [0, 1] -> logit that the second is a copy of the first. A
    64 px network's first layer steps 2 px, so it costs about what a 32 px one does yet sees every pixel."""

    def __init__(self, width: int = 32, crop_px: int = CROP_PX):
        super().__init__()
        self.crop_px = crop_px
        self.body = nn.Sequential(
            nn.Conv2d(9, width // 2, 3, stride=crop_px // CROP_PX, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * width, 1)

    def one_way(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([a, b, a - b], 1))
        return self.head(torch.cat([h.amax((2, 3)), h.mean((2, 3))], 1)).squeeze(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.one_way(a, b) + self.one_way(b, a))


def aligned_crops(thumbs: np.ndarray, mine: torch.Tensor, other: torch.Tensor, cuts: torch.Tensor,
                  px: int = CROP_PX):
    """(n, 3, px, px) float16 crops in [0, 1]: `mine`'s window (cuts: top, bottom, left, right shares) and the
    whole of `other`, from (rows, s, s, 3) uint8 thumbnails."""
    a = torch.empty((len(mine), 3, px, px), dtype=torch.float16)  # filled in place: no second copy
    b = torch.empty_like(a)
    for lo in range(0, len(mine), BATCH):
        part = slice(lo, lo + BATCH)
        rows = torch.unique(torch.cat([mine[part], other[part]]))  # only the rows these pairs use, as floats
        rgb = torch.from_numpy(np.ascontiguousarray(thumbs[rows.numpy()])).float().permute(0, 3, 1, 2) / 255
        first, second = torch.searchsorted(rows, mine[part]), torch.searchsorted(rows, other[part])
        wy = window_weights(rgb.shape[-1], px, cuts[part, 0].numpy(), cuts[part, 1].numpy())
        wx = window_weights(rgb.shape[-1], px, cuts[part, 2].numpy(), cuts[part, 3].numpy())
        a[part] = torch.einsum("npy,ncyx,nqx->ncpq", wy, rgb[first], wx).half()
        b[part] = resample(rgb[second], px).half()
    return a, b


@dataclass
class AlignedPairs:
    """Training pairs as the pixel check aligns them (`mine`'s window, cuts: top, bottom, left, right shares, against
    the whole of `other`, rows of (n, s, s, 3) uint8 `thumbs`) with labels (1 = copy). Crops are made a batch at a
    time: 64 px crops of half a million pairs held at once would fill the memory."""
    thumbs: np.ndarray
    mine: torch.Tensor
    other: torch.Tensor
    cuts: torch.Tensor
    label: np.ndarray
    px: int = CROP_PX

    def crops(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(rows)
        return aligned_crops(self.thumbs, self.mine[rows], self.other[rows], self.cuts[rows], self.px)

    def probabilities(self, net: "CopyNet", rows: np.ndarray) -> np.ndarray:
        out = [probabilities(net, *self.crops(rows[lo:lo + BATCH])) for lo in range(0, len(rows), BATCH)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def probabilities(net: CopyNet, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    net.eval()
    out = [torch.sigmoid(net(a[lo:lo + BATCH].float(), b[lo:lo + BATCH].float())) for lo in range(0, len(a), BATCH)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def dihedral_probabilities(net: CopyNet, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """`probabilities` averaged over the pair's eight flips and quarter turns (the network learnt each; one view's
    quirk, a lookalike that passes as it lies, counts an eighth)."""
    views = [probabilities(net, *(x.rot90(turns, (2, 3)).flip(3) if flip else x.rot90(turns, (2, 3)) for x in (a, b)))
             for turns in range(4) for flip in (False, True)]
    return np.mean(views, axis=0)


class Verifier:
    """The pixel check's last test: a pair passes when the networks' probability, averaged over the members of the
    weights file (one network, or an ensemble written by `combine`) and the pair's eight flips and turns, reaches
    `minimum`."""

    def __init__(self, minimum: float, weights: Path = VERIFIER_WEIGHTS):
        self.minimum, self.members = minimum, _load(str(weights))

    @property
    def net(self) -> CopyNet:
        """The network of a one-member weights file."""
        if len(self.members) != 1:
            raise ValueError(f"these weights hold an ensemble of {len(self.members)} networks: use .members")
        return self.members[0]

    def probabilities(self, thumbs: np.ndarray, mine: torch.Tensor, other: torch.Tensor,
                      cuts: torch.Tensor) -> np.ndarray:
        """Per pair: the members' mean probability of a copy, 1 for the same pixels (within IDENTICAL levels) once
        aligned."""
        views, identical = [], None
        for net in self.members:
            a, b = aligned_crops(thumbs, mine, other, cuts, net.crop_px)
            if identical is None:
                identical = ((a.float() - b.float()).abs().amax((1, 2, 3)) <= IDENTICAL / 255).numpy()
            views.append(dihedral_probabilities(net, a, b))
        return np.where(identical, 1.0, np.mean(views, axis=0))

    def accepts(self, thumbs: np.ndarray, mine: torch.Tensor, other: torch.Tensor, cuts: torch.Tensor) -> np.ndarray:
        """Per pair: a copy by the networks, or the same pixels (within IDENTICAL levels) once aligned."""
        return self.probabilities(thumbs, mine, other, cuts) >= self.minimum


def _network(state: dict) -> CopyNet:
    state = dict(state)
    crop_px = int(state.pop("crop_px", torch.tensor(CROP_PX)).item())  # weights saved before --crop-px: 32 px
    net = CopyNet(width=int(state.pop("width").item()), crop_px=crop_px)
    net.load_state_dict(state)
    return net.eval()


@lru_cache(maxsize=2)
def _load(weights: str) -> tuple[CopyNet, ...]:
    if not Path(weights).is_file():
        raise FileNotFoundError(f"copy verifier weights {weights} are missing: train them with `python -m "
                                f"curate.dedup.copy_verifier_fit --out {weights}` or set "
                                "dedup.image_verifier_min: null")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return tuple(_network(s) for s in state["members"]) if "members" in state else (_network(state),)


def fit(pairs: AlignedPairs, steps: int = 2000, batch: int = 128, seed: int = 0, net: CopyNet | None = None,
        hard: np.ndarray | None = None) -> CopyNet:
    """Train `net` (a new one for the pairs' crop size by default) on aligned pairs, copies and
    non-copies drawn half and half, half of the non-copies from `hard` when given (pairs an earlier round wrongly
    passed); each batch flipped, turned and swapped at random (the same for both crops), which keeps every label."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = net or CopyNet(crop_px=pairs.px)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    label = pairs.label
    copies, others = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    hard = others if hard is None or not len(hard) else hard
    net.train()
    for _ in tqdm(range(steps), desc="copy verifier: train", unit="step", mininterval=5):
        rows = np.concatenate([rng.choice(copies, batch // 2), rng.choice(others, batch // 4),
                               rng.choice(hard, batch // 4)])
        x, y = (crop.float() for crop in pairs.crops(rows))
        if rng.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        turns = int(rng.integers(4))
        x, y = x.rot90(turns, (2, 3)), y.rot90(turns, (2, 3))
        swap = torch.from_numpy(rng.random(len(rows)) < 0.5)[:, None, None, None]
        x, y = torch.where(swap, y, x), torch.where(swap, x, y)
        loss = F.binary_cross_entropy_with_logits(net.one_way(x, y), torch.from_numpy(label[rows]).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()


def _state(net: CopyNet) -> dict:
    return dict(net.state_dict(), width=torch.tensor(net.head.in_features // 4), crop_px=torch.tensor(net.crop_px))


def save(net: CopyNet, path: Path) -> None:
    torch.save(_state(net), path)


def combine(weights: list[Path], path: Path) -> None:
    """One weights file holding every network of `weights` (each one network or an ensemble): the verifier then
    averages their probabilities (networks fitted differently, e.g. at 32 and 64 px, can err on different pairs)."""
    torch.save({"members": [_state(net) for w in weights for net in _load(str(w))]}, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Combine copy verifier weights into one ensemble file: "
                                     "python -m curate.dedup.copy_verifier A.pt B.pt --out ENSEMBLE.pt")
    parser.add_argument("weights", type=Path, nargs="+", help="weights files (from copy_verifier_fit or this)")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's weights file")
    args = parser.parse_args(argv)
    combine(args.weights, args.out)
    print(f"wrote {args.out}: {len(_load(str(args.out)))} networks")


if __name__ == "__main__":
    main()
