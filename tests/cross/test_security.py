"""Security: the download refuses non-public addresses at connect time (after DNS, on every redirect
hop), nothing unpickles or evaluates untrusted input, and a run writes only under its directory.
Every connection here goes to loopback; a guard that failed would show as a connection, not a leak."""
import ast
import io
import socket
import threading
import time
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.download import netguard
from curate.download.download import run_download
from curate.download.netguard import BlockedAddress, Guard, blocked_reason
from curate.download.pool_input import InputError
from curate.schema import Status
from curate.synthetic.serve import PoolServer
from pipelines.config import ConfigError, load_config
from pipelines.runners import LocalRunner
from tests.conftest import ROOT, fast_download, read_parts



@pytest.mark.parametrize("address,reason", [
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("168.63.129.16", "metadata"), ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("fe80::1", "link_local"), ("fe80::1%eth0", "link_local"), ("169.254.1.1", "link_local"),
    ("fc00::1", "private"), ("100.64.0.1", "not_global"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"), ("2002:7f00:1::", "loopback"),
    ("64:ff9b::a9fe:a9fe", "metadata"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "private"), ("255.255.255.255", "private"), ("fec0::1", "private"),
    ("8.8.8.8", None), ("1.1.1.1", None), ("2001:4860:4860::8888", None), ("::ffff:8.8.8.8", None),
])
def test_address_classifier_on_literal_ips(address, reason):
    assert blocked_reason(address) == reason


@pytest.fixture()
def listener():
    """A loopback TCP listener that counts the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def _settled(accepted: list, n: int) -> bool:
    """True when the listener has accepted exactly n connections (given a moment to see them)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and len(accepted) < n + 1:
        time.sleep(0.05)
    return len(accepted) == n


def test_guard_refuses_before_connecting_and_names_the_address(listener):
    port, accepted = listener
    with pytest.raises(BlockedAddress, match=r"blocked address: 127\.0\.0\.1 .*loopback"):
        Guard().create_connection(("127.0.0.1", port), timeout=1)
    assert _settled(accepted, 0)
    Guard(allowed_endpoints=frozenset({("127.0.0.1", port)})).create_connection(("127.0.0.1", port), 1).close()
    Guard(allow_private=True).create_connection(("127.0.0.1", port), 1).close()
    assert _settled(accepted, 2)


def test_a_dns_answer_pointing_inside_is_refused(listener, monkeypatch):
    """The check is on the resolved address: a public-looking name whose DNS answer is loopback fails."""
    port, accepted = listener
    real = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):
        return real("127.0.0.1" if host == "images.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    with pytest.raises(BlockedAddress, match="images.example.com resolves only to 127.0.0.1"):
        Guard().create_connection(("images.example.com", port), timeout=1)
    assert _settled(accepted, 0)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _download(tmp_path, urls, **cfg):
    pq.write_table(pa.table({"url": urls, "caption": [f"c {i}" for i in range(len(urls))]}), tmp_path / "in.parquet")
    stats = run_download(fast_download(input=tmp_path / "in.parquet", **cfg), tmp_path / "run", LocalRunner())
    table = read_parts(tmp_path / "run" / "download")
    assert table.num_rows == len(urls) == stats["input_rows"] == sum(stats["by_status"].values())
    return table.column("status").to_pylist(), table.column("error").to_pylist()


LOOPBACK_SPELLINGS = ("127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0.0.0.0")


def test_download_blocks_every_spelling_of_loopback_by_default(tmp_path, listener):
    port, accepted = listener
    urls = [f"http://{host}:{port}/a.png" for host in LOOPBACK_SPELLINGS] + [f"http://[::1]:{port}/a.png"]
    statuses, errors = _download(tmp_path, urls, allow_private_networks=False)
    assert statuses == [Status.BLOCKED_ADDRESS] * len(urls), errors
    assert all("allow_private_networks" in e for e in errors)
    assert _settled(accepted, 0)


def test_allow_private_networks_lifts_the_block(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(_png())
    with PoolServer(tmp_path / "files") as srv:
        urls = [f"http://{host}:{srv.port}/f/a.png" for host in LOOPBACK_SPELLINGS]
        statuses, errors = _download(tmp_path, urls, allow_private_networks=True)
    assert statuses == [Status.OK] * len(urls), errors


def test_the_synth_server_is_reachable_but_no_other_loopback_port(tmp_path, listener):
    """`serve_synth`/`--serve` allow exactly the (ip, port) curate serves, whatever the policy."""
    from curate.synthetic.synth import NoiseConfig, SynthConfig, synthesize

    port, accepted = listener
    clean = NoiseConfig(mismatched_caption=0, boilerplate_caption=0, partial_caption=0, exact_duplicate=0,
                        near_duplicate=0, broken=0)
    pool = synthesize(SynthConfig(n=10, seed=1, noise=clean), tmp_path / "synth")
    urls = pool.column("url").to_pylist() + [f"http://127.0.0.1:{port}/f/0000/0000000.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": ["c"] * len(urls)}), tmp_path / "in.parquet")
    cfg = fast_download(input=tmp_path / "in.parquet", allow_private_networks=False)
    run_download(cfg, tmp_path / "run", LocalRunner(), tmp_path / "synth")
    statuses = read_parts(tmp_path / "run" / "download").column("status").to_pylist()
    assert statuses == [Status.OK] * 10 + [Status.BLOCKED_ADDRESS]
    assert _settled(accepted, 0)


def test_every_redirect_hop_is_checked(tmp_path, monkeypatch):
    """127.0.0.1 counts as public here (an in-process stand-in for a public host); a redirect from it to
    another loopback address is refused at the hop, not followed (nothing listens on 127.0.0.2, so a
    followed redirect would end in connection_error instead)."""
    real = blocked_reason
    monkeypatch.setattr(netguard, "blocked_reason", lambda ip: None if ip == "127.0.0.1" else real(ip))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(_png())
    with PoolServer(tmp_path / "files") as srv:
        def via(target: str) -> str:
            return f"{srv.base_url}/x/to/{urllib.parse.quote(target, safe='')}"

        urls = [via(f"{srv.base_url}/f/a.png"), via(f"http://127.0.0.2:{srv.port}/f/a.png"),
                via(f"http://[::1]:{srv.port}/f/a.png"), via(f"http://0.0.0.0:{srv.port}/f/a.png"),
                via("file:///etc/passwd"), via("ftp://127.0.0.1/x.png")]
        statuses, errors = _download(tmp_path, urls, allow_private_networks=False)
    assert statuses == [Status.OK, Status.BLOCKED_ADDRESS, Status.BLOCKED_ADDRESS, Status.BLOCKED_ADDRESS,
                        Status.HTTP_ERROR, Status.INVALID_URL], errors
    assert "127.0.0.2 (loopback)" in errors[1]


# --- audit: what the code may never do -----------------------------------------------------------

def _calls():
    for folder in ("curate", "train", "pipelines", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    yield path.relative_to(ROOT), node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""  # a method of some expression's result, e.g. model.eval() on create(...)
    parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_code_audit_no_pickle_no_unsafe_yaml_no_shell_no_eval():
    calls = list(_calls())
    assert len(calls) > 500  # the walk really saw the code
    found = []
    for path, call in calls:
        name = _name(call.func)
        if name == "torch.load":
            value = _keyword(call, "weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "pickle.load",
                    "pickle.loads", "os.system", "os.popen", "eval", "exec", "marshal.loads"):
            found.append(f"{path}:{call.lineno} {name}")
        shell = _keyword(call, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{path}:{call.lineno} shell={ast.unparse(shell)}")
    assert found == []


def test_a_yaml_config_cannot_build_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch %s']\n" % (tmp_path / "pwned"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


# --- paths: a run writes only under its directory ------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("score.scorers=[{name: ../../x, model: tiny-vit-32}]", "score.scorers.0.name"),
    ("tier.subsets=[{name: ../../x}]", "tier.subsets.0.name"),
    ("tier.subsets=[{name: /abs/x}]", "tier.subsets.0.name"),
    ("shard.subsets=[../../x]", "shard.subsets"),
])
def test_names_that_become_paths_cannot_climb_out(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_a_given_uid_that_is_a_path_is_refused(tmp_path):
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.png"], "caption": ["c"], "uid": ["../../../etc/x"]}),
                   tmp_path / "in.parquet")
    with pytest.raises(InputError, match="not 32 lowercase hex"):
        run_download(fast_download(input=tmp_path / "in.parquet"), tmp_path / "run", LocalRunner())


def test_hostile_urls_and_captions_write_only_under_the_run(tmp_path):
    """URLs and captions full of `../` and absolute paths: every file the download makes lies in the run."""
    sandbox = tmp_path / "sandbox"
    (sandbox / "files").mkdir(parents=True)
    (sandbox / "files" / "a.png").write_bytes(_png())
    with PoolServer(sandbox / "files") as srv:
        urls = [f"{srv.base_url}/f/a.png", f"{srv.base_url}/f/../../escape.png", f"{srv.base_url}/f/%2e%2e/x.png",
                f"{srv.base_url}/f/a.png?name=../../../escape"]
        captions = ["../../../escape", "/tmp/escape", "..\\..\\escape", "a/../../b"]
        pq.write_table(pa.table({"url": urls, "caption": captions}), sandbox / "in.parquet")
        before = {p for p in tmp_path.rglob("*")}
        stats = run_download(fast_download(input=sandbox / "in.parquet"), sandbox / "run", LocalRunner())
    assert stats["by_status"] == {Status.OK: 1, Status.HTTP_ERROR: 3}  # the server refuses to climb
    made = {p for p in tmp_path.rglob("*")} - before
    outside = sorted(str(p) for p in made if not p.is_relative_to(sandbox / "run"))
    assert outside == [] and any(p.suffix == ".tar" for p in made)
