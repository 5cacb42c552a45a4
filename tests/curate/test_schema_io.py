import hashlib
import json

import pytest

from curate.io import atomic_write_bytes, atomic_write_parquet, fingerprint
from curate.schema import Status, is_uid, make_uid


def test_uid_is_first_16_bytes_of_sha256_of_url_sep_caption():
    expected = hashlib.sha256(b"http://a/b.jpg\x1fa red circle").hexdigest()[:32]
    assert make_uid("http://a/b.jpg", "a red circle") == expected
    assert is_uid(expected)
    assert make_uid("http://a/b.jpg", "a red circle ") != expected


def test_uid_of_non_utf8_bytes_uses_the_raw_bytes():
    raw = b"caf\xe9"
    assert make_uid(b"http://x/", raw) == hashlib.sha256(b"http://x/\x1f" + raw).hexdigest()[:32]


def test_status_vocabulary_is_unique_words():
    values = Status.all()
    assert len(values) == len(set(values))
    assert Status.OK in values and all(v == v.lower() and " " not in v for v in values)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_bytes(path, b"old")

    with pytest.raises(Exception):
        atomic_write_parquet(path, "not a table")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_fingerprint_is_stable_and_order_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint([1, 2]) != fingerprint([2, 1])
    assert len(fingerprint(json.dumps("x"))) == 16
