"""A node that dies loses nothing; a node that is told to stop drains first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from relay.auth import create_key
from relay.store.models import Call, RelayNode
from relay.transports import twilio_protocol as tp
from tests.cluster.harness import Node, api, node_env, until
from tests.events.receiver import Received, Receiver

NODE_TIMEOUT = 3.0


async def test_the_survivor_closes_a_killed_nodes_calls_and_resends_its_deliveries(
    database, tmp_path
):
    release = asyncio.Event()
    held: set[str] = set()

    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.type == "call.ringing" and n == 1:
            held.add(got.webhook_id)
            await release.wait()  # in flight when its node dies; the answer goes nowhere
        return web.Response(status=204)

    receiver = Receiver(answer)
    await receiver.start()
    env = await node_env(
        database,
        tmp_path,
        RELAY_NODE_TIMEOUT_SECONDS=str(NODE_TIMEOUT),
        # The delivery's own lease (2 x 60 + 5 s) would run out long after the test: what
        # brings it back is the survivor taking the dead node over.
        RELAY_WEBHOOK_DELIVERY_TIMEOUT_SECONDS="60",
    )
    a, b = Node(env, tmp_path / "a.log", "node-a"), Node(env, tmp_path / "b.log", "node-b")
    try:
        await a.start()
        await b.start()
        async with database.session() as session:
            key, _ = await create_key(session, "failover")
        async with aiohttp.ClientSession() as http:
            await api(http, a, key, "POST", "/v1/webhook-endpoints", {"url": receiver.url}, 201)
            agent = await api(
                http, a, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"}, 201,
            )  # fmt: skip
            await api(http, a, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201)
            call = await api(
                http, a, key, "POST", "/v1/calls",
                {"agentId": agent["id"], "to": "+14155550123"}, 202,
            )  # fmt: skip
            await receiver.wait_for(lambda got: bool(held))

            await a.kill()
            killed = time.monotonic()
            release.set()
            got = await receiver.wait_for(
                lambda got: (
                    any(r.type == "call.failed" for r in got)
                    and sum(r.webhook_id in held for r in got) == 2
                ),
                within=NODE_TIMEOUT * 4,
            )
            took = time.monotonic() - killed
            failed = next(r for r in got if r.type == "call.failed")
            assert failed.json["data"]["failureReason"] == "relay_restart"
            assert failed.call_id == call["id"]
            assert took < NODE_TIMEOUT + NODE_TIMEOUT / 3 + 2, took
            after = await api(http, b, key, "GET", f"/v1/calls/{call['id']}")
            assert (after["status"], after["failureReason"]) == ("failed", "relay_restart")
            # Each event once, but what was in flight at the kill: again, with the same
            # webhook-id (the held ringing; and any delivery of the same batch whose answer
            # the dead node had not stored yet).
            first = {r.webhook_id: r.type for r in got}
            assert sorted(first.values()) == sorted(
                ["call.queued", "call.connecting", "call.ringing", "call.failed"]
            ), [r.type for r in got]
            assert sum(r.type == "call.ringing" for r in got) == 2
        async with database.session() as session:
            nodes = set((await session.execute(select(RelayNode.id))).scalars())
        assert nodes == {"node-b"}  # the dead node was taken over once and forgotten
    finally:
        await a.stop()
        await b.stop()
        await receiver.stop()
        print(a.log.read_text()[-2000:], b.log.read_text()[-2000:], file=sys.stderr)


class Handset:
    """The carrier's side of a sim call over Twilio Media Streams, sending silence."""

    def __init__(self, node: Node, key: str, number: str) -> None:
        self.node, self.key, self.number = node, key, number
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = "MZ" + "0" * 32
        self.call_id = ""
        self._talk: asyncio.Task[None] | None = None

    async def dial(self) -> None:
        placed = await api(
            self.http, self.node, self.key, "POST", "/carriers/sim/voice", {"to": self.number}, 201
        )
        self.call_id = placed["callId"]
        url = self.node.base.replace("http", "ws") + "/media/twilio"
        self.ws = await self.http.ws_connect(url, params={"token": placed["token"]})
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
        start = {
            "streamSid": self.sid,
            "callSid": "CAsim" + self.call_id.removeprefix("call_"),
            "tracks": ["inbound"],
            "customParameters": {"callId": self.call_id, "token": placed["token"]},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self.ws.send_str(
            json.dumps({"event": "start", "sequenceNumber": "1", "start": start})
        )
        self._talk = asyncio.create_task(self._silence())

    async def _silence(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not self.ws.closed:
                await self.ws.send_str(tp.media(self.sid, b"\xff" * 160))
                await asyncio.sleep(0.02)

    async def hang_up(self) -> None:
        assert self.ws is not None
        if not self.ws.closed:
            await self.ws.send_str(json.dumps({"event": "stop", "streamSid": self.sid}))
            await self.ws.close()

    async def close(self) -> None:
        if self._talk is not None:
            self._talk.cancel()
            await asyncio.gather(self._talk, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def _status(database, call_id: str) -> tuple[str, str | None]:
    async with database.session() as session:
        call = await session.get(Call, call_id, populate_existing=True)
        assert call is not None
        return call.status, call.failure_reason


async def test_sigterm_drains_live_calls_then_ends_what_is_left(database, tmp_path):
    env = await node_env(
        database,
        tmp_path,
        RELAY_DRAIN_SECONDS="3",
        RELAY_STT="pocketsphinx",
        RELAY_TTS="espeak",
        RELAY_LOG_LEVEL="INFO",
    )
    node = Node(env, tmp_path / "relay.log", "draining")
    handsets: list[Handset] = []
    try:
        await node.start()
        async with database.session() as session:
            key, _ = await create_key(session, "drain")
        async with aiohttp.ClientSession() as http:
            agent = await api(
                http, node, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"}, 201,
            )  # fmt: skip
            number = await api(
                http, node, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201
            )
        handsets = [Handset(node, key, number["phoneNumber"]) for _ in range(2)]
        for handset in handsets:
            await handset.dial()
        finishing, left = handsets

        async def both_live() -> bool:
            got = [await _status(database, h.call_id) for h in handsets]
            return all(s == "in_progress" for s, _ in got)

        await until(both_live, within=60)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        await asyncio.sleep(1.0)
        # Draining: both calls still up, and the node takes no new work.
        assert await both_live()
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(node.base + "/healthz")
        await finishing.hang_up()  # this caller finishes on their own during the drain
        assert await asyncio.wait_for(node.proc.wait(), 30) == 0
        took = time.monotonic() - stopped
        assert 3.0 <= took < 3.0 + 12, took  # the drain, then the end of what was left
        assert await _status(database, finishing.call_id) == ("completed", None)
        assert await _status(database, left.call_id) == ("failed", "relay_restart")
    finally:
        for handset in handsets:
            await handset.close()
        await node.stop()
        print(node.log.read_text()[-3000:], file=sys.stderr)
