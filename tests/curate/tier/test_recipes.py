"""Curation recipes: DataComp's baseline rules and MetaCLIP's balancing as tier rules, metadata entries, the
`curate metadata` command and the recipe configs."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.schema import make_uid
from curate.tier.entries import EntryMatcher, normalise
from curate.tier.metadata import MetadataConfig, build_metadata, head_tail, ngram_entries
from curate.tier.tier import TierConfig, TierError, run_tier, uid_halves
from curate.tier.tier_rules import (Balance, CaptionWords, ImageSize, Language, NearestClusters, RuleInputs, SubsetConfig,
                               TextMatch, evaluate, recipe_subsets)
from pipelines.cli import main
from pipelines.compare import CompareConfig
from pipelines.config import load_config

from tests.conftest import ROOT



def _inputs(tmp_path, columns: dict, **kw) -> RuleInputs:
    """RuleInputs over `columns` (strings as Arrow, numbers as float64), every row scored, uids from row numbers."""
    n = len(next(iter(columns.values())))
    uids = pa.array([make_uid(f"http://x/{i}", "c") for i in range(n)])
    cols = {k: pa.chunked_array([pa.array(v, pa.string())]) if isinstance(v[0], str) else np.asarray(v, np.float64)
            for k, v in columns.items()}
    return RuleInputs(cols, np.ones(n, dtype=bool), "score_s", uid_halves(uids)[:, 0], lambda p: tmp_path / p, **kw)


def _reasons(passes: np.ndarray, reason) -> list:
    """Per row: None when it passes, else its drop reason."""
    per_row = reason.to_pylist() if not isinstance(reason, str) else [reason] * len(passes)
    return [None if ok else r for ok, r in zip(passes.tolist(), per_row)]


def test_language_caption_and_image_size_rules_keep_drop_and_name_the_first_failure(tmp_path):
    inputs = _inputs(tmp_path, {"caption_language": ["en", "de", "en", "fr"], "caption_words": [3, 3, 1, 2],
                                "caption_chars": [20, 20, 9, 5], "width": [300, 199, 600, 900],
                                "height": [200, 400, 150, 250]})
    inputs.columns["caption_language"] = pa.chunked_array([pa.array(["en", "de", None, "fr"])])
    assert _reasons(*evaluate(Language(keep=["en"]), inputs)[:2]) == [
        None, "caption_language_not_en", "caption_language_not_en", "caption_language_not_en"]
    assert evaluate(Language(keep=["en", "fr"]), inputs)[0].tolist() == [True, False, False, True]
    assert _reasons(*evaluate(CaptionWords(min_words=2, min_chars=6), inputs)[:2]) == [
        None, None, "caption_under_2_words", "caption_under_6_chars"]
    assert _reasons(*evaluate(ImageSize(min_side=200, max_aspect=3), inputs)[:2]) == [
        None, "image_side_under_200px", "image_side_under_200px", "image_aspect_over_3"]
    inputs.columns["width"][0] = np.nan  # not downloaded: no size, never passes
    assert evaluate(ImageSize(min_side=0), inputs)[0].tolist() == [False, True, True, True]


def test_the_score_stage_language_column_is_fasttext_lid_offline():
    from curate.score.heuristics import COLUMNS, caption_signals

    assert COLUMNS["caption_language"] == pa.string()
    languages = [caption_signals(c)["caption_language"] for c in
                 ["a red circle on a striped background", "ein Hund läuft im Park", "un chat noir sur le toit"]]
    assert languages == ["en", "de", "fr"]


def test_entry_matching_is_whole_words_after_normalising_and_counts_a_caption_once(tmp_path):
    matcher = EntryMatcher(["red apple", "apple", "pie", "café", "a red apple pie", "pie un café"])
    captions = pa.chunked_array([pa.array(["A red Apple-pie!", "pineapple", None, "un Café", "apple, apple"])])
    rows, entries = matcher.match(captions)  # "pie un café" would span two captions: not a match
    assert list(zip(rows.tolist(), entries.tolist())) == [(0, 0), (0, 1), (0, 2), (0, 4), (3, 3), (4, 1)]
    assert normalise(pa.array(["  Hello,  World!! "])).to_pylist() == ["hello world"]
    (tmp_path / "classes.txt").write_text("Pie\n\nred apple\npie\n")
    inputs = _inputs(tmp_path, {"caption": ["a red apple", "an apple", "cherry pie", "pear"]})
    assert _reasons(*evaluate(TextMatch(entries=Path("classes.txt")), inputs)[:2]) == [
        None, "caption_not_in_classes", None, "caption_not_in_classes"]


def _balance_pool(tmp_path, n_head: int = 2000, n_tail: int = 50, n_both: int = 20, n_none: int = 30):
    captions = (["a common thing"] * n_head + ["a rare thing"] * n_tail + ["common and rare"] * n_both
                + ["nothing here"] * n_none)
    (tmp_path / "entries.txt").write_text("common\nrare\nunused\n")
    return _inputs(tmp_path, {"caption": captions}), captions


def test_balance_samples_head_entries_at_t_over_count_keeps_the_tail_and_drops_rows_without_an_entry(tmp_path):
    inputs, captions = _balance_pool(tmp_path)
    passes, reason, _ = evaluate(Balance(entries=Path("entries.txt"), t=200, seed=0), inputs)
    reasons = np.array(_reasons(passes, reason), dtype=object)
    head, tail, both, none = (np.array([c == k for c in captions]) for k in
                              ("a common thing", "a rare thing", "common and rare", "nothing here"))
    assert passes[tail].all() and passes[both].all()  # a tail entry keeps all its pairs; any entry's pick keeps a pair
    assert (reasons[none] == "balance_no_entry").all()
    kept_head = int(passes[head].sum())  # "common" is in 2,020 captions: each kept with probability 200 / 2,020
    assert 150 <= kept_head <= 250
    assert set(reasons[head & ~passes]) == {"balance_not_sampled_t200"}
    t_above_count = evaluate(Balance(entries=Path("entries.txt"), t=5000, seed=0), inputs)[0]
    assert t_above_count.sum() == len(captions) - none.sum()  # every entry is tail: every matched pair stays


def test_balance_is_deterministic_for_a_seed_and_differs_between_seeds(tmp_path):
    inputs, _ = _balance_pool(tmp_path)
    rule = Balance(entries=Path("entries.txt"), t=200, seed=7)
    first = evaluate(rule, inputs)[0]
    again = evaluate(rule, _balance_pool(tmp_path)[0])[0]  # fresh inputs, no shared cache
    other = evaluate(Balance(entries=Path("entries.txt"), t=200, seed=8), inputs)[0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other) and abs(int(first.sum()) - int(other.sum())) < 80


def test_nearest_clusters_keeps_the_clusters_of_the_target_images(tmp_path):
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.normal(size=(32, 3)))[0].T  # three orthogonal unit vectors
    groups = np.repeat([0, 1, 2], [100, 100, 200])
    pool = directions[groups] + 0.05 * rng.normal(size=(400, 32))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    pool[3] = np.nan  # not scored
    targets = directions[[0, 0, 1]] + 0.05 * rng.normal(size=(3, 32))
    seen = []

    def embed(path):
        seen.append(path)
        return targets

    inputs = _inputs(tmp_path, {"score_s": np.zeros(400)}, embed_pairs=embed)
    inputs.columns["image_embedding"] = pool.astype(np.float16)
    passes, reason, _ = evaluate(NearestClusters(target=Path("seed"), cluster_size=100), inputs)
    assert seen == [tmp_path / "seed"] and reason == "not_in_clusters_near_seed"
    assert passes.tolist() == (groups < 2).tolist()[:3] + [False] + (groups < 2).tolist()[4:]
    half = evaluate(NearestClusters(target=Path("seed"), cluster_size=100, fraction=0.2), inputs)
    assert half[0].sum() == 99 and half[1] == "not_in_20pct_clusters_near_seed"  # the densest: two targets in 99 rows


def test_metadata_entries_from_a_tiny_caption_set(tmp_path):
    captions = pa.array(["new york city at night", "new york pizza", "a red car", "a red apple", "new york",
                         "the red car", "a big apple", "", None, "the the the"])
    # words seen 3 times or more, most frequent first ("the" 4 times), then the bigrams seen as often
    assert ngram_entries(captions, min_count=3, min_pmi=-10) == ["the", "a", "new", "red", "york", "new york"]
    # PMI: new york and red car 2.5, a red 2.1 ("a" goes with anything), the the 1.5
    assert ngram_entries(captions, min_count=2, min_pmi=2.3)[-2:] == ["new york", "red car"]
    assert ngram_entries(captions, min_count=2, min_pmi=2.0)[-3:] == ["new york", "a red", "red car"]
    (tmp_path / "classes.txt").write_text("Red Car\nzebra\n")
    built = build_metadata(captions, MetadataConfig(min_count=3, min_pmi=2.3, class_names=[tmp_path / "classes.txt"]),
                           tmp_path)
    written = (tmp_path / "metadata" / "entries.txt").read_text().splitlines()
    assert written == built["entries"] == ["the", "a", "new", "red", "york", "new york", "red car", "zebra"]
    assert (tmp_path / "metadata" / "class_names.txt").read_text().splitlines() == ["red car", "zebra"]
    counts = dict(line.split("\t") for line in (tmp_path / "metadata" / "counts.tsv").read_text().splitlines())
    assert counts["the"] == "2" and counts["new york"] == "3" and counts["zebra"] == "0"
    split = head_tail(built["counts"], built["rows"], built["matched"], t=2, n_captions=len(captions))
    assert split["head_entries"] == 5 and split["unmatched_entries"] == 1 and split["captions_without_entry"] == 2
    assert 0 < split["expected_balanced_captions"] < 8


def _run_dir(tmp_path, rows: list[dict], embeddings: np.ndarray | None = None) -> Path:
    """A run as the tier stage reads it: one downloaded and scored part with these columns (and float16
    image embeddings, as the score stage stores them)."""
    run = tmp_path / "run"
    table = pa.Table.from_pylist([{"uid": make_uid(f"http://x/{i}", r["caption"]), "status": "ok", **r}
                                  for i, r in enumerate(rows)])
    if embeddings is not None:
        flat = pa.array(embeddings.astype(np.float16).reshape(-1))
        table = table.append_column("image_embedding", pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]))
    for stage in ("download/_input", "score"):
        (run / stage).mkdir(parents=True)
        pq.write_table(table, run / stage / "part-00000.parquet")
    return run


def test_curate_metadata_writes_the_entries_and_prints_counts_and_the_split(tmp_path, capsys):
    run = _run_dir(tmp_path, [{"caption": c} for c in ["skin tone", "skin tone medium", "a cat", "a cat face"] * 3])
    (tmp_path / "classes.txt").write_text("dog\n")
    assert main(["metadata", "--out", str(run), "--t", "4", "--min-count", "4",
                 "--class-names", str(tmp_path / "classes.txt"), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[1:4]] == [["6", "head", "a"], ["6", "head", "cat"], ["6", "head", "skin"]]
    split = json.loads(lines[-1])
    entries = (run / "metadata" / "entries.txt").read_text().splitlines()
    assert entries == ["a", "cat", "skin", "tone", "dog"] and split["entries"] == 5 and len(lines) == 5
    assert split["head_entries"] == 4 and split["tail_entries"] == 0 and split["unmatched_entries"] == 1
    assert main(["metadata", "--out", str(run), "--class-names", str(tmp_path / "missing.txt")]) == 2


def test_recipes_load_replace_by_name_and_unknown_names_fail():
    cfg = TierConfig(recipes=["datacomp_baselines", "metaclip"], standard_fractions=[])
    names = [s.name for s in cfg.all_subsets()]
    assert names == ["dc_no_filter", "dc_basic", "dc_clip30", "dc_text", "dc_image", "dc_image_clip30",
                     "dc_basic_clip30", "metaclip"]
    basic = {r.kind: r for r in next(s for s in recipe_subsets("datacomp_baselines") if s.name == "dc_basic").rules}
    assert (basic["language"].keep, basic["caption_words"].min_words, basic["caption_words"].min_chars,
            basic["image_size"].min_side, basic["image_size"].max_aspect) == (["en"], 2, 6, 200, 3)
    cfg = TierConfig(recipes=["metaclip"], subsets=[SubsetConfig(name="metaclip", rules=[]), SubsetConfig(name="own")])
    assert [(s.name, s.rules) for s in cfg.all_subsets()][-2:] == [("metaclip", []), ("own", [])]
    for bad in ("nope", "../recipes/metaclip"):
        with pytest.raises(ValueError, match="unknown recipe.*datacomp_baselines"):
            TierConfig(recipes=[bad])
    assert (ROOT / "configs" / "recipes").resolve() == (ROOT / "curate" / "recipes").resolve()  # the package's files


def test_the_recipes_compare_config_loads_with_every_recipe_subset_in_its_grid():
    cfg = load_config(ROOT / "configs" / "compare" / "recipes.yaml", schema=CompareConfig)
    tier = cfg.pipeline.tier
    subsets = [s.name for s in tier.all_subsets()]
    assert cfg.grids["recipes"].subsets == subsets and len(cfg.grids["recipes"].seeds) == 3
    assert cfg.reference.subset == "dc_no_filter" and [e.where for e in cfg.eval_sets] == [{"vendor": "google"}]
    assert all(p.exists() for p in tier.metadata.class_names)


def test_recipes_run_through_the_tier_stage_with_the_scorer_embedding_the_targets(tmp_path):
    """Both recipes on a small run: tier.metadata builds the entries, the image-based rule embeds its target
    folder with the run's scorer (a random-init tiny ViT) and finds the pool rows stored with those images'
    embeddings, every uid is in each subset or has one first reason, and a rerun is up to date."""
    import torch
    from PIL import Image

    from curate.models import checkpoint
    from curate.models.clip import create
    from curate.score.score import ScoreConfig, ScorerConfig, ScoreStage

    run = tmp_path / "run"
    torch.manual_seed(0)
    checkpoint.save(run / "model.pt", create("tiny-vit-32"), None, 0, "tiny-vit-32", {})
    score = ScoreConfig(scorers=[ScorerConfig(name="s", checkpoint=Path("model.pt"))])
    seed = run / "synth" / "seed_pairs"
    (seed / "img").mkdir(parents=True)
    for i, colour in enumerate([(250, 20, 20), (240, 30, 10)]):
        Image.new("RGB", (64, 64), colour).save(seed / "img" / f"{i}.png")
    pq.write_table(pa.table({"path": ["img/0.png", "img/1.png"], "caption": ["red", "red"]}), seed / "pairs.parquet")
    stage = ScoreStage(score, run / "download", run)
    stage.setup()
    near = stage.embed_image_files([seed / "img" / "0.png"])[0]
    rng = np.random.default_rng(0)
    away = rng.normal(size=len(near))
    away -= (away @ near) * near  # a direction orthogonal to the target image's embedding
    far = away / np.linalg.norm(away) + 0.05 * rng.normal(size=(150, len(near)))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    captions = ["a cat on a mat", "ein Hund", "cat", "a red apple", "the dog and a cat"] * 30
    rows = [{"caption": c, "caption_language": "de" if c == "ein Hund" else "en", "caption_words": len(c.split()),
             "caption_chars": len(c), "width": 64 if i % 7 else 300, "height": 64 if i % 7 else 250,
             "score_s": float(i)}
            for i, c in enumerate(captions * 2)]
    _run_dir(tmp_path, rows, np.concatenate([np.repeat(near[None], 150, 0), far]))
    (tmp_path / "classes.txt").write_text("dog\n")
    tier = TierConfig(standard_fractions=[], recipes=["datacomp_baselines", "metaclip"],
                      metadata=MetadataConfig(min_count=2, class_names=[tmp_path / "classes.txt"]),
                      subsets=[SubsetConfig(name="metaclip", rules=[Balance(entries=Path("metadata/entries.txt"),
                                                                            t=20)])])
    with pytest.raises(TierError, match="nearest_clusters rule embeds its target"):
        run_tier(tier, run)
    counts = run_tier(tier, run, score)
    for name, kept in counts["subsets"].items():
        assert kept + sum(counts["drops"][name].values()) == counts["uids"] == 300
    accounting = pq.read_table(run / "tier" / "accounting.parquet").to_pylist()
    by_uid = {r["uid"]: r for r in accounting}
    uids = [make_uid(f"http://x/{i}", r["caption"]) for i, r in enumerate(rows)]
    image_based = [by_uid[u]["drop_dc_image"] for u in uids]
    kept_image = [i for i, r in enumerate(image_based) if r is None]
    assert kept_image and all(i < 150 for i in kept_image)  # only rows stored with the target image's embedding
    assert {image_based[i] for i in range(150, 300)} - {"caption_language_not_en", "caption_under_2_words"} == {
        "not_in_clusters_near_seed_pairs"}
    assert by_uid[uids[1]]["drop_dc_basic"] == "caption_language_not_en"
    assert by_uid[uids[2]]["drop_dc_basic"] == "caption_under_2_words"
    assert by_uid[uids[5]]["drop_dc_basic"] == "image_side_under_200px" and by_uid[uids[0]]["drop_dc_basic"] is None
    assert by_uid[uids[3]]["drop_dc_text"] == "caption_not_in_class_names" and by_uid[uids[4]]["drop_dc_text"] is None
    assert counts["drops"]["dc_clip30"] == {"not_top_30pct_score_s": 210}
    entries = (run / "metadata" / "entries.txt").read_text().splitlines()
    assert {"cat", "the dog", "dog"} <= set(entries)  # the pool's words and bigrams, and the class name
    assert set(counts["drops"]["metaclip"]) == {"balance_not_sampled_t20"}  # every entry here is head (60+ captions)
    assert len(list((run / "tier" / "targets").glob("*.npy"))) == 1
    assert run_tier(tier, run, score) == counts and (run / "tier" / "_done.json").exists()
