import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate.download.download import KEY_DIGITS, run_download
from curate.io import Part
from curate.schema import Status
from curate.score.score import ScoreConfig, ScoreStage, ScorerConfig, decode_rgb, run_score
from curate.synthetic.quality import roc_auc
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A random-init tiny ViT saved as a `curate train` checkpoint (the same weights in every process)."""
    from curate.models import checkpoint
    from curate.models.clip import create

    torch.manual_seed(0)
    model = create("tiny-vit-32")
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    checkpoint.save(path, model, None, 0, "tiny-vit-32", {})
    return path, model.eval()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _odd_images() -> dict[str, bytes]:
    """Formats a scorer must take: CMYK, 16-bit, palette, transparent, animated; and two it cannot."""
    rgb = Image.new("RGB", (40, 40), (200, 30, 30))
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, format="JPEG")
    gif = io.BytesIO()
    rgb.save(gif, format="GIF", save_all=True, append_images=[Image.new("RGB", (40, 40), (0, 0, 255))])
    return {"cmyk": cmyk.getvalue(), "gray16": _png(Image.fromarray(np.full((40, 40), 40000, np.uint16))),
            "palette": _png(rgb.convert("P")), "rgba": _png(Image.new("RGBA", (40, 40), (0, 0, 0, 0))),
            "animated": gif.getvalue(), "corrupt": b"\xff\xd8\xff\xe0 not really a jpeg", "truncated": _png(rgb)[:60]}


def test_odd_images_score_and_undecodable_ones_get_a_status(tmp_path, saved_model):
    images = _odd_images()
    download = tmp_path / "download"
    (download / "shards").mkdir(parents=True)
    keys = [f"{i:08d}" for i in range(len(images))]
    with tarfile.open(download / "shards" / f"{0:0{KEY_DIGITS}d}.tar", "w") as tar:
        for key, data in zip(keys, images.values()):
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    n = len(images) + 2
    table = pa.table({
        "uid": [f"{i:032x}" for i in range(n)],
        "caption": ["a red square"] * (n - 1) + ["x" * 5000],
        "status": [Status.OK] * (n - 2) + [Status.HTTP_ERROR, Status.OK],
        "error": [None] * n,
        "shard": ["shards/00000.tar"] * n,
        "key": keys + ["missing", "99999999"],
        "width": [40] * n, "height": [40] * n,
    })
    pq.write_table(table, tmp_path / "in.parquet")
    stage = ScoreStage(ScoreConfig(scorers=[ScorerConfig(name="t", checkpoint=saved_model[0])]), download, tmp_path)
    stage.ensure_setup()
    out = stage.process_part(table, Part(0, tmp_path / "in.parquet", tmp_path / "score")).to_pylist()
    status = {k: r["status"] for k, r in zip(list(images) + ["not_downloaded", "missing_member"], out)}
    assert status == {"cmyk": "ok", "gray16": "ok", "palette": "ok", "rgba": "ok", "animated": "ok",
                      "corrupt": "decode_error", "truncated": "decode_error", "not_downloaded": "http_error",
                      "missing_member": "decode_error"}
    for r in out:
        scored = r["status"] == "ok"
        assert (r["score_t"] is not None) == scored and (r["image_embedding"] is not None) == scored
        if scored:
            assert -1 <= r["score_t"] <= 1 and abs(np.linalg.norm(np.float32(r["image_embedding"])) - 1) < 1e-2
    assert out[-1]["caption_chars"] == 5000


def test_a_local_checkpoint_scores_like_the_in_memory_model(small_pool, tmp_path, saved_model):
    from curate.models.clip import tokenizer
    import open_clip

    run_download(fast_download(input=small_pool / "pool.parquet"), tmp_path, LocalRunner(), small_pool)
    cfg = ScoreConfig(scorers=[ScorerConfig(name="a", checkpoint=saved_model[0])])
    stats = run_score(cfg, tmp_path, LocalRunner())
    assert stats["input_rows"] == 240 == sum(stats["by_status"].values())
    assert stats["scored_rows"] == stats["by_status"]["ok"]
    rows = [r for r in read_parts(tmp_path / "score").to_pylist() if r["status"] == "ok"][:8]
    model, tok = saved_model[1], tokenizer("tiny-vit-32")
    transform = open_clip.image_transform(32, is_train=False)
    with tarfile.open(tmp_path / "download" / rows[0]["shard"]) as tar:
        pixels = torch.stack([transform(decode_rgb(tar.extractfile(f"{r['key']}.jpg").read(), 32)) for r in rows])
    with torch.no_grad():
        expected = (model.encode_image(pixels, normalize=True) * model.encode_text(tok([r["caption"] for r in rows]),
                                                                                    normalize=True)).sum(1)
    assert np.allclose([r["score_a"] for r in rows], expected.numpy(), atol=1e-5)
    assert json.loads((tmp_path / "score" / "stats.json").read_text())["scored_rows"] == stats["scored_rows"]


@pytest.mark.ray
@pytest.mark.timeout(240)  # an actor asking more CPUs than a node has would wait forever
def test_ray_actor_pool_gives_the_same_scores_as_local(small_pool, tmp_path, saved_model, ray_local):
    from pipelines.ray_runner import RayRunner

    run_download(fast_download(input=small_pool / "pool.parquet"), tmp_path, LocalRunner(), small_pool)
    cfg = ScoreConfig(scorers=[ScorerConfig(name="a", checkpoint=saved_model[0])])
    run_score(cfg, tmp_path, LocalRunner())
    local = read_parts(tmp_path / "score").select(["uid", "status", "score_a"])
    for p in (tmp_path / "score").glob("_done/*.json"):
        p.unlink()
    run_score(cfg.model_copy(update={"threads": 3}), tmp_path, RayRunner())  # asks 3 CPUs: the pool fits it to 2
    ray = read_parts(tmp_path / "score").select(["uid", "status", "score_a"])
    assert local.column("uid").equals(ray.column("uid")) and local.column("status").equals(ray.column("status"))
    a, b = (np.array(t.column("score_a").to_pylist(), dtype=float) for t in (local, ray))
    assert np.allclose(a, b, atol=1e-5, equal_nan=True)


def test_scorer_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="either model"):
        ScorerConfig(name="x")
    with pytest.raises(ValueError, match="unique names"):
        ScoreConfig(scorers=[ScorerConfig(name="x", model="tiny-vit-32")] * 2)


def test_roc_auc_matches_definition():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
