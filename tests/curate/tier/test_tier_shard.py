"""Tier and shard stages on a real downloaded, scored and deduplicated small pool."""
import json
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curate.dedup.dedup import DedupConfig, run_dedup
from curate.download.download import run_download
from curate.score.score import ScoreConfig, ScorerConfig, run_score
from curate.shard import ShardConfig, ShardError, run_shard
from curate.tier.tier import TierConfig, TierError, npy_to_uids, run_tier
from curate.tier.tier_rules import (CaptionGroupBest, DedupKeep, Equals, GroundTruth, SubsetConfig, Threshold,
                                    caption_group_rank)
from pipelines.runners import LocalRunner
from tests.conftest import fast_download, read_parts

BASE = [DedupKeep(), Equals(column="caption_boilerplate", value=False)]


@pytest.fixture(scope="module")
def scored_run(small_pool, tmp_path_factory):
    """Download, score (random-init tiny ViT) and dedup the 240-row pool once for the module."""
    from curate.models import checkpoint
    from curate.models.clip import create

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    ckpt = run / "model.pt"
    checkpoint.save(ckpt, create("tiny-vit-32"), None, 0, "tiny-vit-32", {})
    run_download(fast_download(input=small_pool / "pool.parquet"), run, LocalRunner(), small_pool)
    run_score(ScoreConfig(scorers=[ScorerConfig(name="s", checkpoint=ckpt)]), run, LocalRunner())
    run_dedup(DedupConfig(images=False), run)  # a random-init model embeds every image alike
    return run


def _fresh(scored_run, tmp_path):
    """A copy of the scored run, so each test's tier and shard outputs start empty."""
    import shutil

    run = tmp_path / "run"
    for stage in ("download", "score", "dedup"):
        shutil.copytree(scored_run / stage, run / stage)
    return run


def test_tier_counts_add_up_and_files_agree(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    cfg = TierConfig(base=BASE, holdout_fraction=0.1,
                     subsets=[SubsetConfig(name="words3", rules=[Threshold(column="caption_words", min=3)])])
    counts = run_tier(cfg, run)
    assert counts["input_rows"] == 240 == counts["uids"] + counts["duplicate_uid_rows"]
    accounting = pq.read_table(run / "tier" / "accounting.parquet").to_pylist()
    assert len({r["uid"] for r in accounting}) == len(accounting) == counts["uids"]
    score = {r["uid"]: r for r in read_parts(run / "score").to_pylist()}
    thresholds = json.loads((run / "tier" / "thresholds.json").read_text())
    for name in ("top20", "top40", "top60", "top80", "top100", "words3"):
        kept = pq.read_table(run / "tier" / "subsets" / f"{name}.parquet").column("uid").to_pylist()
        assert kept == sorted(kept) and len(kept) == counts["subsets"][name]
        assert counts["subsets"][name] + sum(counts["drops"][name].values()) == counts["uids"]
        assert kept == sorted(r["uid"] for r in accounting if r[f"drop_{name}"] is None)
        assert npy_to_uids(np.load(run / "tier" / "subsets" / f"{name}.npy")) == kept
        assert all(score[u]["status"] == "ok" and not score[u]["caption_boilerplate"] for u in kept)
        if name.startswith("top"):
            assert min(score[u]["score_s"] for u in kept) >= thresholds[name]["score_s"]
    held = set(pq.read_table(run / "tier" / "holdout.parquet").column("uid").to_pylist())
    assert held and not held & set(pq.read_table(run / "tier" / "subsets" / "top100.parquet").column("uid").to_pylist())
    # the quantile is over the whole scored pool: top20's cut keeps 20% of the scored rows
    scored = np.array([r["score_s"] for r in score.values() if r["status"] == "ok"])
    assert (scored >= thresholds["top20"]["score_s"]).sum() == pytest.approx(0.2 * len(scored), abs=1)
    drops = counts["drops"]["top100"]
    assert drops["duplicate_exact_image"] + drops.get("duplicate_exact_pair", 0) > 0 and drops["holdout"] > 0
    assert drops["http_error"] > 0 and "decode_error" in drops


def test_tier_bad_requests_fail_clearly_and_empty_subsets_are_valid(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    with pytest.raises(TierError, match="'nope' is not in this run's columns"):
        run_tier(TierConfig(base=[Threshold(column="nope", min=1)]), run)
    with pytest.raises(ValueError, match="outside"):
        TierConfig(standard_fractions=[0.0])
    with pytest.raises(ValueError, match="less than or equal to 1"):
        TierConfig.model_validate({"subsets": [{"name": "x", "rules": [{"kind": "top_fraction", "fraction": 1.5}]}]})
    with pytest.raises(ValueError, match="pattern"):
        SubsetConfig(name="../escape")
    for lost in ("download/part-00001.parquet", "score/part-00001.parquet", "score/part-00000.parquet"):
        (run / lost).unlink()  # failed parts: their rows are counted, not fatal
    cfg = TierConfig(standard_fractions=[], subsets=[SubsetConfig(name="none", rules=[Threshold(column="score_s", min=2)])])
    counts = run_tier(cfg, run)
    drops = counts["drops"]["none"]
    assert counts["subsets"]["none"] == 0 and drops["not_downloaded"] == 100
    ok_in_part0 = sum(1 for r in read_parts(scored_run / "download").to_pylist()[:100] if r["status"] == "ok")
    assert drops["not_scored"] == ok_in_part0
    assert sum(counts["drops"]["none"].values()) == counts["uids"]
    assert pq.read_table(run / "tier" / "subsets" / "none.parquet").num_rows == 0
    assert len(np.load(run / "tier" / "subsets" / "none.npy")) == 0
    stats = run_shard(ShardConfig(), run, LocalRunner())
    assert stats["subsets"] == {"none": 0}
    manifest = json.loads((run / "shards" / "none" / "manifest.json").read_text())
    assert manifest["samples"] == 0 and manifest["shards"] == []


def test_the_oracle_keeps_exactly_the_clean_rows_and_is_refused_without_ground_truth(scored_run, small_pool, tmp_path):
    """A ground_truth subset keeps the scored, deduplicated rows whose gt_noise is clean, is listed as
    evaluation only, and a pool with no synth ground truth is refused before any subset is written."""
    import shutil

    run = _fresh(scored_run, tmp_path)
    oracle = SubsetConfig(name="oracle", rules=[GroundTruth()])
    with pytest.raises(TierError, match="only pools made by the synth stage carry ground truth"):
        run_tier(TierConfig(base=[DedupKeep()], subsets=[oracle]), run)
    assert not (run / "tier" / "subsets").exists()
    (run / "synth").mkdir()
    shutil.copy(small_pool / "pool.parquet", run / "synth" / "pool.parquet")
    counts = run_tier(TierConfig(base=[DedupKeep()], subsets=[oracle]), run)
    truth = {r["uid"]: r["gt_noise"] for r in pq.read_table(small_pool / "pool.parquet").to_pylist()}
    dup = {r["uid"]: r["dup_keep"] for r in pq.read_table(run / "dedup" / "dup.parquet").to_pylist()}
    scored = {r["uid"] for r in read_parts(run / "score").to_pylist() if r["status"] == "ok"}
    expected = sorted(u for u in scored if truth[u] == "clean" and dup.get(u))
    kept = pq.read_table(run / "tier" / "subsets" / "oracle.parquet").column("uid").to_pylist()
    assert kept == expected and 0 < len(kept) < len(scored)
    assert counts["evaluation_only"] == ["oracle"]
    assert counts["drops"]["oracle"]["ground_truth_not_clean"] > 0


def test_a_shared_caption_keeps_the_row_whose_image_matches_it_best():
    """Groups by caption_dup_of (the head has none); dedup-kept rows rank before dropped copies even when a
    copy scores higher; unscored rows never pass; a caption nobody shares passes."""
    import pyarrow as pa

    a, b, c, d, e, f = (f"{k:032x}" for k in range(6))  # the pool's uids, sorted
    uids = pa.chunked_array([pa.array([a, b, c, d, e, f])])
    caption_of = pa.chunked_array([pa.array([None, a, a, None, d, None])])
    score = np.array([0.2, 0.5, 0.9, 0.1, np.nan, 0.0])
    kept = np.array([True, True, False, True, True, True])
    rank = caption_group_rank(caption_of, score, kept, uids)
    assert rank[:4].tolist() == [1, 0, 2, 0] and rank[4] > 10 ** 9 and rank[5] == 0
    passes = rank < CaptionGroupBest(keep=2).keep
    assert passes.tolist() == [True, True, False, True, False, True]


def test_caption_group_best_is_a_tier_rule_with_its_own_reason(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    best = SubsetConfig(name="best", rules=[CaptionGroupBest()])
    counts = run_tier(TierConfig(base=[DedupKeep()], standard_fractions=[], subsets=[best]), run)
    dup = pq.read_table(run / "dedup" / "dup.parquet").to_pylist()
    shared = sum(1 for r in dup if r["dup_keep"] and r["caption_dup_count"] and r["caption_dup_count"] > 1)
    groups = len({r["caption_dup_of"] or r["uid"] for r in dup if r["dup_keep"] and (r["caption_dup_count"] or 0) > 1})
    assert counts["drops"]["best"]["not_top_1_score_s_for_its_caption"] == shared - groups > 0


def _read_tars(shard_dir):
    samples = {}
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_shards_read_back_to_exactly_the_subset_and_resume_by_shard(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    run_tier(TierConfig(base=BASE, standard_fractions=[0.5, 1.0]), run)
    cfg = ShardConfig(samples_per_shard=40, seed=7)
    stats = run_shard(cfg, run, LocalRunner())
    download = {r["uid"]: r for r in read_parts(run / "download").to_pylist()}
    for subset in ("top50", "top100"):
        uids = pq.read_table(run / "tier" / "subsets" / f"{subset}.parquet").column("uid").to_pylist()
        shard_dir = run / "shards" / subset
        samples = _read_tars(shard_dir)
        assert sorted(samples) == uids and stats["subsets"][subset] == len(uids)
        for uid, files in list(samples.items())[:20]:
            assert files["txt"].decode() == download[uid]["caption"]
            assert json.loads(files["json"])["uid"] == uid and "score_s" in json.loads(files["json"])
            image = files.get("jpg") or files.get("png") or files.get("webp")
            with tarfile.open(run / "download" / download[uid]["shard"]) as src:
                assert image == src.extractfile(f"{download[uid]['key']}.jpg").read()  # the original bytes
        sizes = json.loads((shard_dir / "sizes.json").read_text())
        assert sum(sizes.values()) == len(uids) and max(sizes.values()) - min(sizes.values()) <= 1
        assert pq.read_table(shard_dir / "missing.parquet").num_rows == 0
        manifest = json.loads((shard_dir / "manifest.json").read_text())
        import hashlib
        for s in manifest["shards"]:
            assert hashlib.sha256((shard_dir / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    # resume: only the shard whose done marker is gone is written again, to the same bytes
    shard_dir = run / "shards" / "top100"
    before = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("*.tar")}
    first = json.loads((shard_dir / "manifest.json").read_text())
    (shard_dir / "_parts" / "_done" / "part-00001.json").unlink()
    run_shard(cfg, run, LocalRunner())
    after = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("*.tar")}
    assert [n for n in before if before[n] != after[n]] == ["00001.tar"]
    assert json.loads((shard_dir / "manifest.json").read_text()) == first
    # a directory holding someone else's files is refused
    (run / "shards" / "top50" / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="did not write"):
        run_shard(cfg, run, LocalRunner())


def test_rows_whose_image_is_missing_are_listed_by_uid(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    run_tier(TierConfig(base=BASE, standard_fractions=[1.0]), run)
    tar = sorted((run / "download" / "shards").glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:tar.stat().st_size // 2])  # a download tar cut short
    stats = run_shard(ShardConfig(samples_per_shard=50), run, LocalRunner())
    shard_dir = run / "shards" / "top100"
    subset = pq.read_table(run / "tier" / "subsets" / "top100.parquet").column("uid").to_pylist()
    missing = pq.read_table(shard_dir / "missing.parquet").column("uid").to_pylist()
    assert missing and missing == sorted(set(subset) - set(_read_tars(shard_dir)))
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["missing_images"] == stats["missing_images"]["top100"] == len(missing)
    assert manifest["samples"] == len(subset) - len(missing)


@pytest.mark.ray
def test_ray_runner_writes_the_same_tars(scored_run, tmp_path, ray_local):
    from pipelines.ray_runner import RayRunner

    local, ray_run = _fresh(scored_run, tmp_path / "a"), _fresh(scored_run, tmp_path / "b")
    for run, runner in ((local, LocalRunner()), (ray_run, RayRunner())):
        run_tier(TierConfig(base=BASE, standard_fractions=[0.3]), run)
        run_shard(ShardConfig(samples_per_shard=25), run, runner)
    a, b = (json.loads((r / "shards" / "top30" / "manifest.json").read_text()) for r in (local, ray_run))
    assert a == b and a["samples"] > 0


def test_open_clip_trainer_and_ours_consume_the_shards(scored_run, tmp_path):
    run = _fresh(scored_run, tmp_path)
    run_tier(TierConfig(base=BASE, standard_fractions=[1.0]), run)
    run_shard(ShardConfig(samples_per_shard=50), run, LocalRunner())
    shard_dir = run / "shards" / "top100"
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    last = manifest["shards"][-1]["name"].removesuffix(".tar")
    script = ("import sys; from curate.models.clip import register_model_configs; register_model_configs(); "
              "from open_clip_train.main import main; main(sys.argv[1:])")
    argv = ["--train-data", f"{shard_dir}/{{00000..{last}}}.tar", "--dataset-type", "webdataset",
            "--train-num-samples", str(manifest["samples"]), "--batch-size", "16", "--model", "tiny-vit-32",
            "--epochs", "1", "--workers", "1", "--lr", "1e-4", "--warmup", "1", "--precision", "fp32",
            "--logs", str(tmp_path / "logs"), "--name", "client", "--save-frequency", "1", "--report-to", "",
            "--seed", "0"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "logs" / "client" / "checkpoints").glob("epoch_1.pt")), done.stderr[-2000:]
    assert "Train Epoch: 0" in done.stdout + done.stderr

    from curate.models.train_config import TrainConfig
    from train.train import train

    cfg = TrainConfig.model_validate({"model": "tiny-vit-32", "samples_seen": 32, "batch_size": 16,
                                      "data": {"shards": str(shard_dir), "workers": 0}})
    summary = train(cfg, tmp_path / "ours")
    assert summary["records"] == manifest["samples"] and summary["samples_seen"] == 32


def test_uid_index_finds_the_first_row_of_each_uid_as_index_in_does():
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.tier.uids import uid_index

    rng = np.random.default_rng(0)
    table = pa.array([f"{v:032x}" for v in rng.integers(0, 50, 200)])  # repeats: the first occurrence counts
    targets = pa.array([f"{v:032x}" for v in range(60)])  # some absent: null
    assert uid_index(targets, table).to_pylist() == pc.index_in(targets, table).to_pylist()
    assert uid_index(targets, pa.array([], pa.string())).null_count == 60
