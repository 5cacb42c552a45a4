import csv
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from curate.interval import t_interval
from curate.synthetic.scenes import describe, encode, random_scene, render
from pipelines.compare import LEADING, CompareConfig, cells, compare
from pipelines.config import ConfigError, load_config
from pipelines.versus import Reference, versus_reference
from tests.conftest import EMOJI, ROOT
from tests.train.test_train import _pairs_dir



def _shards(out: Path, n: int, seed: int) -> Path:
    """A subset folder as the shard stage writes it: <uid>.jpg/.txt/.json samples, sizes.json, manifest.json."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    with wds.TarWriter(str(out / "00000.tar")) as sink:
        for i in range(n):
            scene, uid = random_scene(rng), f"{seed:016x}{i:016x}"
            sink.write({"__key__": uid, "jpg": encode(render(scene, rng, 40, 40)), "txt": describe(scene),
                        "json": {"uid": uid}})
    (out / "sizes.json").write_text(json.dumps({"00000.tar": n}))
    (out / "manifest.json").write_text(json.dumps({"subset": out.name, "samples": n,
                                                   "shards": [{"name": "00000.tar", "samples": n, "sha256": ""}]}))
    return out


def _config(eval_pairs: Path, **kw) -> CompareConfig:
    base = {"grids": {"main": {"subsets": ["big", "tiny"], "seeds": [0],
                               "strategies": {"clip": {"name": "clip"}, "flip": {"name": "flip"}},
                               "regimes": ["equal_samples", "one_pass"]}},
            "samples_seen": 32,
            "train": {"batch_size": 16, "warmup_steps": 1, "log_every_steps": 1, "data": {"workers": 0}},
            "eval_sets": [{"name": "heldout", "pairs": str(eval_pairs), "class_columns": ["shape"]}]}
    return CompareConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def eval_pairs(tmp_path_factory):
    return _pairs_dir(tmp_path_factory.mktemp("eval"), n=24, seed=9)


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_grid_writes_results_and_summary_records_failures_and_resumes(eval_pairs, tmp_path, monkeypatch):
    _shards(tmp_path / "shards" / "big", 40, seed=1)
    _shards(tmp_path / "shards" / "tiny", 8, seed=2)
    compare(_config(eval_pairs, reference={"subset": "big", "strategy": "clip"}), tmp_path)

    rows = _read(tmp_path / "results.csv")
    assert list(rows[0])[:len(LEADING)] == LEADING
    assert [(r["subset"], r["strategy"], r["regime"]) for r in rows] == [
        (s, st, rg) for s in ("big", "tiny") for st in ("clip", "flip") for rg in ("equal_samples", "one_pass")]
    big, tiny = rows[:4], rows[4:]
    assert all(r["status"] == "ok" and r["error"] == "" and r["subset_size"] == "40" for r in big)
    assert [r["samples_seen"] for r in big] == ["32", "32", "32", "32"]  # one pass of 40 = two whole batches
    assert all(0 <= float(r["heldout/retrieval/i2t/r1"]) <= 1 and r["heldout/n"] == "24" for r in big)
    assert all(r["status"] == "failed" and "fewer than one batch (16)" in r["error"] for r in tiny)

    summary = _read(tmp_path / "summary.csv")
    assert len(summary) == 8 and summary[0]["seeds_ok"] == "1" and summary[4]["seeds_failed"] == "1"
    assert summary[0]["heldout/retrieval/i2t/r1/ci95"] == ""  # one seed: no interval
    assert float(summary[0]["heldout/retrieval/i2t/r1/mean"]) == float(big[0]["heldout/retrieval/i2t/r1"])
    versus = [r for r in _read(tmp_path / "versus_reference.csv") if r["metric"] == "heldout/retrieval/i2t/r1"]
    assert [(r["subset"], r["strategy"], r["regime"], r["verdict"]) for r in versus] == [
        ("big", "flip", rg, "too few seeds") for rg in ("equal_samples", "one_pass")]  # tiny failed: no pairs
    assert float(versus[0]["difference"]) == pytest.approx(
        float(big[2]["heldout/retrieval/i2t/r1"]) - float(big[0]["heldout/retrieval/i2t/r1"]), abs=1e-5)

    trained = []
    monkeypatch.setattr("train.train.train", lambda cfg, out: trained.append(out) or 1 / 0)
    compare(_config(eval_pairs), tmp_path)
    assert trained == []  # finished cells are kept; the failed ones fail before training again
    assert _read(tmp_path / "results.csv") == rows


def test_a_changed_config_reruns_exactly_the_cells_it_changes(eval_pairs, tmp_path, monkeypatch):
    """samples_seen changes the equal_samples cells, a strategy option that strategy's cells, an eval set
    every cell's evaluation but no checkpoint; an unchanged config reruns nothing."""
    import train.train as train_module

    _shards(tmp_path / "shards" / "big", 32, seed=1)
    grid = {"subsets": ["big"], "strategies": {"clip": {"name": "clip"}, "aug": {"name": "clip_aug"}}}
    first = compare(_config(eval_pairs, grids={"g": grid}), tmp_path)
    assert [r["status"] for r in first] == ["ok"] * 4

    real_train, trained = train_module.train, []

    def recording_train(cfg, out):
        before = (Path(out) / "checkpoint.pt").stat().st_mtime_ns if (Path(out) / "checkpoint.pt").exists() else None
        summary = real_train(cfg, out)
        if (Path(out) / "checkpoint.pt").stat().st_mtime_ns != before:
            _, strategy, _, _, regime = Path(out).name.split("__")
            trained.append(f"{strategy}__{regime}")
        return summary

    def rerun(**changes) -> tuple[list[str], list[dict]]:
        trained.clear()
        rows = compare(_config(eval_pairs, **{"grids": {"g": grid}, **changes}), tmp_path)
        return trained, rows

    monkeypatch.setattr(train_module, "train", recording_train)
    assert rerun() == ([], first)

    cells, rows = rerun(samples_seen=64)
    assert sorted(cells) == ["aug__equal_samples", "clip__equal_samples"]
    assert [r["samples_seen"] for r in rows] == [64, 32, 64, 32] and rows[1] == first[1] and rows[3] == first[3]

    grid["strategies"]["aug"] = {"name": "clip_aug", "augment": {"crop_scale_min": 0.8}}
    cells, rows = rerun(samples_seen=64)
    assert sorted(cells) == ["aug__equal_samples", "aug__one_pass"]

    other = [{"name": "heldout", "pairs": str(eval_pairs), "class_columns": ["shape"], "where": {"shape": "circle"}}]
    before = {r["regime"] + r["strategy"]: r for r in rows}
    cells, rows = rerun(samples_seen=64, eval_sets=other)
    assert cells == [] and len({r["fingerprint"] for r in rows}) == 4  # evaluated again, not trained
    assert all(r["fingerprint"] != before[r["regime"] + r["strategy"]]["fingerprint"] for r in rows)
    assert all(int(r["heldout/n"]) < 24 for r in rows)
    assert [r["fingerprint"] for r in _read(tmp_path / "results.csv")] == [r["fingerprint"] for r in rows]


def test_a_cell_fingerprint_follows_what_decides_its_result(eval_pairs, tmp_path):
    from pipelines.compare import Cell, eval_identity, training_fingerprint

    shards = _shards(tmp_path / "shards" / "big", 16, seed=1)
    cell, strategy = Cell("big", "clip", "tiny-vit-32", 0, "one_pass"), {"name": "clip"}
    base = training_fingerprint(_config(eval_pairs), cell, strategy, tmp_path)
    assert training_fingerprint(_config(eval_pairs), cell, strategy, tmp_path) == base
    assert training_fingerprint(_config(eval_pairs, samples_seen=64), cell, strategy, tmp_path) == base  # one pass
    changed = [_config(eval_pairs, train={"batch_size": 16, "lr": 1e-3, "data": {"workers": 0}})]
    assert all(training_fingerprint(c, cell, strategy, tmp_path) != base for c in changed)
    assert training_fingerprint(_config(eval_pairs), cell, {"name": "flip"}, tmp_path) != base
    manifest = json.loads((shards / "manifest.json").read_text())
    (shards / "manifest.json").write_text(json.dumps({**manifest, "seed": 1}))  # resharded
    assert training_fingerprint(_config(eval_pairs), cell, strategy, tmp_path) != base

    heldout = _config(eval_pairs).eval_sets[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "pairs.parquet").write_bytes((eval_pairs / "pairs.parquet").read_bytes())
    same = eval_identity(heldout)
    assert eval_identity(heldout.model_copy(update={"pairs": copy})) == same  # the content, not the path
    (copy / "pairs.parquet").write_bytes(b"other rows")
    assert eval_identity(heldout.model_copy(update={"pairs": copy})) != same
    assert eval_identity(heldout.model_copy(update={"where": {"shape": "circle"}})) != same
    assert eval_identity(heldout.model_copy(update={"class_columns": []})) != same


def test_a_missing_eval_set_and_a_crashing_cell_are_rows_and_the_grid_goes_on(eval_pairs, tmp_path, monkeypatch):
    _shards(tmp_path / "shards" / "big", 16, seed=1)
    cfg = _config(eval_pairs, eval_sets=[{"name": "gone", "pairs": str(tmp_path / "nowhere")}],
                  grids={"g": {"subsets": ["big", "absent"], "regimes": ["one_pass"]}})
    rows = compare(cfg, tmp_path)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "eval set gone" in rows[0]["error"] and "no shards" in rows[1]["error"]
    assert not (tmp_path / "train" / "big__clip__tiny-vit-32__s0__one_pass" / "checkpoint.pt").exists()

    import train.train as train_module

    real_train = train_module.train

    def crash_on_big(cfg, out):
        if Path(out).name.startswith("big__"):
            raise RuntimeError("boom")
        return real_train(cfg, out)

    monkeypatch.setattr(train_module, "train", crash_on_big)
    _shards(tmp_path / "shards" / "big2", 16, seed=3)
    rows = compare(_config(eval_pairs, grids={"g": {"subsets": ["big", "big2"], "regimes": ["one_pass"]}}), tmp_path)
    assert [r["status"] for r in rows] == ["failed", "ok"] and rows[0]["error"] == "RuntimeError: boom"


def test_compare_config_is_checked_before_any_work(eval_pairs):
    with pytest.raises(ValueError, match="set per cell by the grid"):
        _config(eval_pairs, train={"seed": 3})
    with pytest.raises(ValueError, match="multiple of train.batch_size"):
        _config(eval_pairs, samples_seen=20)
    with pytest.raises(ValueError, match="names two different configs"):
        _config(eval_pairs, grids={
            "a": {"subsets": ["x"], "strategies": {"aug": {"name": "clip_aug"}}},
            "b": {"subsets": ["y"], "strategies": {"aug": {"name": "clip_aug", "augment": {"kind": "randaugment"}}}}})
    with pytest.raises(ValueError, match="not a cell of the grids"):
        _config(eval_pairs, reference={"subset": "top100", "strategy": "clip"})
    cfg = load_config(ROOT / "configs" / "compare" / "emoji.yaml", schema=CompareConfig)
    assert cfg.pipeline is not None and len(cfg.grids) >= 1 and min(len(g.seeds) for g in cfg.grids.values()) >= 3
    with pytest.raises(ConfigError, match="grids"):
        load_config(ROOT / "configs" / "compare" / "emoji.yaml", ["grids.tiers.seeds=[]"], schema=CompareConfig)


def _row(subset, strategy, seed, value, status="ok"):
    return {"subset": subset, "strategy": strategy, "model": "m", "regime": "equal_samples", "seed": seed,
            "status": status, "r5": value}


def test_cells_are_measured_against_the_reference_paired_by_seed():
    """Seed effects shared by both cells cancel: a +0.1 gain on every seed is `better` with a zero-width
    interval although the seeds spread by 0.5; a failed seed is left out of the pairing."""
    rows = [_row("all", "clip", s, base) for s, base in enumerate([0.2, 0.5, 0.7])]
    rows += [_row("top", "clip", s, base + 0.1) for s, base in enumerate([0.2, 0.5, 0.7])]
    rows += [_row("top", "aug", 0, 0.1), _row("top", "aug", 1, 0.6), _row("top", "aug", 2, 0.9),
             _row("top", "flip", 0, 0.0), _row("top", "flip", 1, 0.3), _row("top", "flip", 2, 9.0, "failed"),
             _row("solo", "clip", 0, 0.4)]
    out = {(r["subset"], r["strategy"]): r for r in versus_reference(rows, Reference(subset="all"), ["r5"])}
    assert set(out) == {("top", "clip"), ("top", "aug"), ("top", "flip"), ("solo", "clip")}
    top = out["top", "clip"]
    assert top["difference"] == pytest.approx(0.1) and top["ci95"] == pytest.approx(0, abs=1e-9)
    assert top["verdict"] == "better" and top["relative"] == pytest.approx(0.1 / (1.4 / 3), abs=1e-3)
    assert out["top", "aug"]["verdict"] == "no clear difference"  # -0.1, +0.1, +0.2
    assert out["top", "flip"]["seeds"] == 2 and out["top", "flip"]["verdict"] == "worse"  # -0.2, -0.2
    assert out["solo", "clip"]["verdict"] == "too few seeds"


def test_each_cell_reads_as_a_share_of_the_oracles_gain_at_its_own_budget():
    """Per seed (cell - reference) / (oracle - reference): a cell halfway to the oracle on every seed has
    share 0.5 with a zero-width interval; budgets are matched, never mixed; a seed where the oracle does not
    beat the reference carries no share."""
    rows = []
    for budget, lift in ((100, 1.0), (200, 2.0)):
        for s, base in enumerate([0.2, 0.5, 0.7]):
            rows += [{**_row("all", "clip", s, base), "budget": budget},
                     {**_row("oracle", "clip", s, base + 0.2 * lift), "budget": budget},
                     {**_row("top", "clip", s, base + 0.1 * lift), "budget": budget}]
    rows += [{**_row("all", "clip", 0, 0.3), "budget": 300}, {**_row("oracle", "clip", 0, 0.3), "budget": 300},
             {**_row("top", "clip", 0, 0.4), "budget": 300}]
    out = {(r["subset"], r["budget"]): r for r in
           versus_reference(rows, Reference(subset="all"), ["r5"], Reference(subset="oracle"))}
    for budget in (100, 200):
        assert out["top", budget]["oracle_gain_share"] == pytest.approx(0.5)
        assert out["top", budget]["oracle_gain_share_ci95"] == pytest.approx(0, abs=1e-9)
        assert out["oracle", budget]["oracle_gain_share"] is None and out["oracle", budget]["verdict"] == "better"
        assert out["top", budget]["difference"] == pytest.approx(0.1 * budget / 100)
    assert out["top", 300]["oracle_gain_share"] is None and out["top", 300]["verdict"] == "too few seeds"
    plain = versus_reference(rows, Reference(subset="all"), ["r5"])
    assert all(r["oracle_gain_share"] is None for r in plain)


def test_a_grid_sweeps_budgets_as_cells_of_their_own(eval_pairs):
    """Budgets other than the top-level samples_seen get a folder suffix; the default budget keeps the
    name cells had before sweeps existed; one_pass cells have no budget."""
    cfg = CompareConfig.model_validate({
        "samples_seen": 64, "train": {"batch_size": 32}, "eval_sets": [{"name": "e", "pairs": str(eval_pairs)}],
        "reference": {"subset": "a"}, "oracle": {"subset": "o"},
        "grids": {"g": {"subsets": ["a", "o"], "seeds": [0], "samples_seen": [64, 128]}}})
    ids = sorted(cell.id for cell, _ in cells(cfg))
    assert ids == ["a__clip__tiny-vit-32__s0__equal_samples", "a__clip__tiny-vit-32__s0__equal_samples__n128",
                   "a__clip__tiny-vit-32__s0__one_pass", "o__clip__tiny-vit-32__s0__equal_samples",
                   "o__clip__tiny-vit-32__s0__equal_samples__n128", "o__clip__tiny-vit-32__s0__one_pass"]
    assert {cell.budget for cell, _ in cells(cfg) if cell.regime == "one_pass"} == {None}
    with pytest.raises(ValueError, match="multiple of train.batch_size"):
        CompareConfig.model_validate({**cfg.model_dump(mode="json"),
                                      "grids": {"g": {"subsets": ["a", "o"], "samples_seen": [48]}}})
    with pytest.raises(ValueError, match="oracle"):
        CompareConfig.model_validate({**cfg.model_dump(mode="json"), "oracle": {"subset": "missing"}})


def test_t_interval_matches_the_textbook_value():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert t_interval([5.0]) == (5.0, None)


@pytest.mark.slow
def test_compare_runs_the_real_pipeline_then_the_grid(eval_pairs, tmp_path):
    """synth -> download -> filter -> score -> dedup -> tier -> shard, then 2 subsets x 2 strategies x 1 seed."""
    pipeline = {"stages": ["synth", "download", "filter", "score", "dedup", "tier", "shard"],
                "runner": {"kind": "local"}, "synth": {"n": 300, "seed": 0, "hang_s": 2},
                "download": {"rows_per_part": 150, "timeout_s": 2, "allow_private_networks": True},
                "filter": {"seed_n": 200, "samples_seen": 256, "batch_size": 64, "workers": 0},
                "dedup": {"images": False},
                "tier": {"base": [{"kind": "dedup_keep"}], "standard_fractions": [0.3, 1.0]},
                "shard": {"samples_per_shard": 64}}
    cfg = _config(eval_pairs, pipeline=pipeline, samples_seen=64,
                  grids={"g": {"subsets": ["top30", "top100"], "regimes": ["equal_samples"],
                               "strategies": {"clip": {"name": "clip"},
                                              "clipa": {"name": "clipa", "context_length": 8}}}})
    rows = compare(cfg, tmp_path)
    assert [(r["subset"], r["strategy"], r["status"]) for r in rows] == [
        ("top30", "clip", "ok"), ("top30", "clipa", "ok"), ("top100", "clip", "ok"), ("top100", "clipa", "ok")]
    sizes = {r["subset"]: r["subset_size"] for r in rows}
    assert 0 < sizes["top30"] < sizes["top100"] <= 300
    assert len(_read(tmp_path / "summary.csv")) == 4


@pytest.mark.skipif(not EMOJI.exists(), reason="shared emoji data not present")
def test_emoji_pool_keeps_a_vendor_out_and_a_seed_split_that_the_filter_trains_on(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from curate.filter import FilterConfig, run_filter
    from curate.synthetic.synth import SynthConfig, synthesize
    from pipelines.run import train_filter

    cfg = SynthConfig(from_pairs=EMOJI, pairs_filter={"vendor": ["twitter"]}, seed_split_fraction=0.2, n=100)
    pool = synthesize(cfg, tmp_path / "synth")
    seed = pq.read_table(tmp_path / "synth" / "seed_pairs" / "pairs.parquet")
    assert seed.num_rows == round(3574 * 0.2) and set(seed.column("vendor").to_pylist()) == {"twitter"}
    assert all(Path(p).is_file() for p in seed.column("path").to_pylist()[:5])
    pool_keys = {k for k in pool.column("src_key").to_pylist() if k}
    assert all(k.startswith("twitter-") for k in pool_keys) and not pool_keys & set(seed.column("key").to_pylist())

    seen = []
    monkeypatch.setattr("train.train.train", lambda train_cfg, out: seen.append(train_cfg.data.pairs) or {})
    run_filter(FilterConfig(), tmp_path, train_filter)
    assert seen == [(tmp_path / "synth" / "seed_pairs").resolve()]
    with pytest.raises(ValueError, match="keeps no rows"):
        synthesize(SynthConfig(from_pairs=EMOJI, pairs_filter={"vendor": ["apple"]}, n=20), tmp_path / "none")
