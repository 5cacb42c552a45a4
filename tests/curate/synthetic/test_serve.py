import socket
import time
import urllib.error
import urllib.request

import pytest

from curate.synthetic.serve import PoolServer


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    with PoolServer(tmp_path, hang_s=3) as srv:
        yield srv


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


def test_static_file_and_content_type(server):
    status, headers, body = _get(f"{server.base_url}/f/a/x.jpg")
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", b"\xff\xd8jpeg")


def test_error_routes(server):
    for path, code in (("x/404/a/x.jpg", 404), ("x/500/a/x.jpg", 500), ("f/a/nope.jpg", 404),
                       ("f/../secret.txt", 404), ("x/noai/../secret.txt", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{server.base_url}/{path}")
        assert err.value.code == code


def test_noai_header_redirect_loop_reset_and_hang(server):
    _, headers, _ = _get(f"{server.base_url}/x/noai/a/x.jpg")
    assert headers["X-Robots-Tag"] == "noai"
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
        _get(f"{server.base_url}/x/loop/a/x.jpg")
    with pytest.raises(Exception, match="IncompleteRead|reset"):
        _get(f"{server.base_url}/x/reset/a/x.jpg")
    start = time.time()
    with pytest.raises((socket.timeout, TimeoutError, urllib.error.URLError)):
        _get(f"{server.base_url}/x/slow/a/x.jpg", timeout=0.5)
    assert time.time() - start < 2


def test_busy_port_is_a_clear_error(server):
    with pytest.raises(RuntimeError, match="cannot serve"):
        with PoolServer(server.root, port=server.port):
            pass
