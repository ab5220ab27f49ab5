"""A real ``relay serve`` killed with SIGKILL in the middle of a batch, restarted on the same
database: every recipient ends, each dialled once (or again by the retry policy, never two
calls at a time), no call is left live or outside the batch's books."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
from sqlalchemy import func, select

from relay.auth import create_key
from relay.store.models import Call, CallEvent
from tests.api.test_batches import distinct_numbers
from tests.cluster.harness import Node, api, node_env

BUSY = [f"+1{code}5550188" for code in ("415", "212", "312", "206", "617", "512")]


async def test_a_relay_killed_mid_batch_finishes_it_after_restart(database, tmp_path):
    env = await node_env(
        database,
        tmp_path,
        RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="0.3",
        RELAY_DIAL_QUEUE_INTERVAL_SECONDS="0.05",
    )
    relay = Node(env, tmp_path / "relay.log", "node-under-test")
    numbers = BUSY + distinct_numbers(54)
    try:
        await relay.start()
        async with database.session() as session:
            key, _ = await create_key(session, "kill-test")
        async with aiohttp.ClientSession() as http:
            await api(http, relay, key, "PATCH", "/v1/project", {"maxConcurrentCalls": 5})
            agent = await api(
                http,
                relay,
                key,
                "POST",
                "/v1/agents",
                {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"},
                201,
            )
            await api(http, relay, key, "POST", "/v1/numbers", {"agentId": agent["id"]}, 201)
            batch = await api(
                http,
                relay,
                key,
                "POST",
                "/v1/calls/batch",
                {
                    "agentId": agent["id"],
                    "recipients": [{"to": n} for n in numbers],
                    "retry": {"attempts": 2, "backoff": 0, "on": ["busy"]},
                },
                202,
            )
            path = f"/v1/batches/{batch['id']}"
            deadline = time.monotonic() + 60
            while True:  # kill it with calls ringing and recipients both done and waiting
                seen = await api(http, relay, key, "GET", path)
                ended = seen["counts"]["failed"] + seen["counts"]["completed"]
                async with database.session() as session:
                    ringing = (
                        await session.execute(select(func.count()).where(Call.status == "ringing"))
                    ).scalar_one()
                if ended >= 15 and ringing >= 2:
                    break
                assert time.monotonic() < deadline, seen["counts"]
                await asyncio.sleep(0.01)
            await relay.kill()
            async with database.session() as session:
                live_at_kill = set(
                    (
                        await session.execute(
                            select(Call.id).where(Call.status.in_(("connecting", "ringing")))
                        )
                    ).scalars()
                )
            assert live_at_kill  # the kill caught calls ringing

            await relay.start()
            deadline = time.monotonic() + 120
            while (done := await api(http, relay, key, "GET", path))["state"] != "completed":
                assert time.monotonic() < deadline, done["counts"]
                await asyncio.sleep(0.1)
            stats = await api(http, relay, key, "GET", "/v1/calls/queue/stats")
    finally:
        await relay.stop()

    recipients = done["recipients"]
    assert len(recipients) == 60
    assert done["counts"]["failed"] == 60
    assert stats["active"] == stats["waiting"] == stats["scheduled"] == 0
    call_ids = [c for r in recipients for c in r["callIds"]]
    assert len(call_ids) == len(set(call_ids))
    async with database.session() as session:
        calls = {c.id: c for c in (await session.execute(select(Call))).scalars()}
        connecting = Counter(
            (
                await session.execute(
                    select(CallEvent.call_id).where(CallEvent.message == "status -> connecting")
                )
            ).scalars()
        )
    # Nothing lost or made outside the books, nothing left live, nothing dialled twice.
    assert set(calls) == set(call_ids)
    assert {c.status for c in calls.values()} == {"failed"}
    assert max(connecting.values()) == 1
    restarted = {c.id for c in calls.values() if c.failure_reason == "relay_restart"}
    assert restarted == live_at_kill
    for r in recipients:
        assert r["attempts"] == len(r["callIds"])
        reasons = [calls[c].failure_reason for c in r["callIds"]]
        if r["to"] in BUSY:
            # Busy is retried once; a call the kill cut short ("failed") is not.
            assert reasons in (["busy", "busy"], ["relay_restart"], ["busy", "relay_restart"])
        else:
            assert reasons in (["no_answer"], ["relay_restart"])
        # One call at a time per recipient: each began after the one before it ended.
        for before, after in zip(r["callIds"], r["callIds"][1:], strict=False):
            assert calls[after].created_at >= calls[before].ended_at
