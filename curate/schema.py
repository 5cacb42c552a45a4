"""The data model every stage shares: uids, reserved columns and the row-status vocabulary."""
from __future__ import annotations

import hashlib
import re

UID_SEPARATOR = b"\x1f"
UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

# Columns with a fixed meaning in every table of a run.
UID = "uid"
URL = "url"
CAPTION = "caption"
STATUS = "status"
ERROR = "error"
RESERVED_COLUMNS = (UID, URL, CAPTION, STATUS, ERROR)

# Ground-truth columns written only by the synthetic pool; no stage reads them.
GT_PREFIX = "gt_"


class Status:
    """Row statuses. `ok` rows go on; every other value says why a row stopped, in one word."""

    OK = "ok"
    # set before any network traffic, from the input row itself
    INVALID_URL = "invalid_url"
    DUPLICATE_UID = "duplicate_uid"
    EMPTY_CAPTION = "empty_caption"
    CAPTION_TOO_LONG = "caption_too_long"
    BAD_ENCODING = "bad_encoding"
    # set by the download
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    REDIRECT_LOOP = "redirect_loop"
    BLOCKED_ROBOTS = "blocked_robots"
    BLOCKED_ADDRESS = "blocked_address"  # the host is loopback, private, link-local or cloud metadata
    DECODE_ERROR = "decode_error"
    TOO_SMALL = "too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    TOO_LARGE = "too_large"
    DOWNLOAD_ERROR = "download_error"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return tuple(v for k, v in vars(cls).items() if k.isupper())


# Counts and reasons beside the row statuses (stats.json, dup.parquet, tier drops).
PENDING = "pending"  # stats.json: rows of parts that failed for good, still to do
KEPT = "kept"  # dedup: the row stays
NOT_SCORED = "not_scored"  # dedup and tier: downloaded, but its part has no score output
NOT_DOWNLOADED = "not_downloaded"  # tier: its part has no download output (a failed part)
HOLDOUT = "holdout"  # tier: held out of every subset (an eval split)
DUP_REASONS = ("exact_pair", "exact_image", "near_image")  # dedup drop reasons, first = strongest


def make_uid(url: str | bytes, caption: str | bytes) -> str:
    """First 16 bytes of sha256(url + 0x1f + caption), as 32 hex chars."""
    url_b = url.encode("utf-8", "surrogateescape") if isinstance(url, str) else url
    cap_b = caption.encode("utf-8", "surrogateescape") if isinstance(caption, str) else caption
    return hashlib.sha256(url_b + UID_SEPARATOR + cap_b).hexdigest()[:32]


def is_uid(value: object) -> bool:
    return isinstance(value, str) and bool(UID_PATTERN.match(value))

