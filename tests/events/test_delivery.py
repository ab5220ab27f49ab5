"""Lifecycle webhooks: signed, retried, ordered per call, every attempt recorded."""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate

import pytest
from aiohttp import web
from sqlalchemy import select

from relay.config import Settings
from relay.events import next_delay, retry_after_seconds
from relay.store.models import WebhookDelivery
from tests.events.conftest import add_endpoint, emit_events, key_headers, project_id
from tests.events.receiver import Received, Receiver


async def deliveries(client, auth, endpoint_id, **params):
    resp = await client.get(
        f"/v1/webhook-endpoints/{endpoint_id}/deliveries", params=params, headers=auth
    )
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def settled(client, auth, endpoint_id, count, within=10.0):
    """Wait until ``count`` deliveries exist and none is pending."""
    deadline = time.monotonic() + within
    while True:
        data = await deliveries(client, auth, endpoint_id)
        if len(data) >= count and all(d["status"] != "pending" for d in data):
            return data
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.05)


async def test_a_state_change_arrives_signed_with_the_event(client, auth, database, receiver):
    endpoint = await add_endpoint(client, auth, receiver.url)
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "A", "webhookUrl": "http://127.0.0.1:9/x"}, headers=auth
        )
    ).json()
    resp = await client.post(
        "/v1/calls",
        json={"agentId": agent["id"], "connectionType": "websocket", "metadata": {"k": "v"}},
        headers=auth,
    )
    call = await resp.json()
    got = await receiver.wait_count(2)
    assert [r.type for r in got] == ["call.queued", "call.connecting"]
    for r in got:
        payload = r.verify(endpoint["secret"])
        assert payload["data"]["callId"] == call["id"]
        assert payload["data"]["agentId"] == agent["id"]
        assert payload["data"]["metadata"] == {"k": "v"}
        assert payload["id"].startswith("evt_")
        assert payload["timestamp"].endswith("Z")
        assert r.webhook_id.startswith("msg_")
        assert r.headers["Content-Type"] == "application/json"
    assert got[1].json["data"]["status"] == "connecting"
    assert len({r.webhook_id for r in got}) == 2


async def test_a_failing_receiver_gets_retries_with_the_same_webhook_id(
    client, auth, database, receiver
):
    async def flaky(got: Received, n: int) -> web.StreamResponse:
        return web.Response(status=500, text="boom") if n <= 3 else web.Response(status=200)

    receiver.answer = flaky
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    got = await receiver.wait_count(4)
    assert len({r.webhook_id for r in got}) == 1
    assert len({r.body for r in got}) == 1
    for r in got:
        r.verify(endpoint["secret"])
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert d["status"] == "succeeded"
    assert d["id"] == got[0].webhook_id
    assert d["attempts"] == 4
    assert d["deliveredAt"] is not None
    assert d["nextAttemptAt"] is None
    log = d["attemptLog"]
    assert [a["statusCode"] for a in log] == [500, 500, 500, 200]
    assert [a["number"] for a in log] == [1, 2, 3, 4]
    assert re.fullmatch(r"HTTP 500 \(4 bytes in \d+ ms\)", log[0]["error"]), log[0]["error"]
    assert log[-1]["error"] is None
    assert all(a["latencyMs"] >= 0 for a in log)
    await asyncio.sleep(0.2)
    assert len(receiver.requests) == 4  # nothing after success


async def test_delivery_fails_after_the_last_scheduled_attempt_and_can_be_retried(
    client, auth, database, receiver
):
    healthy = False

    async def answer(got: Received, n: int) -> web.StreamResponse:
        return web.Response(status=200 if healthy else 502)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert d["status"] == "failed"
    assert d["attempts"] == 5  # the schedule has five entries
    assert d["lastStatusCode"] == 502
    assert len(receiver.requests) == 5

    healthy = True
    resp = await client.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{d['id']}/retry", headers=auth
    )
    assert resp.status == 202
    assert (await resp.json())["status"] == "pending"
    got = await receiver.wait_count(6)
    assert got[-1].webhook_id == d["id"]
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert d["status"] == "succeeded"
    assert [a["statusCode"] for a in d["attemptLog"]] == [502] * 5 + [200]


async def test_connection_refused_and_timeouts_are_recorded(relay, database):
    slow = Receiver()

    async def hang(got: Received, n: int) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(status=200)

    slow.answer = hang
    await slow.start()
    try:
        client = await relay(webhook_delivery_timeout_seconds=0.3, webhook_retry_schedule="0")
        auth = await key_headers(database)
        refused = await add_endpoint(client, auth, "http://127.0.0.1:9/nothing-listens")
        timing_out = await add_endpoint(client, auth, slow.url)
        await emit_events(database, await project_id(database), ("call.queued", "call_1"))
        [r] = await settled(client, auth, refused["id"], 1)
        [t] = await settled(client, auth, timing_out["id"], 1)
    finally:
        await slow.stop()
    assert r["status"] == "failed"
    assert r["lastStatusCode"] is None
    assert "Connect" in r["lastError"]
    assert t["status"] == "failed"
    assert t["lastError"] == "no answer within 0.3 s"
    assert 250 <= t["attemptLog"][0]["latencyMs"] < 2000


async def test_a_receivers_body_never_comes_back_to_the_tenant(client, auth, database, receiver):
    inside = "root:x:0:0:root:/root:/bin/bash"  # what an internal service might answer

    async def leaky(got: Received, n: int) -> web.StreamResponse:
        return web.Response(status=500, text=inside)

    receiver.answer = leaky
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert d["status"] == "failed"
    assert re.fullmatch(r"HTTP 500 \(31 bytes in \d+ ms\)", d["lastError"]), d["lastError"]
    assert all("root" not in a["error"] for a in d["attemptLog"])


@pytest.mark.parametrize("allow_private", [False, True], ids=["checked", "private-allowed"])
async def test_an_endpoint_whose_name_resolves_to_loopback_is_refused_at_connect(
    relay, database, receiver, allow_private
):
    client = await relay(
        allow_private_webhooks=allow_private,
        webhook_hosts={"hooks.test": "127.0.0.1"},
        webhook_retry_schedule="0",
    )
    auth = await key_headers(database)
    # The name passes the check when the URL is saved; only its address gives it away.
    url = receiver.url.replace("127.0.0.1", "hooks.test")
    endpoint = await add_endpoint(client, auth, url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    [d] = await settled(client, auth, endpoint["id"], 1)
    if allow_private:
        assert d["status"] == "succeeded"
        assert len(receiver.requests) == 1
    else:
        assert d["status"] == "failed"
        assert d["lastStatusCode"] is None
        assert d["lastError"] == "hooks.test is not a public address"
        assert receiver.requests == []


async def test_410_gone_disables_the_endpoint_and_enabling_it_resumes(
    client, auth, database, receiver
):
    gone = True

    async def answer(got: Received, n: int) -> web.StreamResponse:
        return web.Response(status=410 if gone else 200)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "call_1"))
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert d["status"] == "failed"
    assert d["attempts"] == 1  # no retry after 410
    resp = await client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=auth)
    body = await resp.json()
    assert body["enabled"] is False
    assert "410" in body["disabledReason"]

    # While disabled nothing is queued for it, and a retry is refused.
    await emit_events(database, project, ("call.connecting", "call_1"))
    await asyncio.sleep(0.3)
    assert len(await deliveries(client, auth, endpoint["id"])) == 1
    assert len(receiver.requests) == 1
    resp = await client.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{d['id']}/retry", headers=auth
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "endpoint_disabled"

    gone = False
    resp = await client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": True}, headers=auth
    )
    assert (await resp.json())["disabledReason"] is None
    await emit_events(database, project, ("call.ringing", "call_1"))
    got = await receiver.wait_count(2)
    assert got[-1].type == "call.ringing"


async def test_retry_after_is_honoured_on_429(client, auth, database, receiver):
    async def answer(got: Received, n: int) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    receiver.answer = answer
    # The schedule alone would wait 50 ms; Retry-After says a second.
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    got = await receiver.wait_count(2, within=5)
    gap = got[1].at - got[0].at
    assert 0.95 <= gap < 2.0, gap
    [d] = await settled(client, auth, endpoint["id"], 1)
    assert [a["statusCode"] for a in d["attemptLog"]] == [429, 200]


async def test_retry_after_on_503_with_an_http_date(client, auth, database, receiver):
    async def answer(got: Received, n: int) -> web.StreamResponse:
        if n == 1:
            when = formatdate(time.time() + 2, usegmt=True)
            return web.Response(status=503, headers={"Retry-After": when})
        return web.Response(status=200)

    receiver.answer = answer
    await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "call_1"))
    got = await receiver.wait_count(2, within=6)
    assert 0.9 <= got[1].at - got[0].at < 3.0  # HTTP dates have whole seconds


async def test_a_later_event_of_a_call_waits_for_the_earlier_one(client, auth, database, receiver):
    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.call_id == "call_a" and got.type == "call.queued" and n <= 3:
            return web.Response(status=500)
        return web.Response(status=200)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(
        database,
        await project_id(database),
        ("call.queued", "call_a"),
        ("call.connecting", "call_a"),
        ("call.queued", "call_b"),
        ("call.in_progress", "call_a"),
        ("call.connecting", "call_b"),
        ("call.completed", "call_a"),
    )
    data = await settled(client, auth, endpoint["id"], 6)
    # Deliveries held back behind a failing one were not attempted meanwhile.
    attempts = {(d["orderingKey"], d["eventType"]): d["attempts"] for d in data}
    assert attempts == {
        ("call_a", "call.queued"): 4,
        ("call_a", "call.connecting"): 1,
        ("call_a", "call.in_progress"): 1,
        ("call_a", "call.completed"): 1,
        ("call_b", "call.queued"): 1,
        ("call_b", "call.connecting"): 1,
    }
    assert all(len(d["attemptLog"]) == d["attempts"] for d in data)
    got = receiver.requests
    for_a = [r.type for r in got if r.call_id == "call_a"]
    assert for_a == ["call.queued"] * 4 + ["call.connecting", "call.in_progress", "call.completed"]
    assert [r.type for r in got if r.call_id == "call_b"] == ["call.queued", "call.connecting"]
    # call_b did not wait for call_a's retries.
    first_b = next(i for i, r in enumerate(got) if r.call_id == "call_b")
    last_a_retry = max(
        i for i, r in enumerate(got) if r.call_id == "call_a" and r.type == "call.queued"
    )
    assert first_b < last_a_retry


async def test_events_made_while_an_earlier_one_is_sent_follow_it(client, auth, database, receiver):
    # call.queued is answered slowly: the later events of its call are made while it is on
    # the wire, and are handed to the worker by the transactions that make them.
    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.type == "call.queued":
            await asyncio.sleep(1.0)  # the next commits happen meanwhile, even on a busy machine
        return web.Response(status=204)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "c"))
    await receiver.wait_count(1)
    await emit_events(
        database, project, ("call.connecting", "c"), ("call.in_progress", "c"), ("call.queued", "d")
    )
    data = await settled(client, auth, endpoint["id"], 4)
    assert [r.type for r in receiver.requests if r.call_id == "c"] == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
    ]
    assert sorted((d["eventType"], d["status"], d["attempts"]) for d in data) == [
        ("call.connecting", "succeeded", 1),
        ("call.in_progress", "succeeded", 1),
        ("call.queued", "succeeded", 1),
        ("call.queued", "succeeded", 1),
    ]
    assert all(len(d["attemptLog"]) == 1 for d in data)
    # Another call's event did not wait behind the slow one.
    assert [r.call_id for r in receiver.requests].index("d") < 2


async def test_events_lined_up_behind_a_failing_one_wait_for_its_retries(
    client, auth, database, receiver
):
    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.type == "call.queued" and n <= 2:
            await asyncio.sleep(0.3)
            return web.Response(status=500)
        return web.Response(status=204)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "c"))
    await receiver.wait_count(1)
    # Made while call.queued is on the wire: lined up behind it, then sent back unattempted
    # when it fails.
    await emit_events(database, project, ("call.connecting", "c"), ("call.in_progress", "c"))
    data = await settled(client, auth, endpoint["id"], 3)
    assert [r.type for r in receiver.requests] == [
        "call.queued",
        "call.queued",
        "call.queued",
        "call.connecting",
        "call.in_progress",
    ]
    attempts = {d["eventType"]: (d["status"], d["attempts"], len(d["attemptLog"])) for d in data}
    assert attempts == {
        "call.queued": ("succeeded", 3, 3),
        "call.connecting": ("succeeded", 1, 1),
        "call.in_progress": ("succeeded", 1, 1),
    }


async def test_at_its_concurrency_the_worker_leaves_new_deliveries_in_the_outbox(
    relay, database, receiver
):
    # One request at a time: call "b"'s event cannot start a lane of its own while "a"'s
    # slow one is on the wire; it waits in the outbox and is claimed after it. "a"'s next
    # event joins the lane that is sending.
    client = await relay(webhook_delivery_concurrency=1)
    auth = await key_headers(database)

    async def answer(got: Received, n: int) -> web.StreamResponse:
        if got.call_id == "a" and got.type == "call.queued":
            await asyncio.sleep(1.0)  # the next commits happen meanwhile, even on a busy machine
        return web.Response(status=204)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "a"))
    await receiver.wait_count(1)
    await emit_events(database, project, ("call.queued", "b"), ("call.connecting", "a"))
    data = await settled(client, auth, endpoint["id"], 3)
    assert [(r.call_id, r.type) for r in receiver.requests] == [
        ("a", "call.queued"),
        ("a", "call.connecting"),
        ("b", "call.queued"),
    ]
    assert all((d["status"], d["attempts"]) == ("succeeded", 1) for d in data)


async def test_ordering_holds_after_retries_are_exhausted(client, auth, database, receiver):
    async def answer(got: Received, n: int) -> web.StreamResponse:
        return web.Response(status=500 if got.type == "call.queued" else 200)

    receiver.answer = answer
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(
        database, await project_id(database), ("call.queued", "c"), ("call.connecting", "c")
    )
    data = await settled(client, auth, endpoint["id"], 2)
    assert {d["eventType"]: d["status"] for d in data} == {
        "call.queued": "failed",
        "call.connecting": "succeeded",
    }
    assert [r.type for r in receiver.requests] == ["call.queued"] * 5 + ["call.connecting"]


async def test_an_endpoint_gets_only_the_types_it_asked_for(client, auth, database, receiver):
    everything = Receiver()
    await everything.start()
    try:
        await add_endpoint(client, auth, receiver.url, events=["call.failed", "call.completed"])
        await add_endpoint(client, auth, everything.url)
        await emit_events(
            database,
            await project_id(database),
            ("call.queued", "c"),
            ("call.connecting", "c"),
            ("call.failed", "c"),
        )
        await everything.wait_count(3)
        got = await receiver.wait_count(1)
        await asyncio.sleep(0.2)
        assert [r.type for r in got] == ["call.failed"]
        # Each endpoint has its own delivery (and webhook-id) for the same event.
        assert got[0].webhook_id != everything.requests[2].webhook_id
        assert got[0].json["id"] == everything.requests[2].json["id"]
    finally:
        await everything.stop()


async def test_events_of_another_project_are_not_delivered(
    client, auth, make_key, database, receiver
):
    await add_endpoint(client, auth, receiver.url)
    await make_key("proj-b")
    await emit_events(database, await project_id(database, "proj-b"), ("call.queued", "c"))
    await emit_events(database, await project_id(database), ("call.queued", "mine"))
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.2)
    assert [r.call_id for r in got] == ["mine"]


async def test_endpoint_changes_apply_to_the_next_event(client, auth, database, receiver):
    # An event fanned out first (no endpoint yet), then one after each change: on SQLite the
    # endpoints are kept in memory between transactions, and each change must reach them.
    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "c0"))
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, project, ("call.queued", "c1"))
    assert [r.call_id for r in await receiver.wait_count(1)] == ["c1"]

    resp = await client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"events": ["call.failed"]}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    await emit_events(database, project, ("call.queued", "c2"), ("call.failed", "c3"))
    got = await receiver.wait_count(2)
    assert [r.call_id for r in got] == ["c1", "c3"]

    resp = await client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=auth)
    assert resp.status == 200, await resp.text()
    # A delivery for the deleted endpoint would break its foreign key: the emit would fail.
    await emit_events(database, project, ("call.failed", "c4"))
    await asyncio.sleep(0.3)
    assert [r.call_id for r in receiver.requests] == ["c1", "c3"]
    async with database.session() as session:
        assert (await session.execute(select(WebhookDelivery))).scalars().all() == []


async def test_each_event_is_fanned_out_once(client, auth, database, receiver):
    endpoint = await add_endpoint(client, auth, receiver.url)
    project = await project_id(database)
    await emit_events(database, project, *[("call.queued", f"c{i}") for i in range(50)])
    await settled(client, auth, endpoint["id"], 50)
    async with database.session() as session:
        rows = (await session.execute(select(WebhookDelivery))).scalars().all()
    assert len(rows) == 50
    assert len({r.event_id for r in rows}) == 50
    assert sorted(r.call_id for r in receiver.requests) == sorted(f"c{i}" for i in range(50))


def test_retry_after_parsing():
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("999999999") == 24 * 3600.0
    assert retry_after_seconds("soon") is None
    now = 1_800_000_000.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_backoff_follows_the_schedule_with_jitter():
    schedule = Settings().retry_schedule()
    assert schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    for attempts in range(1, len(schedule)):
        for _ in range(50):
            delay = next_delay(schedule, attempts, None)
            assert delay is not None
            assert schedule[attempts] * 0.9 <= delay <= schedule[attempts] * 1.1
    assert next_delay(schedule, len(schedule), None) is None
    assert next_delay(schedule, len(schedule), 10.0) is None  # no attempt left
    assert next_delay(schedule, 2, 7.0) == 7.0


async def test_an_idle_sweep_backs_off_and_work_found_brings_it_back(database):
    """The sweep for deliveries nobody handed over runs every second while it finds some,
    and backs off to every 5 s while it finds none (on SQLite its queries stop the event
    loop that the calls' audio shares)."""
    from sqlalchemy import insert

    from relay.events import DeliveryWorker
    from relay.events.worker import CLAIM_SWEEP_SECONDS, IDLE_SWEEP_SECONDS
    from relay.ids import new_id
    from relay.store.models import LifecycleEvent, Project, utcnow

    await database.migrate()
    worker = DeliveryWorker(database, Settings(), node_id="sweeper")
    intervals = []
    for _ in range(4):
        worker._next_sweep = 0.0  # due now
        await worker.cycle()
        intervals.append(worker._sweep_every)
    assert intervals == [2.0, 4.0, IDLE_SWEEP_SECONDS, IDLE_SWEEP_SECONDS]
    # An event no transaction fanned out (written some other way): the next sweep finds it.
    async with database.session() as session:
        session.add(Project(id="proj_x", name="sweep"))
        await session.flush()
        await session.execute(
            insert(LifecycleEvent.__table__).values(
                id=new_id("evt"),
                project_id="proj_x",
                type="call.queued",
                ordering_key="call_x",
                data={},
                created_at=utcnow(),
                dispatched_at=None,
            )
        )
        await session.commit()
    worker._next_sweep = 0.0
    await worker.cycle()
    assert worker._sweep_every == CLAIM_SWEEP_SECONDS


async def test_an_emitted_event_is_written_at_flush_or_commit_and_not_after_a_rollback(
    database,
):
    from relay.events import emit
    from relay.store.models import LifecycleEvent, Project

    await database.migrate()
    async with database.session() as session:
        session.add(Project(id="prj_emit", name="emit"))

    def event_ids(session):
        return session.execute(select(LifecycleEvent.id).order_by(LifecycleEvent.id))

    with pytest.raises(RuntimeError):
        async with database.session() as session:
            await emit(session, project_id="prj_emit", type="call.queued", data={"n": 1})
            raise RuntimeError("rolled back")
    async with database.session() as session:
        kept = await emit(session, project_id="prj_emit", type="call.queued", data={"n": 2})
        # a flush of the transaction's changes writes what it emitted so far, as before
        session.add(Project(id="prj_other", name="other"))
        await session.flush()
        assert list((await event_ids(session)).scalars()) == [kept.id]
        last = await emit(session, project_id="prj_emit", type="call.completed", data={"n": 3})
    async with database.session() as session:
        rows = (await session.execute(select(LifecycleEvent))).scalars().all()
    assert sorted((e.id, e.type, e.data["n"]) for e in rows) == sorted(
        [(kept.id, "call.queued", 2), (last.id, "call.completed", 3)]
    )
    assert all(e.dispatched_at is not None for e in rows)
