"""A loopback HTTP server for a synthetic pool: static files plus routes that misbehave on purpose.

Routes (the path after the route names a file under the served root):
  /f/<path>         the file, with a content type from its extension
  /x/404/<path>     404 Not Found            /x/500/<path>   500 Internal Server Error
  /x/flaky/<path>   503 Service Unavailable the first time this server is asked for it, then the file
  /x/slow/<path>    accepts, then sends nothing until `hang_s` passes (a hanging host)
  /x/reset/<path>   promises a long body, sends a little, then resets the connection
  /x/loop/<path>    redirects to itself forever
  /x/noai/<path>    the file, with `X-Robots-Tag: noai`
  /x/html/<path>    the file, labelled `text/html` (a wrong content type)
  /x/gzip/<path>    a gzip bomb: 64 MiB of zeros as ~64 kB with `Content-Encoding: gzip`
  /x/trickle/<path> an endless body, one byte every 0.1 s
  /x/endless/<path> an endless body, as fast as the client reads
  /x/biglen/<path>  declares a terabyte body (Content-Length), then closes
  /x/to/<url>       302 to the percent-encoded URL (a redirect to anywhere)
"""
from __future__ import annotations

import gzip
import logging
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
GZIP_BOMB_BYTES = 64 << 20


def _gzip_bomb() -> bytes:
    return gzip.compress(bytes(GZIP_BOMB_BYTES), compresslevel=9)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("serve: " + fmt, *args)

    def _file(self, rel: str) -> Path | None:
        root = self.server.root
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def _send(self, code: int, body: bytes, content_type: str = "text/plain", headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, rel: str, headers: dict | None = None) -> None:
        path = self._file(rel)
        if path is None:
            self._send(404, b"not found")
            return
        ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        self._send(200, path.read_bytes(), ctype, headers)

    def _stream(self, chunk: bytes, pause_s: float) -> None:
        """A body without a length that never ends (until the client leaves or the server stops)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        self.close_connection = True
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(chunk)
                self.wfile.flush()
                if pause_s:
                    time.sleep(pause_s)
        except OSError:
            return

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _misbehave(self, route: str, rel: str) -> bool:
        """The routes added for the bad-input catalogue; False when `route` is none of them."""
        if route == "html":
            path = self._file(rel)
            if path is None:
                self._send(404, b"not found")
            else:
                self._send(200, path.read_bytes(), "text/html")
        elif route == "gzip":
            self._send(200, self.server.gzip_bomb(), "image/png", {"Content-Encoding": "gzip"})
        elif route == "trickle":
            self._stream(b"\xff", 0.1)
        elif route == "endless":
            self._stream(bytes(1 << 16), 0.0)
        elif route == "biglen":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.close_connection = True
        elif route == "to":
            self._redirect(unquote(rel))
        else:
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = self.path.lstrip("/").split("/", 2)
        if parts[0] == "f" and len(parts) >= 2:
            self._send_file("/".join(parts[1:]))
            return
        route, rel = (parts[1], parts[2]) if parts[0] == "x" and len(parts) == 3 else ("", "")
        if self._misbehave(route, rel):
            return
        if route == "404":
            self._send(404, b"not found")
        elif route == "500":
            self._send(500, b"server error")
        elif route == "flaky":
            if self.server.first_time(rel):
                self._send(503, b"try again later")
            else:
                self._send_file(rel)
        elif route == "noai":
            self._send_file(rel, {"X-Robots-Tag": "noai"})
        elif route == "loop":
            self._redirect(self.path)
        elif route == "slow":
            self.server.stopping.wait(self.server.hang_s)
            self.close_connection = True
        elif route == "reset":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"\0" * 997)
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        else:
            self._send(404, b"unknown route")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, root: Path, hang_s: float):
        self.root = Path(root).resolve()
        self.hang_s = hang_s
        self.stopping = threading.Event()
        self._bomb: bytes | None = None
        self._asked: set[str] = set()
        self._asked_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def first_time(self, rel: str) -> bool:
        """True on the first request for `rel` (the flaky route), False after."""
        with self._asked_lock:
            first = rel not in self._asked
            self._asked.add(rel)
            return first

    def gzip_bomb(self) -> bytes:
        if self._bomb is None:
            self._bomb = _gzip_bomb()
        return self._bomb


class PoolServer:
    """Context manager: serve `root` on host:port in a background thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, hang_s: float = 30.0):
        self.root, self.host, self.port, self.hang_s = Path(root), host, port, hang_s
        self._server: _Server | None = None

    def __enter__(self) -> "PoolServer":
        try:
            self._server = _Server(self.host, self.port, self.root, self.hang_s)
        except OSError as err:
            raise RuntimeError(
                f"cannot serve the synthetic pool on {self.host}:{self.port} ({err}); the pool's URLs name "
                "this port, so free it or regenerate the pool with another `synth.port`"
            ) from err
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="pool-server", daemon=True).start()
        log.info("serving %s on http://%s:%d", self.root, self.host, self.port)
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
