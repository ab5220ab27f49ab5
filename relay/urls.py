"""Checks on URLs users give us: ones we call (webhooks, tools), scheme and where they point;
and web origins (a publishable key's pages), in the form browsers send them."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

NOT_HTTP = "Must be an http:// or https:// URL."
PRIVATE = (
    "Private, loopback and link-local addresses are refused; set "
    "RELAY_ALLOW_PRIVATE_WEBHOOKS=1 to allow them (development only)."
)
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")
BAD_ORIGIN = (
    "{value!r} is not a web origin: send scheme://host[:port] (like https://example.com), "
    "with no path, query or credentials."
)
ANY_ORIGIN = (
    "'*' is not allowed: list each page's origin, so other sites cannot use the key from "
    "their visitors' browsers."
)
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
# NAT64's well-known prefix carries an IPv4 address in its last 32 bits (RFC 6052).
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(addr: Address) -> bool:
    """Whether ``addr`` is globally routable: not private, loopback, link-local, CGNAT,
    multicast, reserved or unspecified, nor an IPv6 form that carries such an IPv4 address
    (IPv4-mapped, 6to4, NAT64; Teredo and IPv4-compatible are refused outright)."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if addr.teredo is not None or addr.is_site_local:
            return False
    # is_global alone lets multicast and (on some Pythons) reserved IPv6 through.
    return addr.is_global and not (addr.is_multicast or addr.is_reserved)


def literal_address(host: str) -> Address | None:
    """``host`` as an IP address if it is one in any spelling the OS accepts
    (``2130706433``, ``0x7f.1``, ``0177.0.0.1`` are all 127.0.0.1), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def check_webhook_url(url: str, *, allow_private: bool) -> str | None:
    """The reason ``url`` is refused, or None when it is acceptable."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        return NOT_HTTP
    if parts.scheme not in ("http", "https") or not host:
        return NOT_HTTP
    if allow_private:
        return None
    host = host.rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(LOCAL_SUFFIXES):
        return PRIVATE
    addr = literal_address(host)
    if addr is not None and not is_public_address(addr):
        return PRIVATE
    return None


def media_base_url(public_url: str) -> str:
    """``http(s)://host`` as ``ws(s)://host``."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if public_url.startswith(http):
            return ws + public_url[len(http) :]
    return public_url


def normalize_origin(value: str) -> str:
    """``value`` as a browser's ``Origin`` header spells it (RFC 6454: lower-case scheme and
    host, no default port). Raises ValueError with a message for the user."""
    if value.strip() == "*":
        raise ValueError(ANY_ORIGIN)
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(BAD_ORIGIN.format(value=value)) from None
    scheme = parts.scheme.lower()
    if (
        scheme not in DEFAULT_PORTS
        or not host
        or "*" in host
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or value != value.strip()
    ):
        raise ValueError(BAD_ORIGIN.format(value=value))
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    else:
        try:  # browsers send an internationalised name in its ASCII (punycode) form
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(BAD_ORIGIN.format(value=value)) from None
        if not _HOST.fullmatch(host):
            raise ValueError(BAD_ORIGIN.format(value=value))
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
