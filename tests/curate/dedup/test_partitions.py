"""Dedup as bounded-memory tasks: however the pool is split (score parts, top-level image partitions, hash
partitions) and wherever the tasks run (this process, Ray), the same rows are found to be duplicates."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import curate.dedup.dedup as dedup
from curate.dedup.dedup import DedupConfig, dedup_parts, run_dedup

DIM, TOPICS = 32, 20


def _pool(rows: int, seed: int = 0) -> tuple[pa.Table, set[tuple[int, int]]]:
    """A scored pool around a few topics with planted copies: (table, the planted (source, copy) pairs).
    A third of the copies are exact (same bytes, caption), a third near images, a third near images with one
    caption word changed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(TOPICS, DIM))
    emb = centres[rng.integers(0, TOPICS, rows)] + 0.8 * rng.normal(size=(rows, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    words = rng.integers(0, 5000, size=(rows, 8))
    sha = [f"{k:064x}" for k in range(rows)]
    planted = set()
    for n, k in enumerate(np.sort(rng.choice(np.arange(1, rows), rows // 20, replace=False)).tolist()):
        src = int(rng.integers(0, k))
        words[k] = words[src]
        if n % 3 == 0:
            emb[k], sha[k] = emb[src], sha[src]
        else:
            moved = emb[src] + 0.02 * rng.normal(size=DIM)
            emb[k] = moved / np.linalg.norm(moved)
        if n % 3 == 2:
            words[k, 0] = 99_999
        planted.add((src, k))
    captions = [" ".join(f"w{w}" for w in row) for row in words.tolist()]
    status = ["ok"] * rows
    status[7] = "timeout"
    table = pa.table({"uid": [f"{k:032x}" for k in range(rows)], "status": status, "caption": captions,
                      "sha256": sha, "caption_hash": [f"{hash(c) & (2**63 - 1):x}" for c in captions],
                      "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), DIM),
                      "score_x": pa.array(rng.normal(size=rows).astype(np.float32))})
    return table, {(a, b) for a, b in planted if 7 not in (a, b)}


def _parts(table: pa.Table, folder, rows_per_part: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, lo in enumerate(range(0, table.num_rows, rows_per_part)):
        paths.append(folder / f"part-{k:05d}.parquet")
        pq.write_table(table.slice(lo, rows_per_part), paths[-1])
    return paths


def _dedup(tmp_path, table, name: str, rows_per_part: int, parallel=None, **cfg) -> pa.Table:
    parts = _parts(table, tmp_path / name / "score", rows_per_part)
    config = DedupConfig(image_match_min=None, copy_search_k=0, **cfg)
    out = tmp_path / name / "dup.parquet"
    dedup_parts(config, parts, out, tmp_path / name / "work", **({"parallel": parallel} if parallel else {}))
    assert not (tmp_path / name / "work").exists()  # the work records go once dup.parquet is written
    return pq.read_table(out)


def _grouped(dup: pa.Table, pairs: set) -> float:
    group = dup.column("dup_group").to_pylist()
    return sum(group[a] is not None and group[a] == group[b] for a, b in pairs) / len(pairs)


def test_a_pool_split_every_way_finds_the_planted_copies_as_one_process_does(tmp_path, monkeypatch):
    table, planted = _pool(3000)
    whole = _dedup(tmp_path, table, "whole", 3000)
    monkeypatch.setattr(dedup, "HASH_PARTITION_ROWS", 500)  # 6 hash partitions of the keys and bands
    split = _dedup(tmp_path, table, "split", 700, partition_rows=1000)  # 5 parts, 3 image partitions
    assert _grouped(whole, planted) == 1.0
    assert _grouped(split, planted) >= 0.95  # a copy and its source may fall into two image partitions
    for column in ("uid", "caption_dup_count", "caption_dup_of"):  # captions do not depend on the image split
        assert split.column(column).to_pylist() == whole.column(column).to_pylist()
    assert whole.column("dup_keep").to_pylist()[7] is None  # not ok: takes no part
    exact = [r for r in whole.column("dup_reason").to_pylist() if r == "exact_pair"]
    assert len(exact) >= len(planted) // 3 - 2


def test_the_driver_holds_only_the_linked_rows(tmp_path):
    from curate.dedup.decide import Decisions
    from curate.dedup.partitions import Plan, band_partition, identity_partition, image_partition, prepare_part

    table, planted = _pool(2000, seed=1)
    parts = _parts(table, tmp_path / "score", 1000)
    cfg = DedupConfig(image_match_min=None, copy_search_k=0)
    plan = Plan(cfg, tmp_path / "work", "score_x", 2, False)
    for k, path in enumerate(parts):
        prepare_part(plan, k, path, 1000 * k, 100, np.zeros((1, 1), np.float32))
    for task, n in ((image_partition, 1), (identity_partition, 2), (band_partition, 2)):
        for p in range(n):
            task(plan, p)
    decisions = Decisions(plan)
    linked = {g for pair in planted for g in pair}
    assert linked <= set(decisions.g.tolist()) and len(decisions.g) < 2 * len(linked)


def test_run_dedup_records_its_phases_and_cleans_its_work(tmp_path):
    table, _ = _pool(1500, seed=2)
    _parts(table, tmp_path / "score", 500)
    (tmp_path / "score" / "_done").mkdir()
    for k in range(3):
        (tmp_path / "score" / "_done" / f"part-{k:05d}.json").write_text(json.dumps({"part": k}))
    stats = run_dedup(DedupConfig(image_match_min=None, copy_search_k=0, partition_rows=1000), tmp_path)
    assert set(stats["phases_s"]) == {"prepare", "partition", "images", "keys_and_bands", "decide_and_write"}
    assert stats["input_rows"] == 1500 == sum(stats["by_status"].values())
    assert not (tmp_path / "dedup" / "_work").exists()


@pytest.mark.ray
def test_ray_tasks_write_the_same_dup_parquet_as_this_process(tmp_path, ray_local):
    from pipelines.ray_runner import RayRunner

    table, _ = _pool(2500, seed=3)
    here = _dedup(tmp_path, table, "here", 600, partition_rows=1000)
    on_ray = _dedup(tmp_path, table, "ray", 600, parallel=RayRunner().parallel, partition_rows=1000)
    same = [c for c in here.column_names if c != "dup_similarity"]
    assert on_ray.select(same).equals(here.select(same))
    sims = [pc.fill_null(t.column("dup_similarity"), -1).to_numpy() for t in (here, on_ray)]
    np.testing.assert_allclose(*sims, atol=1e-5)  # BLAS sums in another order with one thread per task
