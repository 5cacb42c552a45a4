"""The bad-input catalogue, later stages: score over damaged and hostile download tars, dedup over
non-finite scores and embeddings, and the trainer's tar reader. Each kind ends in an exact status (or is
skipped and counted) and no row is lost."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.io import Part
from curate.schema import Status
from curate.stage import run_part
from tests.cross.bad_payloads import IMAGES, tar_bytes

# --- score: damaged and hostile download tars ----------------------------------------------------

# kind -> (tar, member name, image bytes, status after score)
SCORE_KINDS = {
    "jpeg": ("intact", "{key}.jpg", "jpeg", Status.OK),
    "cmyk_jpeg": ("intact", "{key}.jpg", "cmyk_jpeg", Status.OK),
    "png_16bit": ("intact", "{key}.png", "png_16bit", Status.OK),
    "palette_png": ("intact", "{key}.png", "palette_png", Status.OK),
    "transparent_png": ("intact", "{key}.png", "transparent_png", Status.OK),
    "animated_gif_named_jpg": ("intact", "{key}.jpg", "animated_gif", Status.OK),
    "html_named_jpg": ("intact", "{key}.jpg", "html", Status.DECODE_ERROR),
    "empty_member": ("intact", "{key}.jpg", "empty", Status.DECODE_ERROR),
    "bomb_header_in_tar": ("intact", "{key}.png", "png_declaring_50000px_sides", Status.DECODE_ERROR),
    "before_the_truncation": ("truncated", "{key}.jpg", "jpeg", Status.OK),
    "cut_by_the_truncation": ("truncated", "{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_named_dotdot": ("hostile", "../{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_named_absolute": ("hostile", "/tmp/{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "member_under_dotdot_dir": ("hostile", "a/../{key}.jpg", "jpeg", Status.DECODE_ERROR),
    "not_a_tar_at_all": ("garbage", "{key}.jpg", "jpeg", Status.DECODE_ERROR),
}


def _score_stage(tmp_path):
    from curate.score.score import ScoreConfig, ScorerConfig, ScoreStage

    cfg = ScoreConfig(scorers=[ScorerConfig(name="x", model="tiny-vit-32")], device="cpu", batch_size=8)
    return ScoreStage(cfg, tmp_path / "download", tmp_path)


def _download_part(tmp_path, rows: list[dict]) -> Part:
    columns = ("uid", "caption", "status", "error", "shard", "key", "width", "height")
    table = pa.table({c: [r.get(c) for r in rows] for c in columns},
                     schema=pa.schema([(c, pa.int32() if c in ("width", "height") else pa.string()) for c in columns]))
    path = tmp_path / "download" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return Part(0, path, tmp_path / "score")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-score")
    tars: dict[str, list] = {"intact": [], "truncated": [], "hostile": [], "garbage": []}
    rows = []
    for k, (kind, (tar, member, image, _)) in enumerate(SCORE_KINDS.items()):
        key = f"{k:09d}"
        tars[tar].append((member.format(key=key), IMAGES[image]()))
        rows.append({"uid": f"{k:032x}", "caption": kind, "status": Status.OK, "shard": f"shards/{tar}.tar",
                     "key": key, "width": 64, "height": 64})
    rows.append({"uid": f"{99:032x}", "caption": "never downloaded", "status": Status.HTTP_ERROR, "error": "HTTP Error 404"})
    shards = tmp_path / "download" / "shards"
    shards.mkdir(parents=True)
    for name, members in tars.items():
        data = tar_bytes(members)
        if name == "truncated":  # cut 100 bytes into the second member's data
            data = data[:512 + -(-len(members[0][1]) // 512) * 512 + 512 + 100]
        elif name == "garbage":
            data = b"\x00not a tar" * 100
        (shards / f"{name}.tar").write_bytes(data)
    part = _download_part(tmp_path, rows)
    stage = _score_stage(tmp_path)
    run_part(stage, part)
    return {r["caption"]: r for r in pq.read_table(part.output_path).to_pylist()}, len(rows), tmp_path


def test_score_rows_are_all_there(scored):
    rows, n, tmp_path = scored
    assert len(rows) == n and rows["never downloaded"]["status"] == Status.HTTP_ERROR


@pytest.mark.parametrize("kind", list(SCORE_KINDS))
def test_score_kind_ends_in_its_status(scored, kind):
    rows, _, _ = scored
    row = rows[kind]
    assert row["status"] == SCORE_KINDS[kind][3], row["error"]
    assert (row["score_x"] is not None) == (row["status"] == Status.OK)


def test_a_shard_path_that_climbs_out_fails_the_part_clearly(tmp_path):
    (tmp_path / "outside.tar").write_bytes(tar_bytes([("k.jpg", IMAGES["jpeg"]())]))
    part = _download_part(tmp_path, [{"uid": "0" * 32, "caption": "c", "status": Status.OK,
                                      "shard": "../outside.tar", "key": "k", "width": 64, "height": 64}])
    with pytest.raises(ValueError, match="points outside"):
        run_part(_score_stage(tmp_path), part)
    assert not part.output_path.exists() and not part.done_path.exists()


# --- dedup: non-finite scores and embeddings -----------------------------------------------------

DEDUP_KINDS = {  # kind -> (score, embedding: "copy" of row 0's, "nan", "inf", "zero" or "own")
    "nan_score": (float("nan"), "copy"),
    "inf_score": (float("inf"), "own"),
    "minus_inf_score": (float("-inf"), "own"),
    "null_score": (None, "own"),
    "nan_embedding": (0.5, "nan"),
    "inf_embedding": (0.5, "inf"),
    "zero_embedding": (0.5, "zero"),
}


@pytest.fixture(scope="module")
def deduped():
    from curate.dedup.dedup import DedupConfig, find_duplicates
    from curate.score.heuristics import caption_signals

    rng = np.random.default_rng(0)
    dim = 8

    def unit():
        v = rng.normal(size=dim)
        return v / np.linalg.norm(v)

    first = unit()
    kinds = ["reference", *DEDUP_KINDS]
    vectors, scores = [first], [0.1]
    for kind in DEDUP_KINDS:
        score, emb = DEDUP_KINDS[kind]
        vectors.append({"copy": first, "nan": np.full(dim, np.nan), "inf": np.full(dim, np.inf),
                        "zero": np.zeros(dim)}.get(emb, None) if emb != "own" else unit())
        scores.append(score)
    table = pa.table({
        "uid": [f"{k:032x}" for k in range(len(kinds))], "status": [Status.OK] * len(kinds), "caption": kinds,
        "sha256": [f"{k}" for k in range(len(kinds))], "caption_hash": [caption_signals(k)["caption_hash"] for k in kinds],
        "image_embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.stack(vectors).astype(np.float16).reshape(-1)), dim),
        "score_x": pa.array(scores, pa.float32()),
    })
    dup = find_duplicates(table, DedupConfig(cluster_size=2, image_match_min=None, copy_search_k=0), "score_x")
    return table, {k: r for k, r in zip(kinds, dup.to_pylist())}


def test_dedup_keeps_one_row_per_uid_with_a_decision(deduped):
    table, rows = deduped
    assert len(rows) == table.num_rows and [r["uid"] for r in rows.values()] == table.column("uid").to_pylist()
    assert all(r["dup_keep"] in (True, False) for r in rows.values())


@pytest.mark.parametrize("kind", list(DEDUP_KINDS))
def test_dedup_kind(deduped, kind):
    _, rows = deduped
    row = rows[kind]
    if kind == "nan_score":  # a NaN score loses to any real score in its group, never wins by accident
        assert row["dup_keep"] is False and row["dup_reason"] == "near_image" and rows["reference"]["dup_keep"]
    else:  # an embedding that is not a finite unit vector matches nothing
        assert row["dup_keep"] is True and row["dup_reason"] is None


# --- the trainer's tar reader --------------------------------------------------------------------

@pytest.fixture()
def train_shards(tmp_path):
    good = IMAGES["jpeg"]()
    hostile = tar_bytes([("../up.jpg", good), ("../up.txt", b"up"), ("/abs/k.jpg", good), ("/abs/k.txt", b"abs"),
                          ("ok1.jpg", good), ("ok1.txt", b"one")])
    whole = tar_bytes([("ok2.jpg", good), ("ok2.txt", b"two"), ("bomb.png", IMAGES["png_declaring_50000px_sides"]()),
                        ("bomb.txt", b"bomb"), ("cut.jpg", good), ("cut.txt", b"cut")])
    (tmp_path / "hostile.tar").write_bytes(hostile)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        cut = tar.getmember("cut.jpg").offset_data + 100
    (tmp_path / "truncated.tar").write_bytes(whole[:cut])  # cut.jpg loses its end, cut.txt is gone
    return tmp_path


def test_train_tar_reader_skips_climbing_names_and_reads_up_to_a_truncation(train_shards):
    from train.data import shard_records

    records = shard_records([train_shards / "hostile.tar", train_shards / "truncated.tar"])
    assert sorted((Path(r.image).name, r.member, r.caption) for r in records) == [
        ("hostile.tar", "ok1.jpg", "one"), ("truncated.tar", "bomb.png", "bomb"), ("truncated.tar", "ok2.jpg", "two")]


def test_train_stream_skips_a_decompression_bomb_instead_of_crashing(train_shards):
    import torch

    from train.data import PairStream, shard_records

    records = shard_records([train_shards / "truncated.tar"])
    stream = PairStream(records, lambda im: torch.zeros(3), lambda caps: torch.zeros((1, 4)), seed=0)
    items = [item for item, _ in zip(iter(stream), range(2 * len(records)))]
    assert sum(item is None for item in items) == 2 and sum(item is not None for item in items) == 2
