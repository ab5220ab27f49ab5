"""A request for a live call that lands on another node reaches the node that runs it."""

from __future__ import annotations

import sys
import time

import aiohttp
from sqlalchemy import select

from relay.auth import create_key
from relay.store.models import CallLease, NodeCommand
from tests.cluster.harness import Node, api, node_env, until


async def test_a_call_dialled_by_a_is_ended_through_b_within_a_second(database, tmp_path):
    env = await node_env(database, tmp_path)
    a = Node(env, tmp_path / "a.log", "node-a")
    b = Node(env, tmp_path / "b.log", "node-b")
    try:
        await a.start()
        await b.start()
        async with database.session() as session:
            key, _ = await create_key(session, "two-nodes")
        async with aiohttp.ClientSession() as http:
            agent = await api(
                http, a, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": "http://127.0.0.1:9/hook"}, 201,
            )  # fmt: skip
            await api(http, a, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201)
            call = await api(
                http, a, key, "POST", "/v1/calls",
                {"agentId": agent["id"], "to": "+14155550123"}, 202,
            )  # fmt: skip
            path = f"/v1/calls/{call['id']}"

            async def ringing() -> bool:
                got = await api(http, b, key, "GET", path)
                return bool(got["status"] == "ringing")

            await until(ringing)
            async with database.session() as session:
                lease = await session.get(CallLease, call["id"])
            assert lease is not None and lease.node_id == "node-a"

            began = time.monotonic()
            ended = await api(http, b, key, "POST", path + "/end")
            took = time.monotonic() - began
            assert (ended["status"], ended["failureReason"]) == ("failed", "canceled")
            assert took < 1.0, took
            # Node A stopped its own dial (B did not just write the end over it).
            events = await api(http, b, key, "GET", path + "/events")
            messages = [e["message"] for e in events["data"]]
            assert "Dialling was stopped." in messages
            assert "Ended through the API." not in messages
            async with database.session() as session:
                assert (await session.execute(select(NodeCommand))).first() is None
                assert await session.get(CallLease, call["id"]) is None
            # Ended is ended, on either node.
            await api(http, a, key, "POST", path + "/end", status=409)
    finally:
        await a.stop()
        await b.stop()
        print(a.log.read_text()[-2000:], b.log.read_text()[-2000:], file=sys.stderr)
