"""Ground-truth evaluators of filters: AUC per noise kind, clean share at the oracle's size, per tier."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.synthetic.quality import filter_quality


def test_filter_quality_reads_kept_rows_and_tiers_against_ground_truth(tmp_path):
    """Six scored rows, one dropped by dedup and one not ok: the score ranks two of the three kept clean rows
    above every noisy one, so the top 3 (the oracle's size) hold two clean rows."""
    kinds = ["clean", "clean", "mismatched_caption", "clean", "partial_caption", "clean", "boilerplate_caption"]
    uids = [f"{i:032x}" for i in range(len(kinds))]
    pq.write_table(pa.table({"uid": uids, "gt_noise": kinds}), tmp_path / "pool.parquet")
    run = tmp_path / "run"
    for folder in ("score", "dedup", "tier/subsets"):
        (run / folder).mkdir(parents=True)
    status = ["ok"] * 6 + ["http_error"]
    score = [0.9, 0.8, 0.7, 0.1, 0.6, 0.95, None]
    pq.write_table(pa.table({"uid": uids, "status": status, "score_filter": pa.array(score, pa.float32())}),
                   run / "score" / "part-00000.parquet")
    keep = [True, True, True, True, True, False, None]
    pq.write_table(pa.table({"uid": uids, "dup_keep": keep}), run / "dedup" / "dup.parquet")
    pq.write_table(pa.table({"uid": uids[:3]}), run / "tier" / "subsets" / "top.parquet")

    q = filter_quality(run, tmp_path / "pool.parquet")
    assert q["kept_rows"] == 5 and q["oracle_rows"] == 3
    scores = q["scores"]["score_filter"]
    assert scores["mismatched_caption"] == pytest.approx(2 / 3, abs=1e-4)  # 0.9, 0.8 above 0.7; 0.1 below
    assert scores["partial_caption"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["clean_share_at_oracle_size"] == pytest.approx(2 / 3, abs=1e-4)
    assert q["subsets"]["top"] == {"rows": 3, "clean_share": pytest.approx(0.6667, abs=1e-4),
                                   "by_noise": {"clean": 2, "mismatched_caption": 1}}
