"""Checks on URLs users give us to call (webhooks, tools): scheme and where they point."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

NOT_HTTP = "Must be an http:// or https:// URL."
PRIVATE = (
    "Private, loopback and link-local addresses are refused; set "
    "RELAY_ALLOW_PRIVATE_WEBHOOKS=1 to allow them (development only)."
)
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


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
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global or addr.is_multicast:
        return PRIVATE
    return None


def media_base_url(public_url: str) -> str:
    """``http(s)://host`` as ``ws(s)://host``."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if public_url.startswith(http):
            return ws + public_url[len(http) :]
    return public_url
