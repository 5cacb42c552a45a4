import hashlib
from collections import Counter

import pyarrow.parquet as pq
import pytest

from curate.schema import make_uid
from curate.synthetic.copy_edits import EDITS
from curate.synthetic.synth import BROKEN_KINDS, NoiseConfig, SynthConfig, synthesize
from tests.conftest import EMOJI

GT_VALUES = {"clean", "mismatched_caption", "boilerplate_caption", "partial_caption", "exact_duplicate",
             "near_duplicate", *BROKEN_KINDS}


def _file_bytes(pool_dir, url):
    return (pool_dir / "files" / "/".join(url.split("/")[-2:])).read_bytes()


def test_pool_columns_noise_vocabulary_and_proportions(small_pool):
    pool = pq.read_table(small_pool / "pool.parquet")
    assert pool.column_names == ["uid", "url", "caption", "src_key", "gt_noise", "gt_dup_of", "gt_caption", "gt_edit"]
    assert pool.num_rows == 240
    counts = Counter(pool.column("gt_noise").to_pylist())
    assert set(counts) <= GT_VALUES
    assert set(BROKEN_KINDS) <= set(counts), "every broken kind is planted"
    assert counts["exact_duplicate"] == 12 and counts["near_duplicate"] == 12
    assert counts["mismatched_caption"] == round(240 * 0.08)
    rows = pool.to_pylist()
    assert all(r["uid"] == make_uid(r["url"], r["caption"]) for r in rows)
    assert len({r["uid"] for r in rows}) == len(rows)


def test_duplicates_point_at_clean_originals(small_pool):
    rows = {r["uid"]: r for r in pq.read_table(small_pool / "pool.parquet").to_pylist()}
    for r in rows.values():
        if r["gt_noise"] in ("exact_duplicate", "near_duplicate"):
            original = rows[r["gt_dup_of"]]
            assert original["gt_noise"] == "clean" and original["url"] != r["url"]
            same = _file_bytes(small_pool, r["url"]) == _file_bytes(small_pool, original["url"])
            assert same == (r["gt_noise"] == "exact_duplicate")
            assert (r["gt_edit"] in EDITS) == (r["gt_noise"] == "near_duplicate")
        else:
            assert r["gt_dup_of"] is None and r["gt_edit"] is None
    edits = Counter(r["gt_edit"] for r in rows.values() if r["gt_edit"])
    assert set(edits) == set(EDITS)  # 12 near copies: every edit kind in turn


def test_caption_noise_differs_from_the_true_caption(small_pool):
    for r in pq.read_table(small_pool / "pool.parquet").to_pylist():
        if r["gt_noise"] in ("mismatched_caption", "partial_caption", "boilerplate_caption"):
            assert r["caption"] != r["gt_caption"]
        elif r["gt_noise"] == "clean":
            assert r["caption"] == r["gt_caption"]


def test_deterministic_per_seed(tmp_path):
    cfg = SynthConfig(n=60, seed=7, port=18999)
    a = synthesize(cfg, tmp_path / "a")
    b = synthesize(cfg, tmp_path / "b")
    c = synthesize(cfg.model_copy(update={"seed": 8}), tmp_path / "c")
    assert a.equals(b)
    assert not a.column("uid").equals(c.column("uid"))
    digest = lambda d: hashlib.sha256(b"".join(p.read_bytes() for p in sorted((d / "files").rglob("*")) if p.is_file()))
    assert digest(tmp_path / "a").digest() == digest(tmp_path / "b").digest()


def test_noise_free_pool_is_all_clean(tmp_path):
    zero = NoiseConfig(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0,
                       near_duplicate=0, broken=0)
    pool = synthesize(SynthConfig(n=30, noise=zero), tmp_path)
    assert set(pool.column("gt_noise").to_pylist()) == {"clean"}


@pytest.mark.skipif(not EMOJI.exists(), reason="shared emoji data not present")
def test_from_pairs_applies_the_same_noise_to_real_pairs(tmp_path):
    pool = synthesize(SynthConfig(n=300, seed=1, from_pairs=EMOJI), tmp_path)
    rows = pool.to_pylist()
    emoji = {r["key"]: r["caption"] for r in pq.read_table(EMOJI / "pairs.parquet", columns=["key", "caption"]).to_pylist()}
    clean = [r for r in rows if r["gt_noise"] == "clean"]
    assert clean and all(r["caption"] == emoji[r["src_key"]] for r in clean)
    assert {"mismatched_caption", "partial_caption", "exact_duplicate", "near_duplicate"} <= {r["gt_noise"] for r in rows}


def test_from_pairs_rejects_a_folder_without_pairs(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs.parquet"):
        synthesize(SynthConfig(n=20, from_pairs=tmp_path), tmp_path / "out")
