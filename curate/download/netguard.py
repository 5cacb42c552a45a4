"""Where the download stage may connect: public addresses only, unless the config says otherwise.

The check runs on the address actually connected to, after DNS and on every redirect hop (urllib
opens a new connection per hop through the same handler), so neither a URL nor a DNS answer can
point the crawler at loopback, the private network or a cloud metadata service.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from dataclasses import dataclass
from typing import Callable

# Cloud metadata and platform endpoints, refused even where their range would pass.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle instance metadata
    "169.254.170.2",    # AWS ECS task metadata
    "fd00:ec2::254",    # AWS instance metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "168.63.129.16",    # Azure wire server
    "192.0.0.192",      # Oracle Cloud Classic metadata
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
RANGE_REASONS = (("is_unspecified", "unspecified"), ("is_loopback", "loopback"), ("is_link_local", "link_local"),
                 ("is_multicast", "multicast"), ("is_private", "private"), ("is_reserved", "reserved"))


class BlockedAddress(OSError):
    """A connection refused by the guard; its text starts with `blocked address`."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(address: str) -> str | None:
    """Why a crawler must not connect to this literal IP (None: a public address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    embedded = _embedded_ipv4(ip) if ip.version == 6 else None
    if embedded is not None:  # an IPv6 spelling of an IPv4 address is judged as that address
        return blocked_reason(str(embedded))
    if ip in METADATA_ADDRESSES:
        return "metadata"
    for attribute, reason in RANGE_REASONS:
        if getattr(ip, attribute):
            return reason
    if ip.version == 6 and ip.is_site_local:
        return "private"
    return None if ip.is_global else "not_global"


@dataclass(frozen=True)
class Guard:
    """Connect policy. `allowed_endpoints` are (ip, port) pairs always reachable: the loopback server
    curate itself starts for a synthetic pool."""

    allow_private: bool = False
    allowed_endpoints: frozenset[tuple[str, int]] = frozenset()

    def refuses(self, ip: str, port: int) -> str | None:
        if self.allow_private or (ip, port) in self.allowed_endpoints:
            return None
        return blocked_reason(ip)

    def create_connection(self, address: tuple[str, int], timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                          source_address=None) -> socket.socket:
        """socket.create_connection, skipping every resolved address the policy refuses."""
        host, port = address
        refused, error = [], None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            reason = self.refuses(sockaddr[0], sockaddr[1])  # the port connected to (getaddrinfo wraps 99999)
            if reason:
                refused.append(f"{sockaddr[0]} ({reason})")
                continue
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                error = err
                sock.close()
        if error is not None:
            raise error
        raise BlockedAddress(f"blocked address: {host} resolves only to {', '.join(refused)}; "
                             "set download.allow_private_networks: true to allow it")


def resolve_endpoints(host: str, port: int) -> frozenset[tuple[str, int]]:
    """Every (ip, port) a host name stands for, to allow a server by name."""
    return frozenset((info[4][0], port) for info in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))


OnConnect = Callable[[socket.socket], None]


def _connection_factory(cls: type[http.client.HTTPConnection], guard: Guard, on_connect: OnConnect | None):
    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        sock = guard.create_connection(address, timeout, source_address)
        if on_connect is not None:
            on_connect(sock)
        return sock

    def make(host, **kwargs):
        conn = cls(host, **kwargs)
        conn._create_connection = connect  # http.client's hook for opening the socket
        return conn
    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, factory):
        super().__init__()
        self._factory = factory

    def http_open(self, req):
        return self.do_open(self._factory, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, factory):
        super().__init__()
        self._factory = factory

    def https_open(self, req):
        return self.do_open(self._factory, req, context=self._context)


def build_opener(guard: Guard, on_connect: OnConnect | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener for http(s) only, through `guard`: no environment proxies (a proxy would resolve
    names out of the guard's sight), no ftp/file/data handlers (a redirect there is an unknown url type)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(_connection_factory(http.client.HTTPConnection, guard, on_connect)),
                    _HTTPSHandler(_connection_factory(http.client.HTTPSConnection, guard, on_connect)),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener
