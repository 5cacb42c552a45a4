"""How the download stage fetches one URL: img2dataset's download loop, resizer and writer, with our
fetch in place of its `download_image`. Ours connects only through the address guard, stops at a
byte cap and at a deadline for the whole response (headers included), and refuses an image whose
header declares more pixels than allowed before any decoder allocates them."""
from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import importlib
import io
import itertools
import socket
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass

from PIL import Image

from curate.download.netguard import Guard, build_opener

CHUNK_BYTES = 1 << 16
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) curate-clip"
_PATCH_LOCK = threading.Lock()
_local = threading.local()


@dataclass(frozen=True)
class Limits:
    deadline_s: float       # the whole response
    max_bytes: int          # the response body
    max_image_area: float   # declared width * height


class FetchError(Exception):
    """One URL failed; the text names why in words that `classify_error` maps to a status."""


class _Watchdog:
    """One thread that fires every request's deadline (a timer thread per request costs more than a
    small fetch). Deadlines of finished requests stay queued until their time and are then ignored."""

    def __init__(self):
        self._queue: list[tuple[float, int, "_Deadline"]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: "_Deadline") -> None:
        with self._wake:
            heapq.heappush(self._queue, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            if self._queue[0][2] is deadline:  # only a new earliest deadline needs the thread awake
                self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._queue and self._queue[0][0] <= now:
                    heapq.heappop(self._queue)[2].expire()
                self._wake.wait(self._queue[0][0] - now if self._queue else None)


_WATCHDOG = _Watchdog()


class _Deadline:
    """Shuts the request's sockets when time is up, which wakes a read blocked on a trickling server."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self._finished = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock.dup())  # our own fd: it survives TLS wrapping of the original

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "_Deadline":
        _local.deadline = self
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _local.deadline = None
        with self._lock:
            self._finished = True
            for sock in self._socks:
                sock.close()
            self._socks.clear()


def _watch_socket(sock: socket.socket) -> None:
    deadline = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


def _read_body(response, limits: Limits) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limits.max_bytes:
        raise FetchError(f"response too large: Content-Length {length} > {limits.max_bytes} bytes")
    chunks, size = [], 0
    while chunk := response.read1(CHUNK_BYTES):
        size += len(chunk)
        if size > limits.max_bytes:
            raise FetchError(f"response too large: more than {limits.max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if length.isdigit() and size < int(length):  # read1, unlike read, does not notice a short body
        raise http.client.IncompleteRead(body, int(length) - size)
    return body


def declared_area_error(data: bytes, max_area: float) -> str | None:
    """`image area too large` when the image header declares more than `max_area` pixels. Bytes that
    Pillow cannot identify pass: the decoder will report them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        return f"image area too large (decompression bomb: {err})"
    except (OSError, ValueError, EOFError):
        return None
    if width * height > max_area:
        return f"image area too large: header declares {width}x{height}"
    return None


def fetch(url: str, opener: urllib.request.OpenerDirector, limits: Limits, timeout_s: float, user_agent: str,
          blocked_by_headers) -> bytes:
    """The body of `url`; raises FetchError (or urllib's errors) with a classifiable message.
    `timeout_s` bounds each socket operation, `limits.deadline_s` the whole response."""
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    start = time.monotonic()
    with _Deadline(limits.deadline_s) as deadline:
        try:
            with opener.open(request, timeout=timeout_s) as response:
                if blocked_by_headers(response.headers):
                    raise FetchError("Use of image disallowed by X-Robots-Tag directive")
                body = _read_body(response, limits)
        except (OSError, http.client.HTTPException) as err:
            if deadline.expired:
                raise FetchError(f"timed out: no complete response within {limits.deadline_s:g} s") from err
            raise
    if deadline.expired or time.monotonic() - start > limits.deadline_s:
        raise FetchError(f"timed out: no complete response within {limits.deadline_s:g} s")
    area_error = declared_area_error(body, limits.max_image_area)
    if area_error:
        raise FetchError(area_error)
    return body


def _download_image(row, timeout, user_agent_token, disallowed_header_directives, *, opener, limits, downloader):
    """img2dataset's `download_image` contract: (key, BytesIO or None, error text or None)."""
    key, url = row
    agent = USER_AGENT + (f" ({user_agent_token})" if user_agent_token else "")

    def blocked(headers) -> bool:
        return bool(disallowed_header_directives) and downloader.is_disallowed(
            headers, user_agent_token, disallowed_header_directives)

    try:
        return key, io.BytesIO(fetch(url, opener, limits, timeout, agent, blocked)), None
    except (FetchError, OSError, http.client.HTTPException, ValueError) as err:
        return key, None, str(err) or type(err).__name__


@contextlib.contextmanager
def guarded_img2dataset(guard: Guard, limits: Limits):
    """While open, img2dataset's Downloader in this process fetches through `fetch`; one at a time."""
    downloader = importlib.import_module("img2dataset.downloader")
    opener = build_opener(guard, on_connect=_watch_socket)
    with _PATCH_LOCK:
        original = downloader.download_image
        downloader.download_image = functools.partial(_download_image, opener=opener, limits=limits,
                                                      downloader=downloader)
        try:
            yield
        finally:
            downloader.download_image = original
