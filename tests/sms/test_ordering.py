"""Texts of one conversation reach the webhook in arrival order, one at a time; different
conversations are answered in parallel."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from relay.store.models import Message
from tests.sms.conftest import make_agent, sim_text, sms_of


async def test_a_burst_of_twenty_arrives_in_order_one_at_a_time(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.delay = 0.01
    for i in range(20):  # sent back to back, none waits for an answer
        await sim_text(client, auth, agent.number, f"text {i:02d}", wait=0)
    await sms_of(client).queues.idle()
    assert hook.texts() == [f"text {i:02d}" for i in range(20)]
    assert hook.max_in_flight == 1
    replies = [t.text for t in sms_of(client).sim.outbox]
    assert replies == [f"You said: text {i:02d}" for i in range(20)]


async def test_a_concurrent_burst_is_answered_in_the_order_it_was_stored(
    client, auth, hook, database
):
    agent = await make_agent(client, auth, hook)
    hook.delay = 0.01
    await asyncio.gather(
        *(sim_text(client, auth, agent.number, f"text {i:02d}", wait=0) for i in range(20))
    )
    await sms_of(client).queues.idle()
    async with database.session() as session:
        stored = (
            await session.execute(
                select(Message.text).where(Message.direction == "inbound").order_by(Message.seq)
            )
        ).scalars()
        arrival = list(stored)
    assert len(arrival) == 20
    assert hook.texts() == arrival
    assert hook.max_in_flight == 1
    history_sizes = [len(p["recentHistory"]) for p in hook.received]
    assert history_sizes == sorted(history_sizes)  # each turn sees the earlier ones


async def test_conversations_are_answered_in_parallel(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    everyone = asyncio.Event()

    async def wait_for_all_five(payload):
        if hook.in_flight == 5:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 10)  # one at a time would never get here
        return {"text": "hello everyone"}

    hook.reply = wait_for_all_five
    handsets = [f"+120255501{i:02d}" for i in range(50, 55)]
    for handset in handsets:
        await sim_text(client, auth, agent.number, "hi", frm=handset, wait=0)
    await sms_of(client).queues.idle()
    assert hook.max_in_flight == 5
    assert sorted(t.to_number for t in sms_of(client).sim.outbox) == handsets
    assert {t.text for t in sms_of(client).sim.outbox} == {"hello everyone"}


async def test_each_turn_sees_the_state_and_history_its_predecessors_left(client, auth, hook):
    # The first text of an idle conversation reads its turn when it is stored (one
    # transaction less); texts arriving while it is answered must not: they would see the
    # state before its answer. Each turn counts up the state the one before it set.
    agent = await make_agent(client, auth, hook)
    hook.delay = 0.01

    def count(payload):
        seen = payload["conversationState"].get("n", 0)
        return {"text": f"turn {seen}", "state": {"n": seen + 1}}

    hook.reply = count
    for round_ in range(3):  # a burst, then the conversation goes idle, three times
        for i in range(4):
            await sim_text(client, auth, agent.number, f"r{round_} t{i}", wait=0)
        await sms_of(client).queues.idle()
    assert [p["conversationState"].get("n", 0) for p in hook.received] == list(range(12))
    # A text's history is what was stored before it: the texts before it, and the replies
    # stored by then. The first of each round (sent once all is answered) sees everything.
    sizes = [len(p["recentHistory"]) for p in hook.received]
    assert sizes == sorted(set(sizes))
    assert sizes[4] == 8 and sizes[8] == 16
    assert [t.text for t in sms_of(client).sim.outbox] == [f"turn {i}" for i in range(12)]
    assert sms_of(client).read_ahead == {}
