"""open_clip's BPE tokenizer, made cheaper for the common case and identical in output.

Two costs dominate `SimpleTokenizer` on web captions: `ftfy.fix_text` on every caption and the per-word
byte mapping and vocabulary lookups. For a caption of printable ASCII without `&`, ftfy and the HTML
unescape are the identity, so only the strip remains; and a word's token ids never change, so they are
cached per word. Anything else (non-ASCII, control characters, entities) takes open_clip's own path.
"""
from __future__ import annotations

from open_clip import tokenizer as oc

_CLEAN_AFTER_BASIC = {
    oc._clean_lower: lambda text: oc.whitespace_clean(text).lower(),
    oc._clean_whitespace: oc.whitespace_clean,
    oc._clean_canonicalize: oc.canonicalize_text,
}
_WORD_CACHE_LIMIT = 1_000_000


def plain_ascii(text: str) -> bool:
    """Text that ftfy and html.unescape return unchanged: printable ASCII (spaces allowed), no `&`."""
    return text.isascii() and text.isprintable() and "&" not in text


class FastEncode:
    """A drop-in `encode` for one SimpleTokenizer instance."""

    def __init__(self, tok: oc.SimpleTokenizer):
        self.tok, self.slow_clean = tok, tok.clean_fn
        self.plain_clean = _CLEAN_AFTER_BASIC[tok.clean_fn]
        self.word_ids: dict[str, list[int]] = {}

    def _ids(self, word: str) -> list[int]:
        ids = self.word_ids.get(word)
        if ids is None:
            tok = self.tok
            mapped = "".join(tok.byte_encoder[b] for b in word.encode("utf-8"))
            ids = [tok.encoder[piece] for piece in tok.bpe(mapped).split(" ")]
            if len(self.word_ids) < _WORD_CACHE_LIMIT:
                self.word_ids[word] = ids
        return ids

    def __call__(self, text: str) -> list[int]:
        text = self.plain_clean(text.strip()) if plain_ascii(text) else self.slow_clean(text)
        ids: list[int] = []
        for word in self.tok.pat.findall(text):
            ids.extend(self._ids(word))
        return ids


def accelerate(tok):
    """The same tokenizer with the fast encode where it applies (plain SimpleTokenizer configs)."""
    if type(tok) is oc.SimpleTokenizer and tok.clean_fn in _CLEAN_AFTER_BASIC and not isinstance(tok.encode, FastEncode):
        tok.encode = FastEncode(tok)
    return tok
