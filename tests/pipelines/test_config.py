import pytest
import yaml

from pipelines.config import ConfigError, load_config, write_resolved


def test_defaults_validate_and_overrides_apply(tmp_path):
    cfg = load_config(None, ["download.timeout_s=2.5", "synth.noise.broken=0.2", "stages=[download]"])
    assert cfg.download.timeout_s == 2.5
    assert cfg.synth.noise.broken == 0.2
    assert cfg.stages == ["download"]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("download:\n  timeot_s: 3\n")
    with pytest.raises(ConfigError, match=r"download\.timeot_s"):
        load_config(path)


def test_wrong_type_and_unknown_stage_are_clear_errors():
    with pytest.raises(ConfigError, match="download.rows_per_part"):
        load_config(None, ["download.rows_per_part=many"])
    with pytest.raises(ConfigError, match="unknown stages"):
        load_config(None, ["stages=[synth, train_everything]"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["download.timeout_s"])


def test_noise_fractions_are_checked():
    with pytest.raises(ConfigError, match="broken_kinds"):
        load_config(None, ["synth.noise.broken_kinds=[broken_gremlins]"])
    with pytest.raises(ConfigError, match="add up"):
        load_config(None, ["synth.noise.mismatched_caption=0.95"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_resolved_config_loads_again_and_records_provenance(tmp_path):
    cfg = load_config(None, ["synth.n=123"])
    path = write_resolved(cfg, tmp_path)
    text = path.read_text()
    assert "# git_sha:" in text and "# img2dataset:" in text
    assert yaml.safe_load(text)["synth"]["n"] == 123
    assert load_config(path) == cfg


def test_demo_config_is_valid():
    cfg = load_config("configs/demo.yaml")
    assert cfg.stages == ["synth", "download", "filter", "score", "dedup", "tier", "shard"]
    assert cfg.runner.kind == "ray" and [s.name for s in cfg.tier.all_subsets()] == ["top20", "top40", "top60", "top80", "top100"]


def test_shipped_train_config_is_valid():
    from curate.models.train_config import TrainConfig

    cfg = load_config("configs/train/emoji-twitter.yaml", schema=TrainConfig)
    assert cfg.steps * cfg.batch_size == cfg.samples_seen == 102400


def test_the_filter_network_trains_with_the_configured_strategy(tmp_path, monkeypatch):
    from curate.filter import run_filter
    from pipelines.run import train_filter

    seen = []
    monkeypatch.setattr("train.train.train", lambda cfg, out: seen.append(cfg) or {})
    cfg = load_config("configs/demo.yaml", ["filter.strategy={name: slip, ssl_scale: 0.5}", "filter.seed_n=10"])
    run_filter(cfg.filter, tmp_path, train_filter)
    assert seen[0].strategy.name == "slip" and seen[0].strategy.ssl_scale == 0.5
    with pytest.raises(ConfigError, match="strategy"):
        load_config("configs/demo.yaml", ["filter.strategy={name: nonsense}"])
