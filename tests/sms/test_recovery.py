"""Nothing is lost: a text stored but not answered when the relay stopped (cleanly or not)
is answered after the next start."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from relay.calls.recovery import RECOVERY
from relay.store.models import Message, RelayNode, utcnow
from tests.sms.conftest import HANDSET, eventually, make_agent, sim_text, sms_of


async def work_of(database, message_id):
    async with database.session() as session:
        return (
            await session.execute(select(Message.work).where(Message.id == message_id))
        ).scalar_one()


async def test_a_clean_stop_mid_turn_hands_the_text_to_the_next_start(
    client, auth, hook, database, app_client, settings
):
    agent = await make_agent(client, auth, hook)
    never = asyncio.Event()

    async def hang(payload):
        await never.wait()

    hook.reply = hang
    sms_of(client).shutdown_grace = 0.05
    got = await sim_text(client, auth, agent.number, "are you there?", wait=0)
    await eventually(lambda: hook.in_flight == 1)
    await client.close()  # the relay stops while the webhook is thinking
    assert await work_of(database, got["messageId"]) == "pending"

    hook.reply = lambda p: {"text": "Yes, sorry for the wait."}
    restarted = await app_client(settings)
    await sms_of(restarted).queues.idle()
    assert hook.texts() == ["are you there?", "are you there?"]  # at least once
    assert [t.text for t in sms_of(restarted).sim.inbox(HANDSET)] == ["Yes, sorry for the wait."]
    assert await work_of(database, got["messageId"]) == "done"
    never.set()


async def test_a_crash_leaves_claims_that_the_next_start_takes_over(
    client, auth, hook, database, app_client, settings
):
    agent = await make_agent(client, auth, hook)
    queues = sms_of(client).queues
    queues._closed = True  # this relay stores texts but never gets to answer them
    first = await sim_text(client, auth, agent.number, "one", wait=0)
    second = await sim_text(client, auth, agent.number, "two", wait=0)
    async with database.session() as session:  # as if a worker had claimed it, then died
        await session.execute(
            update(Message)
            .where(Message.id == first["messageId"])
            .values(work="claimed", claimed_at=utcnow() - timedelta(hours=1))
        )
    await client.close()

    restarted = await app_client(settings)
    await sms_of(restarted).queues.idle()
    assert hook.texts() == ["one", "two"]
    assert [t.text for t in sms_of(restarted).sim.outbox] == ["You said: one", "You said: two"]
    for got in (first, second):
        assert await work_of(database, got["messageId"]) == "done"


async def test_a_fresh_claim_of_another_node_is_left_alone(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    svc = sms_of(client)
    svc.queues._closed = True
    got = await sim_text(client, auth, agent.number, "mine", wait=0)
    async with database.session() as session:
        await session.execute(
            update(Message)
            .where(Message.id == got["messageId"])
            .values(work="claimed", claimed_at=utcnow())
        )
    svc.queues._closed = False
    assert await svc.recover() == 0  # a running sweep: the claim is young, its node is alive
    assert await work_of(database, got["messageId"]) == "claimed"


async def test_a_dead_nodes_claims_are_taken_over_when_it_is_buried(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    svc = sms_of(client)
    svc.queues._closed = True
    dead = await sim_text(client, auth, agent.number, "from the dead one", wait=0)
    alive = await sim_text(  # another conversation, which a live node is answering
        client, auth, agent.number, "held elsewhere", frm="+14155550199", wait=0
    )
    long_ago = utcnow() - timedelta(minutes=5)
    async with database.session() as session:  # fresh claims: the lease would keep them 300 s
        for got, node in ((dead, "node-dead"), (alive, "node-alive")):
            await session.execute(
                update(Message)
                .where(Message.id == got["messageId"])
                .values(work="claimed", claimed_at=utcnow(), claimed_by=node)
            )
        session.add(RelayNode(id="node-dead", started_at=long_ago, heartbeat_at=long_ago))
    svc.queues._closed = False
    assert await svc.recover() == 0  # the sweep alone leaves both: young claims

    assert await client.app[RECOVERY].bury() == ["node-dead"]
    await eventually(lambda: hook.texts() == ["from the dead one"])
    await svc.queues.idle()
    assert await work_of(database, dead["messageId"]) == "done"
    assert await work_of(database, alive["messageId"]) == "claimed"  # its node is not dead


async def test_a_restart_takes_back_its_own_claims_at_once(
    client, auth, hook, database, app_client, settings
):
    agent = await make_agent(client, auth, hook)
    sms_of(client).queues._closed = True
    got = await sim_text(client, auth, agent.number, "still there?", wait=0)
    async with database.session() as session:  # claimed a moment ago by this node, which died
        await session.execute(
            update(Message)
            .where(Message.id == got["messageId"])
            .values(work="claimed", claimed_at=utcnow(), claimed_by=settings.effective_node_id())
        )
    await client.close()

    restarted = await app_client(settings)
    await sms_of(restarted).queues.idle()
    assert hook.texts() == ["still there?"]
    assert await work_of(database, got["messageId"]) == "done"
