"""benchmarks/quality_verifier_pools.py: a verifier judged on a finished pool gives the stage's own figures."""
import json
import sys

from benchmarks import quality_verifier_pools
from curate.io import read_json
from curate.synthetic.quality import dedup_quality
from pipelines.cli import main

SMALL_POOL = ["--runner", "local", "--set", "synth.n=240", "--set", "synth.hang_s=2", "--set", "download.timeout_s=1",
              "--set", "download.rows_per_part=120", "--set", "stages=[synth,download,score,dedup]",
              "--set", "score.scorers=[{name: clip, model: tiny-vit-32}]", "--set", "synth.noise.near_duplicate=0.2",
              "--set", "dedup.image_rotations=[4,-4]"]


def test_the_pools_figures_are_the_stages_own(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["run", "configs/demo.yaml", "--out", str(run), *SMALL_POOL]) == 0
    stage = dedup_quality(run, run / "synth" / "pool.parquet")
    assert stage["by_reason"]["near_image"]["dropped"] > 0  # the pixel check and the verifier found copies

    monkeypatch.setattr(sys, "argv", ["quality_verifier_pools.py", "--run", str(run), "--bar", "0.99",
                                      "--bar", "0.5", "--out", str(tmp_path / "out")])
    quality_verifier_pools.main()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == read_json(tmp_path / "out" / "quality_verifier_pools.json")
    ours = line["results"]["copy_verifier.pt @ 0.99"]["run"]
    assert (ours["recall"], ours["pictures_lost"], ours["precision"]) == (
        stage["recall"], stage["pictures_lost"], stage["precision"])  # the run's own bar: the stage's decisions
    assert ours["recall_by_edit"] == {e: c["recall"] for e, c in stage["by_edit"].items()}
    looser = line["results"]["copy_verifier.pt @ 0.5"]["run"]
    assert looser["recall"] >= ours["recall"]  # a looser bar drops no fewer copies
    assert list((run / "dedup").glob("verifier_pairs-*.npz"))  # the aligned pairs are kept for the next weights
    assert list((run / "dedup").glob("verifier_pairs-*-turned-4.npz"))  # and the turned ones

    monkeypatch.setattr(sys, "argv", ["quality_verifier_pools.py", "--run", str(run), "--rotations", "4,-4",
                                      "--rotations", "", "--rotation-mirror", "0.75", "--rotation-mirror", "0.2"])
    quality_verifier_pools.main()
    turns = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    turned, strict, unturned = (turns[f"copy_verifier.pt @ 0.99 turned {t} mirror {share}"]["run"]
                                for t, share in (("[4.0, -4.0]", 0.75), ("[4.0, -4.0]", 0.2), ("[]", 0.75)))
    assert turned == ours  # the run's own turns and the stage's share: the stage's figures again
    assert unturned["recall"] <= strict["recall"] <= turned["recall"]  # turns only add links; a smaller share fewer

    monkeypatch.setattr(sys, "argv", ["quality_verifier_pools.py", "--run", str(run), "--bar", "0.99",
                                      "--colour-max", "10", "--colour-max", "255"])
    quality_verifier_pools.main()
    guards = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    strict, open_ = (guards[f"copy_verifier.pt @ 0.99 colour {g}"]["run"] for g in (10.0, 255.0))
    assert strict["recall"] <= open_["recall"]  # the colour guard only ever stops pairs
