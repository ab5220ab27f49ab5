"""The dialling queue's claims between relay nodes sharing one database (SQLite and
PostgreSQL): a project's cap holds across nodes, no job is claimed twice, a claimed call is
held by its claimer from the claim on, and a queued call a dead node left unheld is dialled by
a live one."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, update

from relay.app import create_app
from relay.calls import batches
from relay.calls.dial_queue import DIAL_QUEUE, DialQueue
from relay.config import Settings
from relay.store.models import Call, CallLease, DialJob, Project, RelayNode, utcnow
from tests.api.test_calls import BASE, new_agent, new_number


@pytest.fixture
async def client(database, aiohttp_client):
    app = create_app(Settings(**BASE), db=database)
    client = await aiohttp_client(app)
    # This test plays the nodes itself: the app's own claimer stays out of the way.
    await app[DIAL_QUEUE].stop()
    return client


class Node:
    """A relay node's claimer, whose dialler only writes down what it was handed."""

    def __init__(self, database, name: str, dial_rate: float = 0.0) -> None:
        self.dialled: list[str] = []
        self.queue = DialQueue(
            database,
            lambda claimed: self.dialled.append(claimed.call_id),
            lambda call_id: call_id in self.dialled,
            node_id=name,
            node_timeout=30,
            dial_rate=dial_rate,
        )


async def batch_of(client, auth, database, count: int, **fields) -> str:
    """A batch of ``count`` recipients; returns the project's id."""
    project_id = (await (await client.get("/v1/project", headers=auth)).json())["id"]
    agent = await new_agent(client, auth)
    number = await new_number(client, auth, agent["id"])
    rows = [(i, batches.Recipient(f"+1415555{i + 1000:04d}")) for i in range(count)]
    async with database.session() as session:
        batches.create(
            session,
            project_id=project_id,
            agent_id=agent["id"],
            number_id=number["id"],
            recipients=rows,
            invalid=[],
            scheduled_at=None,
            window=None,
            max_concurrency=fields.get("max_concurrency"),
            retry={"attempts": 1, "backoff": 0, "on": []},
        )
    return project_id


async def set_cap(database, project_id: str, cap: int | None) -> None:
    async with database.session() as session:
        (await session.get(Project, project_id)).max_concurrent_calls = cap


async def test_two_nodes_never_claim_more_than_the_cap_or_a_job_twice(client, auth, database):
    project = await batch_of(client, auth, database, 40)
    await set_cap(database, project, 7)
    nodes = [Node(database, f"node-{i}") for i in range(3)]
    claimed: list[str] = []
    for _ in range(3):
        for got in await asyncio.gather(*(n.queue.claim(project) for n in nodes)):
            claimed.extend(c.call_id for c in got)
    assert len(claimed) == len(set(claimed)) == 7
    async with database.session() as session:
        active = (
            await session.execute(select(func.count()).where(DialJob.state == "active"))
        ).scalar_one()
        calls = (await session.execute(select(func.count()).select_from(Call))).scalar_one()
    assert active == 7
    assert calls == 7  # a batch recipient's call exists once it is claimed, not before


async def test_two_nodes_share_the_carriers_dial_rate(client, auth, database):
    """2 calls a second, a burst of 2: in 2 s the deployment starts 5 calls, not 5 per node
    (the limit is a row in the database, relay.calls.dial_rate)."""
    project = await batch_of(client, auth, database, 30)
    nodes = [Node(database, f"node-{i}", dial_rate=2) for i in range(2)]
    claimed: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        for got in await asyncio.gather(*(n.queue.claim(project) for n in nodes)):
            claimed.extend(c.call_id for c in got)
        await asyncio.sleep(0.05)
    assert len(claimed) == len(set(claimed))
    assert 4 <= len(claimed) <= 6, len(claimed)  # one limit per node would allow 10


async def test_a_batch_cap_holds_under_a_larger_project_cap(client, auth, database):
    project = await batch_of(client, auth, database, 10, max_concurrency=3)
    await set_cap(database, project, 8)
    node = Node(database, "node-a")
    await node.queue.tick()
    await node.queue.tick()
    assert len(node.dialled) == 3


async def test_a_claim_holds_its_calls_so_no_other_node_dials_them(client, auth, database):
    project = await batch_of(client, auth, database, 4)
    async with database.session() as session:
        session.add(RelayNode(id="node-dead", heartbeat_at=utcnow() - timedelta(minutes=5)))
    dead = Node(database, "node-dead")
    claimed = [c.call_id for c in await dead.queue.claim(project)]  # then it died
    assert len(claimed) == 4
    async with database.session() as session:
        calls = (await session.execute(select(Call.status))).scalars().all()
        holders = (await session.execute(select(CallLease.node_id))).scalars().all()
    # Claimed and moved to connecting in one transaction: held by its claimer, so recovery
    # (not another claimer) ends them if that node is dead.
    assert calls == ["connecting"] * 4
    assert holders == ["node-dead"] * 4
    other = Node(database, "node-b")
    assert await other.queue.adopt() == []
    assert other.dialled == []


async def test_a_dead_nodes_unheld_queued_calls_are_dialled_by_a_live_one(client, auth, database):
    project = await batch_of(client, auth, database, 4)
    dead = Node(database, "node-dead")
    async with database.session() as session:
        session.add(RelayNode(id="node-dead", heartbeat_at=utcnow() - timedelta(minutes=5)))
        session.add(RelayNode(id="node-alive", heartbeat_at=utcnow()))
        session.add(RelayNode(id="node-b", heartbeat_at=utcnow()))
    claimed = [c.call_id for c in await dead.queue.claim(project)]
    assert len(claimed) == 4
    async with database.session() as session:
        # What a relay before claims held their calls left when it died between its claim
        # and its dialler's: the job active, its call queued, nobody holding it.
        await session.execute(delete(CallLease))
        await session.execute(update(Call).values(status="queued"))
    other = Node(database, "node-b")
    assert sorted(await other.queue.adopt()) == sorted(claimed)
    assert sorted(other.dialled) == sorted(claimed)
    async with database.session() as session:
        holders = set(
            (await session.execute(select(DialJob.node_id).where(DialJob.state == "active")))
            .scalars()
            .all()
        )
        leases = (await session.execute(select(CallLease.node_id))).scalars().all()
        calls = (await session.execute(select(Call.status))).scalars().all()
    assert holders == {"node-b"}
    assert leases == ["node-b"] * 4
    assert calls == ["connecting"] * 4
    # Claimed by a node that is alive: nobody else touches them.
    assert await Node(database, "node-alive").queue.adopt() == []
