"""A burst of lifecycle events made on two nodes reaches the endpoint once each, in order."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import aiohttp
from aiohttp import web

from relay.auth import create_key
from tests.cluster.harness import Node, api, node_env
from tests.events.receiver import Received, Receiver

CALLS = 20
EACH = ["call.queued", "call.connecting", "call.failed"]


async def test_events_made_on_two_nodes_are_delivered_once_each(database, tmp_path):
    receiver = Receiver()
    await receiver.start()
    env = await node_env(database, tmp_path)
    nodes = [Node(env, tmp_path / "a.log", "node-a"), Node(env, tmp_path / "b.log", "node-b")]
    try:
        for node in nodes:
            await node.start()
        async with database.session() as session:
            key, _ = await create_key(session, "burst")
        async with aiohttp.ClientSession() as http:
            a, b = nodes
            await api(http, a, key, "POST", "/v1/webhook-endpoints", {"url": receiver.url}, 201)
            agent = await api(
                http, a, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"}, 201,
            )  # fmt: skip
            byot = {"agentId": agent["id"], "connectionType": "websocket"}

            async def one(n: int) -> str:
                made, other = nodes[n % 2], nodes[(n + 1) % 2]
                call = await api(http, made, key, "POST", "/v1/calls", byot, 201)
                await api(http, other, key, "POST", f"/v1/calls/{call['id']}/end")
                return str(call["id"])

            call_ids = await asyncio.gather(*(one(n) for n in range(CALLS)))
        got = await receiver.wait_count(CALLS * len(EACH), within=30)
        await asyncio.sleep(1.0)  # anything extra would arrive now
        ids = Counter(r.webhook_id for r in got)
        assert len(got) == CALLS * len(EACH) and set(ids.values()) == {1}
        for call_id in call_ids:
            assert [r.type for r in got if r.call_id == call_id] == EACH
    finally:
        for node in nodes:
            await node.stop()
        await receiver.stop()
        print(*(n.log.read_text()[-2000:] for n in nodes), file=sys.stderr)


async def test_a_delivery_behind_another_nodes_is_sent_when_that_one_is_answered(
    database, tmp_path
):
    """A call made on node A and ended on node B: B's ``call.failed`` must wait behind A's
    ``call.connecting``, still unanswered. A, told by B (relay.events.nudge), sends it as soon
    as its own is answered, not at its next sweep of the outbox (1 s to 5 s)."""
    release = asyncio.Event()

    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.type == "call.connecting":
            await release.wait()
        return web.Response(status=204)

    receiver = Receiver(answer)
    await receiver.start()
    env = await node_env(database, tmp_path)
    a, b = Node(env, tmp_path / "a.log", "node-a"), Node(env, tmp_path / "b.log", "node-b")
    try:
        await a.start()
        await b.start()
        async with database.session() as session:
            key, _ = await create_key(session, "lanes")
        async with aiohttp.ClientSession() as http:
            await api(http, a, key, "POST", "/v1/webhook-endpoints", {"url": receiver.url}, 201)
            agent = await api(
                http, a, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"}, 201,
            )  # fmt: skip
            byot = {"agentId": agent["id"], "connectionType": "websocket"}
            await asyncio.sleep(6)  # both nodes' sweeps back off to their idle 5 s
            call = await api(http, a, key, "POST", "/v1/calls", byot, 201)
            await receiver.wait_for(lambda got: any(r.type == "call.connecting" for r in got))
            await api(http, b, key, "POST", f"/v1/calls/{call['id']}/end", None, 200)
            await asyncio.sleep(0.3)  # B's transaction made call.failed, behind A's
            released = time.monotonic()
            release.set()
            got = await receiver.wait_for(lambda got: any(r.type == "call.failed" for r in got))
            took = time.monotonic() - released
        assert [r.type for r in got] == ["call.queued", "call.connecting", "call.failed"]
        assert took < 0.8, took  # a sweep would have taken 1-5 s
    finally:
        await a.stop()
        await b.stop()
        await receiver.stop()
        print(a.log.read_text()[-2000:], b.log.read_text()[-2000:], file=sys.stderr)
