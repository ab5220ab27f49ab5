"""A real ``relay serve`` killed with SIGKILL in the middle of delivering webhooks, restarted:
every event arrives, duplicates carry the same webhook-id, live calls are closed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import text

from relay.auth import create_key
from tests.events.receiver import Received, Receiver

RELAY_SCRIPT = Path(sys.executable).with_name("relay")
RELAY = [str(RELAY_SCRIPT)] if RELAY_SCRIPT.exists() else [sys.executable, "-m", "relay.cli"]
ORDER = ["call.queued", "call.connecting", "call.ringing", "call.in_progress", "call.failed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def env(database, tmp_path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    out["RELAY_DATABASE_URL"] = database.url
    if not database.is_sqlite:
        async with database.engine.connect() as conn:
            out["RELAY_DATABASE_SCHEMA"] = (
                await conn.execute(text("SELECT current_schema()"))
            ).scalar_one()
    out.update(
        RELAY_DATA_DIR=str(tmp_path / "data"),
        RELAY_ALLOW_PRIVATE_WEBHOOKS="true",
        RELAY_NODE_ID="node-under-test",
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,100ms,100ms,100ms,100ms,100ms",
        RELAY_WEBHOOK_DELIVERY_TIMEOUT_SECONDS="60",
        RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="600",
        RELAY_SIGNING_SECRET="kill-test",
        RELAY_LOG_LEVEL="WARNING",
        RELAY_PORT=str(free_port()),
    )
    return out


class Relay:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.base = f"http://127.0.0.1:{env['RELAY_PORT']}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                *RELAY, "serve", env=self.env, stdout=sink, stderr=sink
            )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        pytest.fail("relay serve did not start within 30 s")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), 10) == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def api(
    http: aiohttp.ClientSession,
    relay: Relay,
    key: str,
    method: str,
    path: str,
    body: Any = None,
    status: int = 200,
) -> Any:
    async with http.request(
        method, relay.base + path, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


def arrived(got: list[Received], call_id: str, type_: str) -> bool:
    return any(r.call_id == call_id and r.type == type_ for r in got)


async def test_a_relay_killed_mid_delivery_delivers_everything_after_restart(
    env, database, tmp_path
):
    release = asyncio.Event()
    hold_failed: set[str] = set()  # calls whose call.failed delivery the receiver sits on
    known: set[str] | None = None  # once set, the first delivery of any other call is held

    async def answer(got: Received, n: int) -> web.StreamResponse:
        hold = got.call_id in hold_failed and got.type == "call.failed"
        hold = hold or (known is not None and got.call_id not in known)
        if hold and n == 1 and not release.is_set():
            await release.wait()  # in flight when the relay dies; the answer goes nowhere
        return web.Response(status=200)

    receiver = Receiver(answer)
    await receiver.start()
    relay = Relay(env, tmp_path / "relay.log")
    try:
        await relay.start()
        async with database.session() as session:
            key, _ = await create_key(session, "kill-test")
        async with aiohttp.ClientSession() as http:
            endpoint = await api(
                http, relay, key, "POST", "/v1/webhook-endpoints", {"url": receiver.url}, 201
            )
            agent = await api(
                http,
                relay,
                key,
                "POST",
                "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"},
                201,
            )
            await api(http, relay, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201)
            byot = {"agentId": agent["id"], "connectionType": "websocket"}
            # A rings (for ten minutes); B waits for its media socket.
            ringing = await api(
                http,
                relay,
                key,
                "POST",
                "/v1/calls",
                {"agentId": agent["id"], "to": "+14155550123"},
                202,
            )
            waiting = await api(http, relay, key, "POST", "/v1/calls", byot, 201)
            await receiver.wait_for(
                lambda got: (
                    arrived(got, ringing["id"], "call.ringing")
                    and arrived(got, waiting["id"], "call.connecting")
                )
            )
            # C ends; the receiver sits on its call.failed delivery.
            ended = await api(http, relay, key, "POST", "/v1/calls", byot, 201)
            await receiver.wait_for(lambda got: arrived(got, ended["id"], "call.connecting"))
            hold_failed.add(ended["id"])
            await api(http, relay, key, "POST", f"/v1/calls/{ended['id']}/end")
            # D: its first delivery is held, so its later events wait behind it, unsent.
            known = {ringing["id"], waiting["id"], ended["id"]}
            stuck = await api(http, relay, key, "POST", "/v1/calls", byot, 201)
            await api(http, relay, key, "POST", f"/v1/calls/{stuck['id']}/end")
            await receiver.wait_for(
                lambda got: (
                    arrived(got, ended["id"], "call.failed")
                    and arrived(got, stuck["id"], "call.queued")
                )
            )

        await relay.kill()
        before_restart = len(receiver.requests)
        release.set()
        await relay.start()

        expected = {
            (ringing["id"], t) for t in ("call.queued", "call.connecting", "call.ringing")
        } | {
            (c["id"], t)
            for c in (ringing, waiting, ended, stuck)
            for t in ("call.queued", "call.connecting", "call.failed")
        }
        await receiver.wait_for(
            lambda got: expected <= {(r.call_id, r.type) for r in got}, within=30
        )
        await asyncio.sleep(0.5)  # anything extra would show up now
    finally:
        release.set()
        await relay.stop()
        await receiver.stop()

    got = receiver.requests
    assert {(r.call_id, r.type) for r in got} == expected
    by_event: dict[str, list[Received]] = defaultdict(list)
    for r in got:
        r.verify(endpoint["secret"])
        by_event[r.json["id"]].append(r)
    assert len(by_event) == len(expected)  # one event per (call, type): nothing emitted twice
    for copies in by_event.values():
        assert len({c.webhook_id for c in copies}) == 1
        assert len({c.body for c in copies}) == 1
    resent = {(c[0].call_id, c[0].type) for c in by_event.values() if len(c) > 1}
    assert {(ended["id"], "call.failed"), (stuck["id"], "call.queued")} <= resent
    assert len(got) > before_restart

    reasons = {r.call_id: r.json["data"]["failureReason"] for r in got if r.type == "call.failed"}
    assert reasons == {
        ringing["id"]: "relay_restart",
        waiting["id"]: "relay_restart",
        ended["id"]: "canceled",
        stuck["id"]: "canceled",
    }
    for call in (ringing, waiting, ended, stuck):
        firsts: list[str] = []
        for r in got:
            if r.call_id == call["id"] and r.type not in firsts:
                firsts.append(r.type)
        assert firsts == sorted(firsts, key=ORDER.index), (call["id"], firsts)
