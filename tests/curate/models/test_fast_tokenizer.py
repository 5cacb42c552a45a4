"""The fast tokenizer path must give open_clip's exact tokens for every caption."""

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from curate.models.clip import register_model_configs, tokenizer
from curate.models.fast_tokenizer import FastEncode, plain_ascii

from tests.conftest import SHARED

SHARED_DATA = SHARED / "data"
AWKWARD = [
    "", "   ", "a", "A Red  Circle\tat the left", "fish &amp; chips", "Tom &amp;amp; Jerry", "&lt;b&gt;bold",
    "caf\u00e9 cr\u00e8me", "â€œmojibakeâ€\x9d", "\u201ccurly quotes\u201d", "ﬁnancial ligature", "ＦＵＬＬ width",
    "line\r\nbreaks\nand\ttabs", "\x1b[31mterminal red\x1b[0m", "null\x00byte", "emoji \U0001f600 face",
    "it's they're we've I'm you'll he'd", "12345 67.89 $%^*()", "word " * 200, "  padded caption  ",
    "IMG_2041.JPG", "click here", "a\u00a0non-breaking space", "Ǆ titlecase digraph",
]


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)]
    texts = AWKWARD + ["".join(rng.choice(printable, size=int(rng.integers(1, 60)))) for _ in range(500)]
    for name in ("emoji", "icons"):
        path = SHARED_DATA / name / "pairs.parquet"
        if path.exists():
            captions = pq.read_table(path, columns=["caption"]).column("caption").to_pylist()
            texts += [captions[i] for i in rng.choice(len(captions), size=min(2000, len(captions)), replace=False)]
    return texts


@pytest.mark.parametrize("model", ["tiny-vit-32", "ViT-B-32"])
def test_fast_tokenizer_matches_open_clip(model):
    register_model_configs()
    texts = _corpus()
    assert len(texts) > 500
    fast, slow = tokenizer(model), open_clip.get_tokenizer(model)
    assert isinstance(fast.encode, FastEncode)
    assert torch.equal(fast(texts), slow(texts))
    assert torch.equal(fast(texts), fast(texts))  # the word cache gives the same ids the second time


def test_plain_ascii_takes_only_text_that_ftfy_leaves_alone():
    import ftfy

    assert plain_ascii("a red circle, 3 of them") and not plain_ascii("fish &amp; chips")
    assert not plain_ascii("caf\u00e9") and not plain_ascii("tab\there") and not plain_ascii("\x1b[0m")
    for text in _corpus():
        if plain_ascii(text):
            assert ftfy.fix_text(text) == text
