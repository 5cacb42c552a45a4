"""Evaluate a checkpoint on any pairs directory: zero-shot classification over class columns,
image<->text retrieval recall@k, and a linear probe on frozen image features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from curate.models.checkpoint import load_model
from curate.models.clip import image_size, tokenizer
from curate.pairs import read_pairs

TEMPLATES = ("a photo of {}.", "an icon of {}.", "an emoji of {}.", "a picture of a {}.", "{}")
PROBE_TEST_SHARE = 0.2


@torch.no_grad()
def encode_images(model, paths: list[Path], batch_size: int = 256) -> torch.Tensor:
    transform = open_clip.image_transform(image_size(model), is_train=False)
    feats = []
    for i in range(0, len(paths), batch_size):
        batch = []
        for p in paths[i:i + batch_size]:
            with Image.open(p) as im:
                batch.append(transform(im.convert("RGB")))
        feats.append(model.encode_image(torch.stack(batch), normalize=True))
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenize, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([model.encode_text(tokenize(texts[i:i + batch_size]), normalize=True)
                      for i in range(0, len(texts), batch_size)])


def recall_at(similarity: torch.Tensor, targets: list[set[int]], ks=(1, 5, 10)) -> dict:
    """Share of rows whose top-k columns include one of their targets."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices.tolist()
    return {f"r{k}": round(float(np.mean([bool(set(row[:k]) & t) for row, t in zip(top, targets)])), 4)
            for k in ks}


def retrieval(image_feats: torch.Tensor, text_feats: torch.Tensor, caption_ids: list[int]) -> dict:
    """Texts are the unique captions; an image's target is its caption, a caption's targets its images."""
    sim = image_feats @ text_feats.T
    images_of: dict[int, set[int]] = {}
    for i, c in enumerate(caption_ids):
        images_of.setdefault(c, set()).add(i)
    return {"i2t": recall_at(sim, [{c} for c in caption_ids]),
            "t2i": recall_at(sim.T, [images_of[c] for c in range(text_feats.shape[0])])}


def zero_shot(model, tokenize, image_feats: torch.Tensor, labels: list[str]) -> dict:
    classes = sorted(set(labels))
    weights = []
    for name in classes:
        prompts = encode_texts(model, tokenize, [t.format(name) for t in TEMPLATES])
        weights.append(torch.nn.functional.normalize(prompts.mean(0), dim=0))
    logits = image_feats @ torch.stack(weights).T
    target = torch.tensor([classes.index(x) for x in labels])
    top = logits.topk(min(5, len(classes)), dim=1).indices
    return {"top1": round(float((top[:, 0] == target).float().mean()), 4),
            "top5": round(float((top == target[:, None]).any(1).float().mean()), 4), "classes": len(classes)}


def linear_probe(features: torch.Tensor, labels: list[str], epochs: int = 300) -> dict:
    """Softmax regression on frozen features; the split is fixed (seed 0) so runs compare."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(x) for x in labels])
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    n_test = max(1, int(len(labels) * PROBE_TEST_SHARE))
    test, fit = order[:n_test], order[n_test:]
    x = (features - features[fit].mean(0)) / (features[fit].std(0) + 1e-6)
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[fit]), y[fit]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (probe(x[test]).argmax(1) == y[test]).float().mean()
    return {"top1": round(float(accuracy), 4), "classes": len(classes), "test_rows": n_test}


def evaluate(checkpoint: Path, eval_set: Path, class_columns: list[str] = (), where: dict[str, str] = {}) -> dict:
    """The `curate eval` JSON for one checkpoint on one pairs directory (rows limited by `where`)."""
    model, name = load_model(checkpoint)
    return evaluate_model(model, name, eval_set, class_columns, where)


def evaluate_model(model, name: str, eval_set: Path, class_columns=(), where: dict[str, str] = {}) -> dict:
    eval_set = Path(eval_set)
    table = read_pairs(eval_set, {col: [value] for col, value in where.items()}, tuple(class_columns))
    model.eval()
    tokenize = tokenizer(name)
    captions = [c or "" for c in table.column("caption").to_pylist()]
    unique = sorted(set(captions))
    position = {c: i for i, c in enumerate(unique)}
    caption_ids = [position[c] for c in captions]
    image_feats = encode_images(model, [eval_set / p for p in table.column("path").to_pylist()])
    text_feats = encode_texts(model, tokenize, unique)
    result = {"n": table.num_rows, "zero_shot": {}, "retrieval": retrieval(image_feats, text_feats, caption_ids),
              "linear_probe": {}}
    for col in class_columns:
        values = table.column(col).to_pylist()
        keep = [i for i, v in enumerate(values) if v not in (None, "")]
        labels = [str(values[i]) for i in keep]
        result["zero_shot"][col] = zero_shot(model, tokenize, image_feats[keep], labels)
        result["linear_probe"][col] = linear_probe(image_feats[keep], labels)
    return result

