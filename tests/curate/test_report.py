"""The run report and `curate status`: a small real run rendered and opened in headless Chromium."""
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from curate.interval import t_interval
from curate.report.build import write_report
from pipelines.cli import main

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SMALL_RUN = ["--runner", "local", "--set", "synth.n=120", "--set", "synth.hang_s=2", "--set", "download.timeout_s=1",
             "--set", "download.rows_per_part=60", "--set", "stages=[synth,download,score,dedup,tier,shard]",
             "--set", "score.scorers=[{name: clip, model: tiny-vit-32}]", "--set", "dedup.images=false",
             "--set", "shard.samples_per_shard=32"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """synth -> download -> score (random-init tiny ViT) -> dedup -> tier -> shard, through `curate run`."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "configs/demo.yaml", "--out", str(out), *SMALL_RUN]) == 0
    return out


def _browser(tmp_path: Path):
    """Headless Debian chromium through its chromedriver; never downloads a browser."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing under CI: `make test` installs them (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("selenium is missing under CI: install the test extra (pip install -e '.[test]')")
        pytest.skip("selenium is not installed (pip install -e '.[test]')")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _expected_funnel(run: Path) -> dict[tuple[str, str], int]:
    """(stage, key) -> count, straight from the stats files."""
    expected = {}
    for stage in ("synth", "download", "score", "dedup"):
        stats = json.loads((run / stage / "stats.json").read_text())
        expected[(stage, "input_rows")] = stats["input_rows"]
        expected.update({(stage, k): v for k, v in stats["by_status"].items()})
    counts = json.loads((run / "tier" / "counts.json").read_text())
    for name, rows in counts["subsets"].items():
        expected[("tier", f"{name}:rows")] = rows
        reasons = {r for d in counts["drops"].values() for r in d}
        expected.update({("tier", f"{name}:drop:{r}"): counts["drops"][name].get(r, 0) for r in reasons})
    for manifest in run.glob("shards/*/manifest.json"):
        expected[("shard", manifest.parent.name)] = json.loads(manifest.read_text())["samples"]
    return expected


def test_report_renders_in_chromium_and_matches_the_stats_files(small_run, tmp_path):
    report = small_run / "report.html"
    assert report.exists(), "`curate run` must write report.html at the end of the run"
    html = report.read_text()
    assert len(html) < 5_000_000
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(u.startswith(("data:", "#")) for u in links), "the page must not load anything from outside"

    driver = _browser(tmp_path)
    try:
        driver.get(report.as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(height + 50, 16000))
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) > 20 and min(widths) > 0
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(r.startswith("data:") for r in resources)
        assert driver.execute_script("return document.querySelectorAll('.error').length") == 0
        cells = driver.execute_script("return Array.from(document.querySelectorAll('td[data-stage][data-key]'))"
                                      ".map(c => [c.dataset.stage, c.dataset.key, c.innerText])")
        titles = driver.execute_script("return Array.from(document.querySelectorAll('section h2')).map(h => h.innerText)")
    finally:
        driver.quit()
    shown = {(stage, key): int(text.replace(",", "")) for stage, key, text in cells if stage != "overview"}
    assert shown == _expected_funnel(small_run)
    assert titles == ["Stages", "Funnel", "Scores per tier", "Galleries", "Duplicate groups", "Against ground truth",
                      "Training", "Comparison"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_failed_stage_still_leaves_a_report(small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("report.html"))
    code = main(["run", "configs/demo.yaml", "--out", str(run), "--runner", "local", "--stages", "score",
                 "--set", "score.scorers=[{name: clip, checkpoint: missing.pt}]", "--set", "runner.part_retries=0"])
    assert code == 1 and "part-00000, part-00001" in capsys.readouterr().err
    page = (run / "report.html").read_text()
    rows = _table_rows(page[page.index('id="status"'):page.index('id="funnel"')])
    assert rows["score"][:5] == ["2", "0", "2", "0", "failed"]
    assert 'data-stage="download" data-key="ok"' in page and 'class="error"' not in page


def test_status_counts_done_failed_and_pending_parts(small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("*.tar", "report.html"))
    (run / "score" / "_done" / "part-00001.json").unlink()
    stats = json.loads((run / "download" / "stats.json").read_text())
    (run / "download" / "_done" / "part-00000.json").unlink()
    stats["failed_parts"] = ["part-00000"]
    (run / "download" / "stats.json").write_text(json.dumps(stats))

    assert main(["status", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["synth", "download", "score", "dedup", "tier", "shard"]
    assert {k: rows["download"][k] for k in ("parts", "done", "failed", "pending", "state")} == \
        {"parts": 2, "done": 1, "failed": 1, "pending": 0, "state": "failed"}
    assert rows["download"]["failed_parts"] == ["part-00000"]
    assert {k: rows["score"][k] for k in ("parts", "done", "failed", "pending", "state")} == \
        {"parts": 2, "done": 1, "failed": 0, "pending": 1, "state": "incomplete"}
    assert rows["shard"]["done"] == rows["shard"]["parts"] == 5 and rows["tier"]["state"] == "done"

    assert main(["status", str(run)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^score\s+2\s+1\s+0\s+1 incomplete", table, re.M)
    assert "download failed parts: part-00000" in table


def test_a_run_in_progress_reports_what_it_has(tmp_path, small_pool):
    """Only synth and a download that has not started: every later section says it is missing."""
    run = tmp_path / "run"
    shutil.copytree(small_pool, run / "synth")
    (run / "synth" / "stats.json").write_text(json.dumps({"input_rows": 240, "by_status": {"ok": 240}}))
    page = write_report(run).read_text()
    assert 'data-stage="synth" data-key="ok">240<' in page
    assert page.count('class="missing"') >= 6 and 'class="error"' not in page
    assert "score stage" in page and "dedup" in page


def test_training_curves_and_comparison_intervals(tmp_path):
    run = tmp_path / "run"
    for name, losses in (("top20", [4.0, 3.0, 2.5]), ("top100", [4.1, 3.5, 3.0])):
        folder = run / "train" / name
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i + 1, "samples": 64 * (i + 1), "loss": loss}) + "\n" for i, loss in enumerate(losses)))
        (folder / "summary.json").write_text(json.dumps({"model": "tiny-vit-32", "samples_seen": 192, "wall_s": 1.0}))
    scores = {"top20": [0.30, 0.34, 0.35], "top100": [0.20, 0.22, 0.27]}
    lines = ["subset,strategy,model,seed,samples_seen,top1,error"]
    lines += [f"{s},clip,tiny-vit-32,{seed},192,{v}," for s, vs in scores.items() for seed, v in enumerate(vs)]
    lines.append("top40,clip,tiny-vit-32,0,192,,subset smaller than one batch")
    (run / "results.csv").write_text("\n".join(lines) + "\n")
    (run / "versus_reference.csv").write_text(
        "subset,strategy,model,regime,metric,seeds,reference_mean,mean,difference,ci95,relative,verdict\n"
        "top20,clip,tiny-vit-32,equal_samples,top1,3,0.23,0.33,0.1,0.0332,0.435,better\n")

    page = write_report(run).read_text()
    mean, half = t_interval(scores["top20"])
    low, high = mean - half, mean + half
    assert abs(mean - 0.33) < 1e-9 and low < mean < high
    scipy_stats = pytest.importorskip("scipy.stats")
    ref = scipy_stats.t.interval(0.95, 2, loc=mean, scale=scipy_stats.sem(scores["top20"]))
    assert low == pytest.approx(ref[0], abs=1e-3) and high == pytest.approx(ref[1], abs=1e-3)
    assert f"[{low:.4g}, {high:.4g}]" in page
    assert "1 run(s) failed" in page and 'class="error"' not in page
    assert "+0.1 ± 0.0332 (better)" in page  # the paired difference from the reference cell
    training = page[page.index('id="training"'):page.index('id="comparison"')]
    assert training.count("<img") == 1 and "train/top20" in training and "finished" in training


def test_a_budget_sweep_is_plotted_and_the_oracle_share_is_said_in_words(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = ["subset,strategy,model,seed,regime,budget,samples_seen,google/retrieval/i2t/r5,status,error"]
    for budget, lift in ((256, 0.0), (512, 0.1)):
        for subset, extra in (("top100", 0.0), ("top60", 0.05), ("oracle", 0.1)):
            lines += [f"{subset},clip,m,{seed},equal_samples,{budget},{budget},{0.2 + lift + extra + 0.01 * seed},ok,"
                      for seed in range(3)]
    (run / "results.csv").write_text("\n".join(lines) + "\n")
    (run / "versus_reference.csv").write_text(
        "subset,strategy,model,regime,budget,metric,seeds,reference_mean,mean,difference,ci95,relative,verdict,"
        "oracle_gain_share,oracle_gain_share_ci95\n"
        "top60,clip,m,equal_samples,256,google/retrieval/i2t/r5,3,0.21,0.26,0.05,0.0,0.238,better,0.5,0.0\n"
        "oracle,clip,m,equal_samples,256,google/retrieval/i2t/r5,3,0.21,0.31,0.1,0.0,0.476,better,,\n"
        "top60,clip,m,equal_samples,512,google/retrieval/i2t/r5,3,0.31,0.36,0.05,0.0,0.161,better,0.42,0.1\n")
    page = write_report(run).read_text()
    comparison = page[page.index('id="comparison"'):]
    assert "Quality against compute" in comparison
    assert comparison.count("<img") == 2  # the intervals and the budget sweep
    assert "At 256 samples seen, top60 (clip) recovers 50% ± 0% of the oracle" in comparison
    assert "At 512 samples seen, top60 (clip) recovers 42% ± 10% of the oracle" in comparison
    assert "50% ± 0% of the oracle&#x27;s gain" in comparison or "50% ± 0% of the oracle's gain" in comparison


class _Rows(HTMLParser):
    """Every table row of a page as a list of cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None


def _table_rows(page: str) -> dict[str, list[str]]:
    parser = _Rows()
    parser.feed(page)
    return {row[0]: row[1:] for row in parser.rows if row}


def test_ground_truth_rates_on_a_hand_made_run(tmp_path):
    """Six uids with known fates; every rate below is worked out by hand."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    for folder in ("synth", "download", "score", "dedup", "tier/subsets"):
        (run / folder).mkdir(parents=True)
    u = [f"{i:032x}" for i in range(6)]
    pq.write_table(pa.table({
        "uid": u, "gt_noise": ["clean", "clean", "exact_duplicate", "mismatched_caption", "broken_http_404",
                               "near_duplicate"],
        "gt_dup_of": [None, None, u[0], None, None, u[1]]}), run / "synth" / "pool.parquet")
    status = ["ok", "ok", "ok", "ok", "http_error", "ok"]
    pq.write_table(pa.table({"uid": u, "status": status}), run / "download" / "part-00000.parquet")
    pq.write_table(pa.table({"uid": u, "status": status, "score_x": [0.9, 0.8, 0.7, 0.6, None, 0.5]}),
                   run / "score" / "part-00000.parquet")
    # group 0: u0 kept, its planted copy u2 removed; group 3: u3 kept, u1 and its planted copy u5 both removed
    pq.write_table(pa.table({
        "uid": u, "dup_group": [0, 3, 0, 3, None, 3], "dup_keep": [True, False, False, True, None, False],
        "dup_reason": [None, "exact_pair", "exact_image", None, None, "near_image"],
        "dup_of": [None, u[3], u[0], None, None, u[3]], "dup_similarity": [None, 0.9, 1.0, None, None, 0.96]}),
        run / "dedup" / "dup.parquet")
    pq.write_table(pa.table({"uid": [u[0], u[3]]}), run / "tier" / "subsets" / "top.parquet")
    pq.write_table(pa.table({"uid": u, "drop_top": [None, "dup", "dup", None, "http_error", "dup"]}),
                   run / "tier" / "accounting.parquet")

    page = write_report(run).read_text()
    truth = page[page.index('id="truth"'):page.index('id="training"')]
    rows = _table_rows(truth)
    assert rows["not ok after download"][:3] == ["1", "100.0%", "100.0%"]  # the one drop is the broken row
    assert rows["exact_image"] == ["1", "100.0%"]  # u0 survives for u2
    assert rows["exact_pair"] == ["1", "0.0%"] and rows["near_image"] == ["1", "0.0%"]  # u1's picture is gone
    # pictures {u0, u2}, {u1, u5}, {u3}; u2 dropped for u0 (right), u1 and u5 for u3 (wrong: u1's picture lost)
    assert rows["3"] == ["2", "50.0%", "1 (33.3%)", "33.3%"]
    assert rows["exact"] == ["1", "1", "100.0%"] and rows["near_duplicate"] == ["1", "1", "100.0%"]
    assert rows["top"][:3] == ["2", "50.0%", "50.0%"]  # u0 clean, u3 mismatched; 1 of 2 clean rows kept
    assert rows["dup"][:3] == ["3", "66.7%", "50.0%"]  # u2, u5 noisy of u1, u2, u5; 2 of 4 noisy rows
    assert 'class="error"' not in page


@pytest.mark.parametrize("command", ["report", "status"])
def test_report_and_status_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "RUN_DIR" in capsys.readouterr().out


def test_status_of_a_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_recipes_section_on_a_hand_made_run(tmp_path):
    """Seven scored rows and a balance subset at t = 2; sizes, clean shares and entry counts worked out by hand."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    run = tmp_path / "run"
    for folder in ("synth", "download/_input", "metadata", "tier/subsets"):
        (run / folder).mkdir(parents=True)
    u = [f"{i:032x}" for i in range(8)]
    pq.write_table(pa.table({"uid": u, "gt_noise": ["clean", "clean", "mismatched_caption", "clean", "clean",
                                                    "boilerplate_caption", "clean", "broken_http_404"]}),
                   run / "synth" / "pool.parquet")
    part = pa.table({"uid": u, "status": ["ok"] * 7 + ["http_error"],
                     "caption": ["a cat", "a cat", "A Cat!", "a cat on a mat", "a dog", "a dog", "a bird", "a cat"]})
    for folder in ("download/_input", "download"):
        pq.write_table(part, run / folder / "part-00000.parquet")
    (run / "metadata" / "entries.txt").write_text("cat\ndog\nfish\n")  # pool counts (ok rows): cat 4, dog 2, fish 0
    for name, picked in (("metaclip", [0, 3, 4, 5]), ("dc_no_filter", range(7)), ("top", [0])):
        pq.write_table(pa.table({"uid": [u[i] for i in picked]}), run / "tier" / "subsets" / f"{name}.parquet")
    balance = {"kind": "balance", "entries": "metadata/entries.txt", "t": 2}
    tier = {"recipes": ["datacomp_baselines", "metaclip"], "standard_fractions": [],
            "subsets": [{"name": "metaclip", "rules": [balance]}]}
    config = run / "config.resolved.yaml"
    config.write_text(yaml.safe_dump({"stages": ["synth", "download", "tier"], "tier": tier}))

    page = write_report(run).read_text()
    assert 'class="error"' not in page and '<a href="#recipes">Recipes</a>' in page
    section = page[page.index('id="recipes"'):page.index('id="galleries"')]
    sizes, counts = section.split("<h3>balance")
    rows = _table_rows(sizes)
    assert "top" not in rows and "dc_basic" in sizes  # not a recipe subset; a recipe subset the tier has not written
    assert rows["metaclip"] == ["metaclip", "balance", "4", "75.0%", "60.0%"]  # 3 of 4 clean; 3 of the 5 clean rows
    assert rows["dc_no_filter"] == ["datacomp_baselines", "none", "7", "71.4%", "100.0%"]
    # entries 3, in the pool 2 (fish: none), head 1 (cat: 4 > t), most matches 4 before and 2 after (cat and dog)
    assert _table_rows(counts)["metaclip"] == ["metadata/entries.txt", "2", "3", "2", "1", "4", "2"]
    assert counts.count("<img") == 1

    tier.pop("recipes")
    tier["subsets"][0]["rules"] = [{"kind": "caption_words", "min_words": 2}]
    config.write_text(yaml.safe_dump({"stages": ["synth", "download", "tier"], "tier": tier}))
    page = write_report(run).read_text()
    assert 'id="recipes"' not in page and 'class="error"' not in page


def test_the_tier_table_marks_evaluation_only_subsets():
    from curate.report.funnel import _tier_table

    counts = {"uids": 10, "subsets": {"top100": 8, "oracle": 5}, "evaluation_only": ["oracle"],
              "drops": {"top100": {"duplicate_exact_image": 2}, "oracle": {"ground_truth_not_clean": 5}}}
    html = _tier_table(counts)
    assert "oracle (evaluation only)" in html and "top100 (evaluation only)" not in html
    assert "not a way to curate a real pool" in html
    assert "evaluation only" not in _tier_table({**counts, "evaluation_only": []})
