"""The HTTP client for every request the relay makes on a tenant's behalf.

Agent webhooks (voice and SMS turns), tool calls and lifecycle deliveries all go out through
:func:`client_session`. A tenant chooses those URLs, so the client's connector refuses any
address that is not globally routable (:func:`relay.urls.is_public_address`) when it makes
the socket: after DNS, for the exact address about to be connected to, whether the URL
named it literally or a name resolved to it. No rebinding DNS answer can slip in between
the check and the connect. ``RELAY_ALLOW_PRIVATE_WEBHOOKS=1`` turns the check off.

``RELAY_WEBHOOK_HOSTS`` pins names to addresses for this client only (as curl's
``--resolve``), so a test or a split-horizon setup can point a name somewhere without
editing ``/etc/hosts``; a pinned address is checked like any other.

What a tenant reads back of a receiver's failed answer is :func:`answer_summary` (status,
size, time), and of a request that never got an answer :func:`describe`.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
from collections.abc import Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import AddrInfoType
from aiohttp.resolver import DefaultResolver

from relay.config import Settings
from relay.logs import get_logger
from relay.urls import Address, is_public_address

log = get_logger("relay.egress")

NOT_PUBLIC = "not a public address"


class NotPublicAddress(OSError):
    """A socket refused because its address is not globally routable."""


@functools.lru_cache(maxsize=4096)
def public_host(host: str) -> bool:
    """Whether a socket address's host is a public IP address (cached per process)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # not a canonical literal: refuse rather than guess how the OS reads it
    return is_public_address(addr)


def public_socket(addr_info: AddrInfoType) -> socket.socket:
    """The connector's socket factory: a socket for a public address, else
    :class:`NotPublicAddress` (the connector reports it as a connection error)."""
    family, type_, proto, _, sockaddr = addr_info
    if not public_host(str(sockaddr[0])):
        log.warning("egress_refused", address=str(sockaddr[0]))
        raise NotPublicAddress(errno.EACCES, NOT_PUBLIC)
    return socket.socket(family=family, type=type_, proto=proto)


class PinnedResolver(AbstractResolver):
    """Names in ``hosts`` resolve to their pinned address; the rest through aiohttp's."""

    def __init__(self, hosts: Mapping[str, Address]) -> None:
        self._hosts = {name.lower().rstrip("."): addr for name, addr in hosts.items()}
        self._dns = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addr = self._hosts.get(host.lower().rstrip("."))
        if addr is None:
            return await self._dns.resolve(host, port, family)
        inet = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        return [
            ResolveResult(
                hostname=host,
                host=str(addr),
                port=port,
                family=inet,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        await self._dns.close()


def client_session(
    settings: Settings, *, limit: int = 100, ttl_dns_cache: int | None = 10
) -> aiohttp.ClientSession:
    """A client whose connections go only to public addresses (unless the settings allow
    private ones). Callers still pass ``allow_redirects=False``: a redirect would be
    checked too, but a tenant's receiver has no business sending the relay elsewhere."""
    hosts = settings.webhook_hosts
    connector = aiohttp.TCPConnector(
        limit=limit,
        ttl_dns_cache=ttl_dns_cache,
        resolver=PinnedResolver(hosts) if hosts else None,
        socket_factory=None if settings.allow_private_webhooks else public_socket,
    )
    return aiohttp.ClientSession(connector=connector)


def describe(exc: Exception) -> str:
    """Why a request got no answer, in words a tenant may read."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, NotPublicAddress):
        return f"{exc.host} is {NOT_PUBLIC}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def answer_summary(status: int, size: int, ms: float, *, more: bool = False) -> str:
    """A receiver's answer as a tenant may read it back: never its body, which could be
    anything the receiver (or whatever the URL reached) chose to say."""
    bytes_ = f"at least {size}" if more else str(size)
    return f"HTTP {status} ({bytes_} bytes in {ms:.0f} ms)"
