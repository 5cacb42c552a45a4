import json
import math

import numpy as np
import pytest
import torch

from curate.models import checkpoint
from curate.models.clip import create, tokenizer
from curate.models.train_config import TrainConfig
from tests.train.test_train import _cfg, _pairs_dir
from train.evaluate import evaluate
from train.strategies import Phase, ShortText, make_strategy, nt_xent, plan_phases, swap_one_token
from train.train import cosine_lr, train

STRATEGIES = {
    "clip": {"name": "clip"},
    "negclip": {"name": "negclip"},
    "clip_aug": {"name": "clip_aug", "augment": {"kind": "stacked_randaugment"}},
    "slip": {"name": "slip", "head_hidden_dim": 32, "head_out_dim": 16},
    "flip": {"name": "flip", "mask_ratio": 0.75, "finetune_samples": 16},
    "clipa": {"name": "clipa", "context_length": 6, "text_policy": "content_words", "finetune_samples": 16},
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _pairs_dir(tmp_path_factory.mktemp("pairs"), n=24)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_strategy_trains_and_its_checkpoint_evaluates(name, pairs, tmp_path):
    cfg = _cfg({"pairs": str(pairs)}, samples_seen=48, strategy=STRATEGIES[name], checkpoint_every_steps=2)
    summary = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 3 and summary["strategy"] == cfg.strategy.name
    assert all(math.isfinite(x["loss"]) for x in lines)
    expected_phases = ["main", "main", "finetune"] if "finetune_samples" in STRATEGIES[name] else ["main"] * 3
    assert [x["phase"] for x in lines] == expected_phases
    result = evaluate(tmp_path / "run" / "checkpoint.pt", pairs, ["shape"])
    assert result["n"] == 24 and 0 <= result["retrieval"]["i2t"]["r1"] <= 1
    state = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    assert set(state["state_dict"]) == set(create("tiny-vit-32").state_dict())
    assert bool(state["strategy_state"]) == (name == "slip")


@pytest.mark.parametrize("kind", ["crop_flip", "randaugment", "stacked_randaugment"])
def test_each_augmentation_gives_random_views_of_the_model_size(kind):
    from PIL import Image

    from curate.models.train_config import AugmentConfig
    from train.augment import augment_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    transform = augment_transform(AugmentConfig(kind=kind), 32)
    torch.manual_seed(0)
    views = [transform(image) for _ in range(4)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert not all(torch.equal(views[0], v) for v in views[1:])


def test_the_clip_crop_matches_open_clips_transform():
    """Boxes inside the image at 90-100% of its area (aspect 3/4-4/3 permitting), uint8 out, and over the
    whole image our crop + batch normalisation equals open_clip's eval transform."""
    import open_clip
    from PIL import Image

    from train.augment import ClipCrop, normalize_batch

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    crop = ClipCrop(32)
    torch.manual_seed(0)
    boxes = [crop.box(64, 64) for _ in range(500)]
    areas = [(r - x) * (b - y) / 64**2 for x, y, r, b in boxes]
    assert all(0 <= x < r <= 64 and 0 <= y < b <= 64 for x, y, r, b in boxes)
    assert min(areas) >= 0.88 and max(areas) <= 1 and len(set(boxes)) > 10
    view = crop(image)
    assert view.dtype == torch.uint8 and view.shape == (3, 32, 32)
    whole = ClipCrop(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    reference = open_clip.image_transform(64, is_train=False)(image)
    assert torch.allclose(normalize_batch(whole(image)[None])[0], reference, atol=1e-5)


def test_a_finished_run_is_kept_and_slip_head_resumes(pairs, tmp_path):
    cfg = _cfg({"pairs": str(pairs)}, samples_seen=32, strategy=STRATEGIES["slip"])
    first = train(cfg, tmp_path / "run")
    head = checkpoint.read(tmp_path / "run" / "checkpoint.pt")["strategy_state"]
    assert any(k.endswith("running_mean") for k in head)
    again = train(cfg, tmp_path / "run")
    assert again == first

    clip_cfg = cfg.model_copy(update={"strategy": TrainConfig.model_validate(
        {"data": {"pairs": str(pairs)}}).strategy})
    old = train(clip_cfg, tmp_path / "old")
    state = checkpoint.read(tmp_path / "old" / "checkpoint.pt")
    del state["train_config"]["strategy"]  # as saved before strategies existed
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    assert train(clip_cfg, tmp_path / "old") == old
    with pytest.raises(ValueError, match="another config"):
        train(cfg.model_copy(update={"strategy": TrainConfig.model_validate(
            {"data": {"pairs": str(pairs)}, "strategy": {"name": "clip"}}).strategy}), tmp_path / "run")


def _tokens_into_transformer(model, images):
    seen = []
    hook = model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model.encode_image(images)
    hook.remove()
    return seen[0]


def test_flip_drops_patches_in_training_only():
    cfg = _cfg({"pairs": "x"}, model="tiny-vit-64", strategy={"name": "flip", "mask_ratio": 0.5})
    model = create("tiny-vit-64")
    strategy = make_strategy(cfg, model)
    images = torch.randn(2, 3, 64, 64)
    masked = plan_phases(cfg)[0]
    with strategy.applied(model, masked):
        model.train()
        assert _tokens_into_transformer(model, images) == 1 + 32
        model.eval()
        assert _tokens_into_transformer(model, images) == 1 + 64
    model.train()
    assert _tokens_into_transformer(model, images) == 1 + 64


def test_clipa_runs_at_a_quarter_of_the_tokens_and_trains_the_full_size_embeddings():
    cfg = _cfg({"pairs": "x"}, model="tiny-vit-64", strategy={"name": "clipa", "context_length": 8})
    model = create("tiny-vit-64")
    strategy = make_strategy(cfg, model)
    pos, text_pos = model.visual.positional_embedding, model.positional_embedding
    phase = plan_phases(cfg)[0]
    texts = strategy.tokenizer(phase)(["a grinning face with smiling eyes and a big open mouth"])
    assert texts.shape == (1, 8)
    with strategy.applied(model, phase):
        assert _tokens_into_transformer(model, torch.randn(2, 3, 32, 32)) == 1 + 16
        loss = model.encode_image(torch.randn(2, 3, 32, 32)).sum() + model.encode_text(texts).sum()
        keys = set(checkpoint.plain_state_dict(model))
    loss.backward()
    assert model.visual.positional_embedding is pos and pos.shape == (65, 192) and text_pos.shape == (16, 192)
    assert pos.grad[1:].abs().sum(1).gt(0).all() and text_pos.grad[:8].abs().sum() > 0
    assert keys == set(model.state_dict())
    assert _tokens_into_transformer(model, torch.randn(2, 3, 64, 64)) == 1 + 64


def test_short_text_drops_function_words_before_truncating():
    tokenize = tokenizer("tiny-vit-32")
    plain = ShortText(tokenize, 6, "truncate")(["a face with tears of joy"])[0]
    content = ShortText(tokenize, 6, "content_words")(["a face with tears of joy"])[0]
    assert plain.tolist() == tokenize(["a face with tears"], context_length=6)[0].tolist()
    assert content.tolist() == tokenize(["face tears joy"], context_length=6)[0].tolist()


def test_finetune_phase_has_its_own_schedule():
    cfg = _cfg({"pairs": "x"}, samples_seen=160, batch_size=16, lr=1e-3, warmup_steps=2,
               strategy={"name": "clipa", "finetune_samples": 32, "finetune_lr_scale": 0.5})
    main, finetune = plan_phases(cfg)
    assert (main.steps, finetune.start_step, finetune.steps, finetune.reduced) == (8, 8, 2, False)
    lrs = [cosine_lr(s, cfg) for s in range(10)]
    assert lrs[1] == 1e-3 and lrs[7] < 1e-4 and lrs[8] == pytest.approx(5e-4) and lrs[9] < lrs[8]


def test_negclip_swaps_one_inner_token_per_caption_for_a_token_of_the_batch():
    """Start, end and padding stay; exactly one word token changes where the copy counts as a negative;
    an empty caption is never a negative; the loss sees a swapped copy as one more wrong caption."""
    texts = tokenizer("tiny-vit-32")(["grinning face with big eyes", "flag: united states", "", "tooth", "red apple"])
    torch.manual_seed(0)
    for _ in range(20):
        swapped, valid = swap_one_token(texts)
        changed = (swapped != texts).sum(1)
        assert torch.equal(changed, valid.long()) and not valid[2]
        assert torch.equal(swapped[:, 0], texts[:, 0]) and torch.equal(swapped == 0, texts == 0)
        inner = texts[:, 1:][(texts[:, 1:] != 0) & (texts[:, 1:] != texts.max())]
        assert set(swapped[valid].flatten().tolist()) <= set(texts.flatten().tolist())
        assert set(swapped[swapped != texts].tolist()) <= set(inner.tolist())


def test_nt_xent_is_low_for_matching_views_and_chance_for_random_ones():
    orthogonal = torch.eye(64)  # positives at cosine 1, negatives at 0: loss = log(1 + 126 e^-10)
    assert nt_xent(orthogonal, orthogonal, 0.1).item() == pytest.approx(math.log(1 + 126 * math.exp(-10)), rel=1e-4)
    torch.manual_seed(0)
    assert nt_xent(torch.randn(64, 32), torch.randn(64, 32), 1.0) == pytest.approx(math.log(127), rel=0.05)


def test_strategies_reject_models_and_sizes_they_cannot_use(pairs):
    with pytest.raises(ValueError, match="needs a ViT image tower"):
        make_strategy(_cfg({"pairs": "x"}, model="tiny-rn-64", strategy={"name": "flip"}), create("tiny-rn-64"))
    with pytest.raises(ValueError, match="multiple of tiny-vit-64's patch size"):
        make_strategy(_cfg({"pairs": "x"}, model="tiny-vit-64", strategy={"name": "clipa", "image_size_px": 36}),
                      create("tiny-vit-64"))
    with pytest.raises(ValueError, match="finetune_samples"):
        _cfg({"pairs": "x"}, strategy={"name": "flip", "finetune_samples": 24})
    with pytest.raises(ValueError, match="strategy"):
        _cfg({"pairs": "x"}, strategy={"name": "mae"})
    assert Phase("main", 0, 4, 1.0, 0, False).end_step == 4
