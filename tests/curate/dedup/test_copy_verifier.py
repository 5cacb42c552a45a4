"""The copy verifier: training, saving and loading, the lookalikes it learns from, and a clear error without
weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from curate.dedup.copy_verifier import CopyNet, Verifier, dihedral_probabilities, fit, main, probabilities, save
from curate.dedup.copy_verifier_fit import fit_edits, labelled_pairs, training_pairs
from curate.synthetic.copy_edits import ANY_WATERMARK, EDITS, TONE_EDITS, edit_copy
from curate.synthetic.lookalikes import KINDS, lookalike
from curate.synthetic.scenes import random_scene, render


def _pictures(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(render(random_scene(rng), rng, 64, 64)) for _ in range(n)])


def test_each_lookalike_changes_part_of_the_picture_not_all_of_it():
    rng = np.random.default_rng(0)
    pictures = _pictures(12)
    seen = set()
    for i, picture in enumerate(pictures):
        changed, kind = lookalike(Image.fromarray(picture), Image.fromarray(pictures[(i + 1) % 12]), rng)
        seen.add(kind)
        moved = np.abs(np.asarray(changed).astype(int) - picture).sum(2) > 30
        assert kind in KINDS and 0 < moved.mean() < 0.6, (kind, moved.mean())
    assert len(seen) >= 2


def test_labelled_pairs_hold_copies_lookalikes_and_neighbours():
    pictures = _pictures(30)
    thumbs, first, second, label, kind = labelled_pairs(pictures, seed=0, copies=1, lookalikes=1, neighbours=3)
    assert len(thumbs) == 30 + 60 and (label[kind == "neighbour"] == 0).all()
    assert label.sum() == 30 and set(kind[label == 1]) <= {"resize_jpeg", "crop", "pad", "rotate", "brightness",
                                                            "grayscale", "blur", "watermark"}
    assert (first != second).all() and ((kind == "neighbour") == ((first < 30) & (second < 30))).all()


def test_tone_edits_keep_the_picture_and_change_its_pixels():
    """The tone edits (which quality_verifier.py asks the verifier about) are copies: the shape stays, pixels move."""
    from curate.dedup.image_match import pixel_match

    thumbs, first, second, label, kind = labelled_pairs(_pictures(16), seed=0, copies=4, lookalikes=0, neighbours=1,
                                                        edits=TONE_EDITS)
    copies = label == 1
    assert set(kind[copies]) == set(TONE_EDITS)
    assert (pixel_match(thumbs, first[copies], second[copies], 0.75, None) >= 0.75).mean() >= 0.9
    moved = np.abs(thumbs[second[copies]].astype(int) - thumbs[first[copies]]).mean((1, 2, 3))
    assert (moved > 1).all(), moved


def test_any_watermark_writes_text_of_many_looks_over_part_of_the_picture():
    rng = np.random.default_rng(0)
    marked = []
    for picture in _pictures(16):
        copy = np.asarray(edit_copy(Image.fromarray(picture), ANY_WATERMARK, rng))
        moved = np.abs(copy.astype(int) - picture).sum(2) > 20
        assert copy.shape == picture.shape and 0 < moved.mean() < 0.35, moved.mean()
        marked.append(moved)
    assert len({m.tobytes() for m in marked}) == 16  # text, place and size change from copy to copy


def test_the_fit_learns_the_watermarks_asked_for():
    assert fit_edits() == EDITS
    assert fit_edits(watermarks="any") == tuple(ANY_WATERMARK if e == "watermark" else e for e in EDITS)
    both = fit_edits(tone_edits=True, watermarks="both")
    assert set(both) == set(EDITS) | set(TONE_EDITS) | {ANY_WATERMARK} and len(both) == len(set(both))


@pytest.mark.parametrize("crop_px", [32, 64])
def test_a_trained_verifier_saves_and_loads_the_same_answers(tmp_path, crop_px):
    pairs = training_pairs(_pictures(24), seed=0, gate=-1.0, crop_px=crop_px)
    assert 0 < pairs.label.sum() < len(pairs.label)
    a, b = pairs.crops(np.arange(len(pairs.label)))
    assert a.shape[1:] == b.shape[1:] == (3, crop_px, crop_px)
    net = fit(pairs, steps=20, batch=16)
    save(net, tmp_path / "w.pt")
    loaded = Verifier(0.5, tmp_path / "w.pt").net
    assert loaded.crop_px == crop_px
    assert np.allclose(probabilities(net, a, b), probabilities(loaded, a, b), atol=1e-6)
    assert np.allclose(probabilities(net, a, b), probabilities(net, b, a), atol=1e-5)  # symmetric
    views = dihedral_probabilities(net, a, b)  # the mean over flips and turns: the same for a turned pair
    assert np.allclose(views, dihedral_probabilities(net, a.rot90(1, (2, 3)).flip(2), b.rot90(1, (2, 3)).flip(2)),
                       atol=1e-5)
    assert not np.allclose(views, probabilities(net, a, b), atol=1e-5)


def test_an_ensemble_averages_its_members_and_loads_from_one_file(tmp_path):
    pictures = _pictures(24)
    pairs = {px: training_pairs(pictures, seed=0, gate=-1.0, crop_px=px) for px in (32, 64)}
    for k, px in enumerate((32, 32, 64)):
        save(fit(pairs[px], steps=10, batch=16, seed=k), tmp_path / f"m{k}.pt")
    main([str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"), "--out", str(tmp_path / "pair.pt")])
    main([str(tmp_path / "pair.pt"), str(tmp_path / "m2.pt"), "--out", str(tmp_path / "all.pt")])
    ensemble = Verifier(0.5, tmp_path / "all.pt")
    assert [net.crop_px for net in ensemble.members] == [32, 32, 64]
    with pytest.raises(ValueError, match="ensemble"):
        ensemble.net
    p32 = pairs[32]
    thumbs, mine, other, cuts = p32.thumbs, p32.mine, p32.other, p32.cuts
    members = [Verifier(0.5, tmp_path / f"m{k}.pt").probabilities(thumbs, mine, other, cuts) for k in range(3)]
    assert np.allclose(ensemble.probabilities(thumbs, mine, other, cuts), np.mean(members, axis=0), atol=1e-6)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the members differ, so the mean is a real test


def test_the_fit_command_writes_weights_that_load(tmp_path):
    from curate.dedup.copy_verifier_fit import main

    main(["--scenes", "24", "--copies", "3", "--tone-edits", "--watermarks", "both", "--neighbours", "3",
          "--steps", "5", "--hard-steps", "2", "--crop-px", "64", "--out", str(tmp_path / "w.pt")])
    x = torch.rand((2, 3, 64, 64))
    p = probabilities(Verifier(0.5, tmp_path / "w.pt").net, x, x)
    assert p.shape == (2,) and ((0 <= p) & (p <= 1)).all()


def test_missing_weights_name_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="copy_verifier_fit"):
        Verifier(0.5, tmp_path / "none.pt")


def test_the_shipped_weights_load():
    members = Verifier(0.5).members  # the shipped ensemble: a 32 px and a 64 px network
    assert [net.crop_px for net in members] == [32, 64] and all(isinstance(net, CopyNet) for net in members)
    for net in members:
        x = torch.rand((4, 3, net.crop_px, net.crop_px))
        p = probabilities(net, x, x.flip(3))
        assert p.shape == (4,) and ((0 <= p) & (p <= 1)).all()
