"""The tenant-facing HTTP client refuses, at connect time, every address that is not public,
however the URL writes it; a real local server shows that nothing reaches it."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.config import Settings
from relay.egress import client_session, describe
from relay.urls import PRIVATE, check_webhook_url, is_public_address

LOOPBACK_NAME = "hooks.test"  # RFC 6761: never in public DNS; pinned through the seam


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "192.0.2.1",  # documentation
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fec0::1",  # site-local
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "2001:db8::1",  # documentation
    ],
)
def test_addresses_that_are_not_public(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1"])
def test_every_spelling_of_an_ipv4_address_is_checked_when_a_url_is_saved(host):
    assert check_webhook_url(f"http://{host}/hook", allow_private=False) == PRIVATE
    assert check_webhook_url(f"http://{host}/hook", allow_private=True) is None


@pytest.fixture
async def server(aiohttp_server: Any) -> AsyncIterator[tuple[int, list[str]]]:
    """A local receiver on 127.0.0.1: its port, and the paths it was asked for."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="inside")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    running = await aiohttp_server(app, host="127.0.0.1")
    yield running.port, seen


def settings(*, allow_private: bool) -> Settings:
    return Settings(
        allow_private_webhooks=allow_private, webhook_hosts={LOOPBACK_NAME: "127.0.0.1"}
    )


async def get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, allow_redirects=False) as resp:
        return await resp.text()


async def test_a_name_that_resolves_to_loopback_is_refused_at_connect(server):
    port, seen = server
    async with client_session(settings(allow_private=False)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as err:
            await get(session, f"http://{LOOPBACK_NAME}:{port}/secret")
    assert describe(err.value) == f"{LOOPBACK_NAME} is not a public address"
    assert seen == []


async def test_the_same_name_is_reached_when_private_addresses_are_allowed(server):
    port, seen = server
    async with client_session(settings(allow_private=True)) as session:
        assert await get(session, f"http://{LOOPBACK_NAME}:{port}/secret") == "inside"
    assert seen == ["/secret"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6 literal
        "[::ffff:7f00:1]",
        "2130706433",  # decimal integer
        "0x7f.0.0.1",  # hex, read by getaddrinfo
        "0177.0.0.1",  # octal
        "127.1",
    ],
)
async def test_literal_loopback_in_any_spelling_is_refused(server, host):
    port, seen = server
    async with client_session(settings(allow_private=False)) as session:
        with pytest.raises(aiohttp.ClientError) as err:
            await get(session, f"http://{host}:{port}/secret")
    # aiohttp itself refuses non-canonical numeric hosts (2130706433, 0177.0.0.1, 127.1);
    # the rest reach the socket check.
    assert "not a public address" in describe(err.value) or "canonical" in str(err.value)
    assert seen == []
