"""The stage contract: one registry in pipeline order that the config, the CLI, `curate status` and the funnel read."""
import yaml

from curate.registry import BY_NAME, NAMES, STEPS
from curate.report.funnel import overview
from curate.report.status import run_status
from curate.stage import Step
from pipelines.cli import build_parser
from pipelines.config import PipelineConfig


def test_the_registry_lists_each_stage_once_in_pipeline_order():
    assert NAMES == ("synth", "download", "filter", "score", "dedup", "tier", "shard")
    assert all(isinstance(step, Step) and step.directory and step.config for step in STEPS)
    for step in STEPS:  # what a stage reads comes from an earlier stage
        assert step.reads is None or NAMES.index(step.reads[0]) < NAMES.index(step.name)


def test_config_and_cli_are_built_from_the_registry():
    fields = list(PipelineConfig.model_fields)
    assert fields[-len(NAMES):] == list(NAMES)
    assert all(PipelineConfig.model_fields[s.name].annotation is s.config for s in STEPS)
    assert PipelineConfig().stages == [s.name for s in STEPS if s.default]
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {s.name for s in STEPS if s.command} <= set(commands)


def test_status_rows_follow_the_registry(tmp_path):
    (tmp_path / "config.resolved.yaml").write_text(yaml.safe_dump({"stages": list(NAMES)}))
    rows = run_status(tmp_path)
    assert [r["stage"] for r in rows] == list(NAMES)
    assert all(r["state"] == "not started" for r in rows)


def test_the_funnel_takes_each_counting_stage_line_from_its_step():
    stats = {"synth": {"input_rows": 10, "by_status": {"ok": 10}},
             "download": {"input_rows": 10, "by_status": {"ok": 8, "http_error": 2}},
             "score": {"input_rows": 10, "by_status": {"ok": 7}, "scored_rows": 7},
             "dedup": {"input_rows": 10, "by_status": {"kept": 6}}}
    assert overview(stats, None, {}) == [("pool rows", "pool", 10), ("downloaded (ok)", "downloaded", 8),
                                         ("scored", "scored", 7), ("kept by dedup", "dedup_kept", 6)]
    assert [s.name for s in STEPS if s.counts_rows] == list(stats)
    assert BY_NAME["shard"].directory == "shards"
