"""Checkpoints: model config + train config + step and sample counts + weights + optimizer, saved atomically and loaded
with `weights_only=True`. The file is also an open_clip `pretrained=` file (it has a `state_dict`)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from curate.models.clip import create, model_config


def plain_state_dict(model) -> dict:
    """The model's weights under their own names, also while a strategy has parametrized some of them
    (torch names those `<module>.parametrizations.<name>.original`)."""
    return {re.sub(r"(^|\.)parametrizations\.([^.]+)\.original$", r"\1\2", k): v
            for k, v in model.state_dict().items()}


def save(path: Path, model, optimizer, step: int, model_name: str, train_config: dict,
         strategy_state: dict | None = None, counts: dict[str, int] | None = None) -> None:
    """`strategy_state`: weights a strategy trains outside the CLIP model (SLIP's head); eval ignores them.
    `counts`: where the data stream stands (`position`, `samples_seen`, `samples_skipped`), for a resume."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model_name": model_name, "model_config": model_config(model_name), "train_config": train_config,
             "step": step, "state_dict": plain_state_dict(model),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "strategy_state": strategy_state or {}, **(counts or {})}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path} is not a checkpoint written by `curate train` (no state_dict)")
    return state


def load_into(model, state: dict, source: Path) -> None:
    """Load weights, with a clear error when they come from another architecture."""
    mine = model.state_dict()
    theirs = state["state_dict"]
    wrong = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if wrong or set(theirs) - set(mine):
        raise ValueError(f"{source} holds weights of another architecture ({state.get('model_name')!r}); "
                         f"{len(wrong)} tensors differ, e.g. {wrong[:3]}")
    model.load_state_dict(theirs)


def load_model(path: Path, device: str = "cpu"):
    """(model, model name) from a `curate train` checkpoint, in eval mode."""
    state = read(path)
    name = state.get("model_name")
    if not name:
        raise ValueError(f"{path} does not name its model")
    model = create(name, device="cpu")
    load_into(model, state, path)
    return model.to(device).eval(), name
