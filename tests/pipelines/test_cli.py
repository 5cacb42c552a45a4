import json

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.runners import PartsFailed


@pytest.mark.parametrize("args", [[], ["run"], ["synth"], ["download"], ["train"], ["eval"]])
def test_every_command_explains_itself(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: curate" in text and len(text) > 300


def test_unknown_config_key_fails_before_any_work(tmp_path, capsys):
    code = main(["run", "configs/demo.yaml", "--out", str(tmp_path / "run"), "--set", "download.thread=4"])
    assert code == 2
    assert "download.thread" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_input_column_is_a_clear_error(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"link": ["http://x/"], "caption": ["c"]}), tmp_path / "in.parquet")
    code = main(["download", "--input", str(tmp_path / "in.parquet"), "--out", str(tmp_path), "--runner", "local"])
    assert code == 2 and "lacks columns ['url']" in capsys.readouterr().err


def test_run_synth_and_download_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "configs/demo.yaml", "--out", str(out), "--runner", "local", "--set", "synth.n=120",
                 "--stages", "synth,download",
                 "--set", "synth.hang_s=3", "--set", "download.timeout_s=2", "--set", "download.rows_per_part=50"])
    assert code == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / "download" / "stats.json").read_text())
    assert stats["input_rows"] == 120 == sum(stats["by_status"].values())
    assert f"{stats['by_status']['ok']:>9}" in printed and "= input rows" in printed
    assert (out / "config.resolved.yaml").exists() and len(list((out / "download" / "shards").glob("*.tar"))) == 3
    assert (out / "report.html").exists()
    (out / "report.html").unlink()
    assert main(["run", "configs/demo.yaml", "--out", str(out), "--runner", "local", "--stages", "download",
                 "--no-report", "--set", "synth.n=120", "--set", "synth.hang_s=3", "--set", "download.timeout_s=2",
                 "--set", "download.rows_per_part=50"]) == 0  # resumes: every part is done
    assert not (out / "report.html").exists()


def test_synth_then_download_as_separate_commands(tmp_path, capsys):
    assert main(["synth", "--n", "40", "--seed", "2", "--out", str(tmp_path / "pool"), "--set", "hang_s=2"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 40
    code = main(["download", "--input", str(tmp_path / "pool" / "pool.parquet"), "--serve", str(tmp_path / "pool"),
                 "--out", str(tmp_path / "dl"), "--runner", "local", "--set", "download.timeout_s=2"])
    assert code == 0
    assert "download funnel" in capsys.readouterr().out


def test_an_error_in_the_middle_of_a_run_exits_1_and_names_its_stage(tmp_path, capsys, monkeypatch):
    """A ValueError after synth has run is a failed run, not bad config: exit 1, the stage named."""
    def lost_input(cfg, stage_dir):
        raise ValueError("the pool went away")

    monkeypatch.setattr("curate.download.download.split_input", lost_input)
    out = tmp_path / "run"
    code = main(["run", "configs/demo.yaml", "--out", str(out), "--runner", "local", "--stages", "synth,download",
                 "--set", "synth.n=20", "--no-report"])
    assert code == 1
    assert "stage 'download' failed: ValueError: the pool went away" in capsys.readouterr().err
    assert (out / "synth" / "pool.parquet").exists()  # the finished stage is kept


@pytest.mark.parametrize("error, message", [
    (OSError("disk full"), "stage 'download' failed: OSError: disk full\nfinished stages and parts are kept"),
    (PartsFailed("download", {"part-00001": "Traceback ..."}),
     "stage 'download' failed: 1 part(s) failed for good: part-00001\nrerun the same command to retry them"),
])
def test_a_stage_that_raises_mid_run_is_named_with_exit_1(error, message, tmp_path, capsys, monkeypatch):
    def broken(*args):
        raise error

    monkeypatch.setattr("curate.download.download.run_download", broken)
    out = tmp_path / "run"
    code = main(["run", "configs/demo.yaml", "--out", str(out), "--runner", "local", "--stages", "synth,download",
                 "--set", "synth.n=20", "--no-report"])
    assert code == 1
    assert f"curate run: {message}" in capsys.readouterr().err
    assert (out / "synth" / "pool.parquet").exists()


@pytest.mark.parametrize("command, needed", [
    (["run", "configs/demo.yaml", "--stages", "shard"], "tier"),
    (["shard"], "tier"),
    (["run", "configs/demo.yaml", "--stages", "tier"], "download"),
    (["run", "configs/demo.yaml", "--stages", "dedup,tier"], "score"),
    (["score"], "download"),
    (["run", "configs/demo.yaml", "--stages", "download"], "synth"),
    (["compare", "configs/compare/emoji.yaml", "--set", "pipeline.stages=[shard]"], "tier"),
])
def test_a_stage_without_its_earlier_stage_fails_before_any_work(command, needed, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert main([*command, "--out", str(out)]) == 2
    assert f"run the {needed} stage first" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_run_checks_a_given_input_and_shard_subsets_before_any_work(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"link": ["http://x/"], "caption": ["c"]}), tmp_path / "in.parquet")
    out = tmp_path / "run"
    assert main(["run", "configs/demo.yaml", "--out", str(out), "--stages", "download",
                 "--set", f"download.input={tmp_path / 'in.parquet'}"]) == 2
    assert "lacks columns ['url']" in capsys.readouterr().err and not out.exists()
    assert main(["run", "configs/demo.yaml", "--out", str(out), "--stages", "synth,download,tier,shard",
                 "--set", "shard.subsets=[top99]"]) == 2
    assert "shard.subsets names ['top99']" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("args", [
    ["train", "configs/train/emoji-twitter.yaml", "--set", "data.pairs=nowhere"],
    ["eval", "--checkpoint", "nowhere.pt", "--eval-set", "."],
    ["synth", "--from-pairs", "nowhere"],
])
def test_missing_inputs_fail_before_any_work(args, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*args, *(["--out", str(out)] if args[0] != "eval" else [])]) == 2
    assert "nowhere" in capsys.readouterr().err and not out.exists()
