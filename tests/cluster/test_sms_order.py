"""Texts of one conversation that reach two nodes in turn are answered one at a time, in order."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web
from sqlalchemy import select

from relay.auth import create_key
from relay.store.models import Message
from tests.cluster.harness import Node, api, node_env, until

TEXTS = 8


class Webhook:
    """The agent's webhook: slow enough that texts pile up behind the one being answered."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.texts.append(payload["data"]["text"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.15)
            return web.json_response({"text": "You said: " + payload["data"]["text"]})
        finally:
            self.in_flight -= 1


async def test_texts_alternating_between_nodes_are_answered_in_order(
    database, tmp_path, aiohttp_server
):
    hook = Webhook()
    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(hook_app)
    env = await node_env(database, tmp_path)
    nodes = [Node(env, tmp_path / "a.log", "node-a"), Node(env, tmp_path / "b.log", "node-b")]
    try:
        for node in nodes:
            await node.start()
        async with database.session() as session:
            key, _ = await create_key(session, "sms-two-nodes")
        async with aiohttp.ClientSession() as http:
            agent = await api(
                http, nodes[0], key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": str(server.make_url("/hook"))}, 201,
            )  # fmt: skip
            number = await api(
                http, nodes[0], key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201
            )
            for n in range(TEXTS):
                body = {"to": number["phoneNumber"], "from": "+14155550100", "text": f"text {n}"}
                await api(http, nodes[n % 2], key, "POST", "/carriers/sim/sms", body)
                await asyncio.sleep(0.03)

        async def answered() -> list[Message] | None:
            async with database.session() as session:
                rows = list(
                    (await session.execute(select(Message).order_by(Message.seq))).scalars()
                )
            replies = [m for m in rows if m.direction == "outbound" and m.status != "queued"]
            return rows if len(replies) == TEXTS else None

        rows = await until(answered, within=30)
        asked = [m for m in rows if m.direction == "inbound"]
        assert [m.text for m in asked] == [f"text {n}" for n in range(TEXTS)]
        assert hook.texts == [f"text {n}" for n in range(TEXTS)]
        assert hook.most_in_flight == 1
        # Each reply is stored (seq) after the one before it, answering the texts in order.
        replies = [m for m in rows if m.direction == "outbound"]
        assert [m.in_reply_to for m in replies] == [m.id for m in asked]
        assert [m.text for m in replies] == [f"You said: text {n}" for n in range(TEXTS)]
    finally:
        for node in nodes:
            await node.stop()
        print(*(n.log.read_text()[-2000:] for n in nodes), file=sys.stderr)
