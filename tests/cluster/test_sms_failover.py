"""A node killed while it answers a conversation's text: the survivor takes its claim over
when it buries the node (within RELAY_NODE_TIMEOUT_SECONDS and a beat), not when the claim's
300 s lease runs out, and answers the conversation in order."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
from aiohttp import web
from sqlalchemy import select

from relay.auth import create_key
from relay.store.models import Message
from sms.worker import CLAIM_TIMEOUT
from tests.cluster.harness import Node, api, node_env, until

NODE_TIMEOUT = 3.0


class Webhook:
    """The agent's webhook: sits on the first text until told to let go."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        text = (await request.json())["data"]["text"]
        self.texts.append(text)
        if len(self.texts) == 1:
            await self.release.wait()  # in flight when its node dies; the answer goes nowhere
        return web.json_response({"text": "You said: " + text})


async def test_a_killed_nodes_conversation_is_answered_by_the_survivor_in_order(
    database, tmp_path, aiohttp_server
):
    hook = Webhook()
    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(hook_app)
    env = await node_env(database, tmp_path, RELAY_NODE_TIMEOUT_SECONDS=str(NODE_TIMEOUT))
    a, b = Node(env, tmp_path / "a.log", "node-a"), Node(env, tmp_path / "b.log", "node-b")
    try:
        await a.start()
        await b.start()
        async with database.session() as session:
            key, _ = await create_key(session, "sms-failover")
        async with aiohttp.ClientSession() as http:
            agent = await api(
                http, a, key, "POST", "/v1/agents",
                {"name": "A", "webhookUrl": str(server.make_url("/hook"))}, 201,
            )  # fmt: skip
            number = await api(http, a, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201)

            async def text(node: Node, words: str) -> None:
                body = {"to": number["phoneNumber"], "from": "+14155550100", "text": words}
                await api(http, node, key, "POST", "/carriers/sim/sms", body)

            await text(a, "text 0")
            await until(lambda: _true(hook.texts == ["text 0"]))
            async with database.session() as session:
                claimed = (await session.execute(select(Message))).scalar_one()
            assert (claimed.work, claimed.claimed_by) == ("claimed", "node-a")

            await a.kill()
            killed = time.monotonic()
            hook.release.set()
            await text(b, "text 1")
            await text(b, "text 2")

            async def answered() -> list[Message] | None:
                async with database.session() as session:
                    rows = list(
                        (await session.execute(select(Message).order_by(Message.seq))).scalars()
                    )
                replies = [m for m in rows if m.direction == "outbound" and m.status != "queued"]
                return rows if len(replies) == 3 else None

            rows = await until(answered, within=CLAIM_TIMEOUT.total_seconds() / 10)
            took = time.monotonic() - killed
        # Taken over when node-b buried node-a: a heartbeat timeout and at most one beat.
        assert took < NODE_TIMEOUT + NODE_TIMEOUT / 3 + 2, took
        asked = [m for m in rows if m.direction == "inbound"]
        assert [m.text for m in asked] == ["text 0", "text 1", "text 2"]
        assert all(m.work == "done" for m in rows)
        # The text in flight at the kill asked again (at least once), then the rest in order.
        assert hook.texts == ["text 0", "text 0", "text 1", "text 2"]
        replies = [m for m in rows if m.direction == "outbound"]
        assert [m.in_reply_to for m in replies] == [m.id for m in asked]
        assert [m.text for m in replies] == [f"You said: text {n}" for n in range(3)]
    finally:
        hook.release.set()
        await a.stop()
        await b.stop()
        print(a.log.read_text()[-2000:], b.log.read_text()[-2000:], file=sys.stderr)


async def _true(value: bool) -> bool:
    return value
