"""A real ``relay serve`` killed with SIGKILL in the middle of delivering webhooks, restarted:
every event arrives, duplicates carry the same webhook-id, live calls are closed."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import aiohttp
from aiohttp import web

from relay.auth import create_key
from tests.cluster.harness import Node, api, node_env
from tests.events.receiver import Received, Receiver

ORDER = ["call.queued", "call.connecting", "call.ringing", "call.in_progress", "call.failed"]


def arrived(got: list[Received], call_id: str, type_: str) -> bool:
    return any(r.call_id == call_id and r.type == type_ for r in got)


async def test_a_relay_killed_mid_delivery_delivers_everything_after_restart(database, tmp_path):
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
    # The delivery's own lease (2 x 60 + 5 s) would run out long after the test: what sends
    # the held deliveries again is the restart's recovery.
    env = await node_env(database, tmp_path, RELAY_WEBHOOK_DELIVERY_TIMEOUT_SECONDS="60")
    relay = Node(env, tmp_path / "relay.log", "node-under-test")
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
