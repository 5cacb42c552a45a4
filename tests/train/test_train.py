import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate.models import checkpoint
from curate.models.train_config import TrainConfig
from curate.synthetic.scenes import encode, random_scene, render, describe
from tests.conftest import EMOJI
from train.evaluate import evaluate, linear_probe, retrieval
from train.train import cosine_lr, train

import numpy as np


def _pairs_dir(path, n=32, seed=0):
    """A pairs directory of drawn scenes, with a class column (the shape)."""
    rng = np.random.default_rng(seed)
    rows = []
    (path / "img").mkdir(parents=True)
    for i in range(n):
        scene = random_scene(rng)
        render(scene, rng, 48, 48).save(path / "img" / f"{i}.png")
        rows.append({"key": str(i), "path": f"img/{i}.png", "caption": describe(scene), "shape": scene.shape})
    pq.write_table(pa.Table.from_pylist(rows), path / "pairs.parquet")
    return path


def _cfg(data, **kw):
    base = {"model": "tiny-vit-32", "data": {**data, "workers": 0}, "samples_seen": 64, "batch_size": 16,
            "warmup_steps": 2, "lr": 1e-3, "log_every_steps": 1}
    return TrainConfig.model_validate({**base, **kw})


def test_loss_goes_down_on_a_tiny_overfit_set(tmp_path):
    pairs = _pairs_dir(tmp_path / "pairs", n=16)
    summary = train(_cfg({"pairs": str(pairs)}, samples_seen=16 * 30, batch_size=16, lr=5e-4, warmup_steps=5),
                    tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 30 == len(losses) and summary["samples_seen"] == 480
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3])


def _train_killed_after_first_checkpoint(cfg, out, monkeypatch) -> None:
    """Train until the first checkpoint is written, then die as a kill would."""
    real_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out)
    monkeypatch.setattr(checkpoint, "save", real_save)


def test_resume_continues_the_same_schedule(tmp_path, monkeypatch):
    pairs = _pairs_dir(tmp_path / "pairs")
    cfg = _cfg({"pairs": str(pairs)}, samples_seen=16 * 8, checkpoint_every_steps=4)
    train(cfg, tmp_path / "whole")

    _train_killed_after_first_checkpoint(cfg, tmp_path / "resumed", monkeypatch)
    assert checkpoint.read(tmp_path / "resumed" / "checkpoint.pt")["step"] == 4
    summary = train(cfg, tmp_path / "resumed")
    read = lambda d: [(m["step"], m["lr"]) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert summary["steps"] == 8
    assert read(tmp_path / "resumed") == read(tmp_path / "whole")
    assert [cosine_lr(s, cfg) for s in range(8)] == [lr for _, lr in read(tmp_path / "whole")]


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shards_train_with_a_corrupt_sample_skipped_and_counted(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    samples = {}
    for i in range(20):
        scene = random_scene(rng)
        samples[f"{i:05d}"] = {"jpg": encode(render(scene, rng, 40, 40)), "txt": describe(scene).encode(),
                               "json": json.dumps({"uid": f"{i:032x}"}).encode()}
    samples["00003"]["jpg"] = b"not an image"
    _write_shard(tmp_path / "00000.tar", samples)
    cfg = _cfg({"shards": str(tmp_path / "00000.tar")}, samples_seen=40, batch_size=10, checkpoint_every_steps=2)
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 4 and summary["records"] == 20  # 40 samples = 2 epochs, the bad one twice
    assert summary["samples_seen"] == 38 and summary["samples_skipped"] == 2
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["samples"] == 38 and last["samples_skipped"] == 2

    _train_killed_after_first_checkpoint(cfg, tmp_path / "resumed", monkeypatch)
    resumed = train(cfg, tmp_path / "resumed")  # the counts carry over the resume
    assert (resumed["samples_seen"], resumed["samples_skipped"]) == (38, 2)

    uids = tmp_path / "uids.parquet"
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(10)]}), uids)
    summary = train(_cfg({"shards": str(tmp_path), "uids": str(uids)}, samples_seen=20, batch_size=10), tmp_path / "sub")
    assert summary["records"] == 10


def test_the_batches_are_the_same_whatever_the_worker_count(tmp_path):
    from train.data import Record
    from train.train import make_loader

    image = tmp_path / "0.png"
    render(random_scene(np.random.default_rng(0)), np.random.default_rng(0), 8, 8).save(image)
    records = [Record(str(image), None, str(i)) for i in range(10)]
    tokenize = lambda captions: torch.tensor([[int(captions[0])]])  # noqa: E731 - the record's index

    def batches(workers: int) -> list[list[int]]:
        cfg = _cfg({"pairs": "."}, batch_size=4, samples_seen=16)
        cfg.data.workers = workers
        loader = iter(make_loader(cfg, records, lambda im: torch.zeros(1), tokenize, position=4))
        return [next(loader)[1].flatten().tolist() for _ in range(5)]

    assert batches(0) == batches(2)


def test_bad_training_inputs_are_clear_errors(tmp_path):
    pairs = _pairs_dir(tmp_path / "pairs", n=8)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        _cfg({"pairs": str(pairs)}, samples_seen=8, batch_size=16)
    with pytest.raises(FileNotFoundError, match="no shards"):
        train(_cfg({"shards": str(tmp_path / "empty")}), tmp_path / "b")
    with pytest.raises(ValueError, match="exactly one"):
        _cfg({"pairs": str(pairs), "shards": "x"})
    with pytest.raises(ValueError, match="filter column"):
        train(_cfg({"pairs": str(pairs), "pairs_filter": {"vendor": ["x"]}}), tmp_path / "c")


def test_bf16_autocast_and_gradient_checkpointing_train_on_cpu(tmp_path):
    pairs = _pairs_dir(tmp_path / "pairs", n=16)
    summary = train(_cfg({"pairs": str(pairs)}, samples_seen=32, precision="bf16", grad_checkpointing=True),
                    tmp_path / "run")
    loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert summary["steps"] == 2 and np.isfinite(loss)


def test_retrieval_and_probe_are_perfect_when_right_by_construction():
    feats = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    result = retrieval(feats, feats, list(range(50)))
    assert result == {"i2t": {"r1": 1.0, "r5": 1.0, "r10": 1.0}, "t2i": {"r1": 1.0, "r5": 1.0, "r10": 1.0}}
    labels = ["a" if i % 2 else "b" for i in range(100)]
    separable = torch.tensor([[1.0, 0.0] if x == "a" else [0.0, 1.0] for x in labels]) + 0.01 * torch.randn(100, 2)
    assert linear_probe(separable, labels)["top1"] == 1.0
    shuffled = retrieval(feats, feats.flip(0), list(range(50)))
    assert shuffled["i2t"]["r1"] <= 0.1


def test_eval_json_shape_checkpoint_checks_and_missing_columns(tmp_path):
    pairs = _pairs_dir(tmp_path / "pairs", n=24)
    train(_cfg({"pairs": str(pairs)}, samples_seen=16), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    result = evaluate(ckpt, pairs, ["shape"])
    assert set(result) == {"n", "zero_shot", "retrieval", "linear_probe"} and result["n"] == 24
    assert set(result["retrieval"]["i2t"]) == {"r1", "r5", "r10"}
    assert 0 <= result["zero_shot"]["shape"]["top1"] <= result["zero_shot"]["shape"]["top5"] <= 1
    with pytest.raises(ValueError, match="no column"):
        evaluate(ckpt, pairs, ["group"])
    state = checkpoint.read(ckpt)
    state["model_name"] = "tiny-vit-64"
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another architecture"):
        evaluate(tmp_path / "other.pt", pairs)


def test_checkpoint_loads_as_an_open_clip_pretrained_file(tmp_path):
    from curate.models.clip import create

    pairs = _pairs_dir(tmp_path / "pairs", n=16)
    train(_cfg({"pairs": str(pairs)}, samples_seen=16), tmp_path / "run")
    ours, _ = checkpoint.load_model(tmp_path / "run" / "checkpoint.pt")
    theirs = create("tiny-vit-32", pretrained=str(tmp_path / "run" / "checkpoint.pt")).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours.encode_image(x), theirs.encode_image(x))


@pytest.mark.skipif(not EMOJI.exists(), reason="shared emoji data not present")
def test_pairs_filter_selects_a_vendor():
    from train.data import pairs_records

    twitter = pairs_records(EMOJI, {"vendor": ["twitter"]})
    assert len(twitter) == 3574 and all("/twitter/" in r.image for r in twitter)
