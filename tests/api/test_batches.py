"""``/v1/calls/batch``, ``/v1/batches`` and ``/v1/calls/queue/stats``: batches dialled through
the dialling queue on the sim carrier (its test callees: ``...0188`` busy, ``...0189``
refused, the rest ring unanswered), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from relay.api.webhook_payloads import BatchLifecycleEvent
from relay.app import create_app
from relay.config import Settings
from relay.store.models import Call, CallEvent, LifecycleEvent
from tests.api.test_calls import BASE, get_call, new_agent, new_number

FAST = {**BASE, "outbound_ring_timeout_seconds": 0.05, "dial_queue_interval_seconds": 0.02}
AREA_CODES = ("415", "212", "312", "206", "617", "512")


def distinct_numbers(count: int) -> list[str]:
    """Sim numbers that ring unanswered (not the busy/refused test callees)."""
    out = [
        f"+1{code}5550{n:03d}"
        for code in AREA_CODES
        for n in range(100, 200)
        if n not in (188, 189)
    ]
    assert len(out) >= count
    return out[:count]


@pytest.fixture
def extra() -> dict[str, Any]:
    """Settings a test changes (by parametrizing ``extra``): one app per test, since the
    ``auth`` fixture starts this one."""
    return {}


@pytest.fixture
async def client(database, aiohttp_client, extra):
    return await aiohttp_client(create_app(Settings(**{**FAST, **extra}), db=database))


async def ready_agent(client, auth, **fields) -> dict[str, Any]:
    agent = await new_agent(client, auth, **fields)
    await new_number(client, auth, agent["id"])
    return agent


async def create_batch(client, auth, agent_id, recipients, status=202, **fields):
    resp = await client.post(
        "/v1/calls/batch",
        json={"agentId": agent_id, "recipients": recipients, **fields},
        headers=auth,
    )
    body = await resp.json()
    assert resp.status == status, body
    return body


async def get_batch(client, auth, batch_id) -> dict[str, Any]:
    resp = await client.get(f"/v1/batches/{batch_id}", headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_batch(client, auth, batch_id, state, within=60.0, every=0.05) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        batch = await get_batch(client, auth, batch_id)
        if batch["state"] == state:
            return batch
        assert time.monotonic() < deadline, {k: batch[k] for k in ("state", "counts")}
        await asyncio.sleep(every)


async def live_intervals(database, call_ids) -> list[tuple[datetime, datetime]]:
    """When each call was live: from its ``connecting`` to its end, as stored."""
    async with database.session() as session:
        rows = await session.execute(
            select(CallEvent.call_id, CallEvent.created_at).where(
                CallEvent.call_id.in_(call_ids), CallEvent.message == "status -> connecting"
            )
        )
        began = {call_id: at for call_id, at in rows}
        rows = await session.execute(select(Call.id, Call.ended_at).where(Call.id.in_(call_ids)))
        ended = {call_id: at for call_id, at in rows}
    return [(began[c], ended[c]) for c in call_ids if c in began]


def most_at_once(intervals) -> int:
    # An end sorts before a start at the same instant: the queue only starts a call after
    # the one before it was recorded as ended.
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


async def batch_events(database, batch_id) -> list[LifecycleEvent]:
    async with database.session() as session:
        rows = await session.execute(
            select(LifecycleEvent)
            .where(LifecycleEvent.ordering_key == batch_id)
            .order_by(LifecycleEvent.created_at)
        )
        return list(rows.scalars())


# --- a batch of 500 under a cap of 10 -----------------------------------------------------------


async def test_a_batch_of_500_never_has_more_than_10_live_calls(client, auth, database):
    resp = await client.patch("/v1/project", json={"maxConcurrentCalls": 10}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["maxConcurrentCalls"] == 10
    agent = await ready_agent(client, auth)
    numbers = distinct_numbers(500)
    created = await create_batch(
        client, auth, agent["id"], [{"to": n} for n in numbers], retry={"attempts": 1}
    )
    assert created["state"] == "scheduled"
    assert created["counts"]["waiting"] == 500
    assert created["invalid"] == []
    done = await wait_batch(client, auth, created["id"], "completed", within=240, every=1.0)
    assert done["counts"] == {
        "waiting": 0,
        "active": 0,
        "completed": 0,
        "failed": 500,
        "skipped": 0,
        "canceled": 0,
    }
    call_ids = [c for r in done["recipients"] for c in r["callIds"]]
    assert len(call_ids) == len(set(call_ids)) == 500
    assert {r["reason"] for r in done["recipients"]} == {"no_answer"}
    assert sorted(r["to"] for r in done["recipients"]) == sorted(numbers)
    peak = most_at_once(await live_intervals(database, call_ids))
    assert 1 < peak <= 10
    stats = await (await client.get("/v1/calls/queue/stats", headers=auth)).json()
    assert stats == {
        "object": "queue_stats",
        "waiting": 0,
        "scheduled": 0,
        "active": 0,
        "completed": 0,
        "failed": 500,
        "canceled": 0,
    }
    kinds = [e.type for e in await batch_events(database, created["id"])]
    assert kinds == ["batch.started", "batch.completed"]


# --- retries ------------------------------------------------------------------------------------


async def test_busy_and_unanswered_recipients_are_retried_by_policy(client, auth, database):
    agent = await ready_agent(client, auth)
    created = await create_batch(
        client,
        auth,
        agent["id"],
        [{"to": "+14155550188"}, {"to": "+14155550123"}, {"to": "+14155550189"}],
        retry={"attempts": 3, "backoff": 0, "on": ["busy", "no_answer"]},
    )
    done = await wait_batch(client, auth, created["id"], "completed")
    busy, unanswered, refused = done["recipients"]
    assert (busy["state"], busy["attempts"], busy["reason"]) == ("failed", 3, "busy")
    assert (unanswered["attempts"], unanswered["reason"]) == (3, "no_answer")
    # provider_error is a "failed", which this policy does not retry.
    assert (refused["attempts"], refused["reason"]) == (1, "provider_error")
    assert len(set(busy["callIds"])) == 3
    for call_id in busy["callIds"]:
        call = await get_call(client, auth, call_id)
        assert (call["status"], call["failureReason"]) == ("failed", "busy")
        assert call["metadata"] == {"batchId": created["id"]}


async def test_failed_is_retried_only_when_the_policy_says_so(client, auth):
    agent = await ready_agent(client, auth)
    created = await create_batch(
        client,
        auth,
        agent["id"],
        [{"to": "+14155550189"}, {"to": "+12125550188"}],
        retry={"attempts": 2, "backoff": 0, "on": ["failed"]},
    )
    done = await wait_batch(client, auth, created["id"], "completed")
    refused, busy = done["recipients"]
    assert (refused["attempts"], refused["reason"]) == (2, "provider_error")
    assert (busy["attempts"], busy["reason"]) == (1, "busy")


async def test_a_retry_waits_its_backoff(client, auth):
    agent = await ready_agent(client, auth)
    created = await create_batch(
        client,
        auth,
        agent["id"],
        [{"to": "+14155550188"}],
        retry={"attempts": 2, "backoff": 3600, "on": ["busy"]},
    )
    deadline = time.monotonic() + 10
    while True:
        [recipient] = (await get_batch(client, auth, created["id"]))["recipients"]
        if recipient["attempts"] == 1 and recipient["state"] == "waiting":
            break
        assert time.monotonic() < deadline, recipient
        await asyncio.sleep(0.05)
    due = datetime.fromisoformat(recipient["nextAttemptAt"])
    assert due > datetime.now(UTC) + timedelta(minutes=59)
    stats = await (await client.get("/v1/calls/queue/stats", headers=auth)).json()
    assert (stats["scheduled"], stats["waiting"]) == (1, 0)


# --- pause, resume, cancel ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{"outbound_ring_timeout_seconds": 0.3}])
async def test_pause_resume_and_cancel(client, auth, database):
    agent = await ready_agent(client, auth)
    numbers = distinct_numbers(6)
    created = await create_batch(
        client, auth, agent["id"], [{"to": n} for n in numbers], maxConcurrency=1
    )
    paused = await client.post(f"/v1/batches/{created['id']}/pause", headers=auth)
    assert paused.status == 200
    assert (await paused.json())["state"] == "paused"
    await asyncio.sleep(1.0)  # three ring timeouts: nothing new may start
    batch = await get_batch(client, auth, created["id"])
    started = [r for r in batch["recipients"] if r["callIds"]]
    assert len(started) <= 1  # the queue may have claimed the first before the pause
    again = await client.post(f"/v1/batches/{created['id']}/pause", headers=auth)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "batch_not_active"

    resumed = await client.post(f"/v1/batches/{created['id']}/resume", headers=auth)
    assert resumed.status == 200
    assert (await resumed.json())["state"] in ("scheduled", "running")
    deadline = time.monotonic() + 10
    while len([r for r in batch["recipients"] if r["callIds"]]) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
        batch = await get_batch(client, auth, created["id"])
    canceled = await client.post(f"/v1/batches/{created['id']}/cancel", headers=auth)
    assert canceled.status == 200
    done = await wait_batch(client, auth, created["id"], "canceled")
    deadline = time.monotonic() + 10
    while done["completedAt"] is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
        done = await get_batch(client, auth, created["id"])
    counts = done["counts"]
    assert counts["canceled"] >= 1
    assert counts["waiting"] == counts["active"] == 0
    assert counts["failed"] + counts["canceled"] == 6
    dialled = {c for r in done["recipients"] for c in r["callIds"]}
    assert len(dialled) == counts["failed"]
    await asyncio.sleep(0.5)
    after = await get_batch(client, auth, created["id"])
    assert {c for r in after["recipients"] for c in r["callIds"]} == dialled
    resp = await client.post(f"/v1/batches/{created['id']}/cancel", headers=auth)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "batch_already_ended")
    resp = await client.post(f"/v1/batches/{created['id']}/resume", headers=auth)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "batch_not_paused")
    kinds = [e.type for e in await batch_events(database, created["id"])]
    assert kinds == ["batch.started", "batch.completed"]
    completed = (await batch_events(database, created["id"]))[-1]
    data = completed.data
    assert data["state"] == "canceled"
    assert data["counts"] == counts
    BatchLifecycleEvent.model_validate(
        {
            "id": completed.id,
            "timestamp": completed.created_at,
            "type": completed.type,
            "data": data,
        }
    )


# --- per-recipient errors, variables, DNC --------------------------------------------------------


async def test_bad_rows_are_reported_one_by_one_and_the_rest_are_called(client, auth, database):
    agent = await ready_agent(client, auth, greeting="Hi {{variables.name}}, it is Ava.")
    resp = await client.post(
        "/v1/dnc", json={"numbers": ["+14155550111"], "reason": "asked"}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    created = await create_batch(
        client,
        auth,
        agent["id"],
        [
            {"to": "+14155550110", "variables": {"name": "Sam"}, "metadata": {"crm": 1}},
            {"to": "not a number"},
            {"to": "+14155550111"},
            {"to": "+1 415 555 0110"},
            {"variables": {"name": "no number"}},
            {"to": "+14155550112", "variables": {"x": {"nested": True}}},
            "just a string",
        ],
        retry={"attempts": 1},
    )
    assert [(r["index"], r["code"]) for r in created["invalid"]] == [
        (1, "invalid_phone_number"),
        (3, "duplicate_recipient"),
        (4, "invalid_recipient"),
        (5, "invalid_recipient"),
        (6, "invalid_recipient"),
    ]
    assert [(r["index"], r["state"], r["reason"]) for r in created["recipients"]] == [
        (0, "waiting", None),
        (2, "skipped", "dnc_conflict"),
    ]
    done = await wait_batch(client, auth, created["id"], "completed")
    first = done["recipients"][0]
    [call_id] = first["callIds"]
    call = await get_call(client, auth, call_id)
    assert call["metadata"] == {"crm": 1, "batchId": created["id"]}
    assert call["to"] == "+14155550110"
    async with database.session() as session:
        row = await session.get(Call, call_id)
    assert row.agent_snapshot["greeting"] == "Hi Sam, it is Ava."
    assert row.agent_snapshot["variables"] == {"name": "Sam"}
    assert done["recipients"][1]["callIds"] == []


async def test_a_batch_with_no_callable_row_is_refused(client, auth):
    agent = await ready_agent(client, auth)
    body = await create_batch(client, auth, agent["id"], [{"to": "nope"}, {"to": "+1"}], status=422)
    assert body["error"]["code"] == "no_valid_recipients"
    assert [d["field"] for d in body["error"]["details"]] == ["recipients.0", "recipients.1"]
    resp = await client.post(
        "/v1/calls/batch",
        json={"agentId": agent["id"], "recipients": [{"to": "+14155550123"}] * 501},
        headers=auth,
    )
    assert resp.status == 422
    listed = await (await client.get("/v1/batches", headers=auth)).json()
    assert listed["data"] == []


async def test_an_agent_without_a_number_cannot_batch(client, auth):
    agent = await new_agent(client, auth)
    body = await create_batch(client, auth, agent["id"], [{"to": "+14155550123"}], status=422)
    assert body["error"]["code"] == "agent_has_no_number"


async def test_batches_of_another_project_are_not_found(client, auth, make_key):
    agent = await ready_agent(client, auth)
    created = await create_batch(client, auth, agent["id"], [{"to": "+14155550123"}])
    other = await make_key("proj-b")
    resp = await client.get(f"/v1/batches/{created['id']}", headers=other)
    assert resp.status == 404
    resp = await client.post(f"/v1/batches/{created['id']}/cancel", headers=other)
    assert resp.status == 404
    assert (await (await client.get("/v1/batches", headers=other)).json())["data"] == []


async def test_batches_list_newest_first_by_cursor(client, auth):
    agent = await ready_agent(client, auth)
    ids = [
        (await create_batch(client, auth, agent["id"], [{"to": "+14155550123"}]))["id"]
        for _ in range(3)
    ]
    first = await (await client.get("/v1/batches?limit=2", headers=auth)).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2]
    assert first["hasMore"] is True
    rest = await (
        await client.get(f"/v1/batches?limit=2&cursor={first['nextCursor']}", headers=auth)
    ).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    assert rest["hasMore"] is False


# --- windows and schedules ---------------------------------------------------------------------


async def test_recipients_outside_the_window_wait_for_it(client, auth):
    agent = await ready_agent(client, auth)
    now = datetime.now(UTC)
    # A window on a day that is not today in any US zone: tomorrow's and the day after's
    # weekday from UTC, far enough from today everywhere.
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    day = days[(now.weekday() + 3) % 7]
    created = await create_batch(
        client,
        auth,
        agent["id"],
        [{"to": "+14155550123"}],
        window={"windows": [{"days": [day], "start": "09:00", "end": "17:00"}]},
    )
    await asyncio.sleep(0.5)
    [recipient] = (await get_batch(client, auth, created["id"]))["recipients"]
    assert recipient["state"] == "waiting"
    assert recipient["callIds"] == []
    assert recipient["reason"] == "outside_calling_hours"
    due = datetime.fromisoformat(recipient["nextAttemptAt"])
    assert due > now + timedelta(days=1)
    stats = await (await client.get("/v1/calls/queue/stats", headers=auth)).json()
    assert (stats["scheduled"], stats["waiting"], stats["active"]) == (1, 0, 0)


async def test_a_scheduled_batch_starts_at_its_time(client, auth):
    agent = await ready_agent(client, auth)
    at = datetime.now(UTC) + timedelta(seconds=1)
    created = await create_batch(
        client, auth, agent["id"], [{"to": "+14155550123"}], scheduledAt=at.isoformat()
    )
    [recipient] = created["recipients"]
    assert datetime.fromisoformat(recipient["nextAttemptAt"]) == at
    done = await wait_batch(client, auth, created["id"], "completed", within=20)
    call = await get_call(client, auth, done["recipients"][0]["callIds"][0])
    assert datetime.fromisoformat(call["createdAt"]) >= at


# --- single calls share the queue --------------------------------------------------------------


@pytest.mark.parametrize("extra", [{"outbound_ring_timeout_seconds": 60}])
async def test_single_calls_wait_for_room_under_the_project_cap(client, auth):
    await client.patch("/v1/project", json={"maxConcurrentCalls": 1}, headers=auth)
    agent = await ready_agent(client, auth)
    calls = []
    for to in distinct_numbers(3):
        resp = await client.post("/v1/calls", json={"agentId": agent["id"], "to": to}, headers=auth)
        assert resp.status == 202
        calls.append(await resp.json())
    deadline = time.monotonic() + 10
    while (await get_call(client, auth, calls[0]["id"]))["status"] != "ringing":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    statuses = [(await get_call(client, auth, c["id"]))["status"] for c in calls]
    assert statuses == ["ringing", "queued", "queued"]
    stats = await (await client.get("/v1/calls/queue/stats", headers=auth)).json()
    assert (stats["active"], stats["waiting"]) == (1, 2)
    # Ending the ringing one makes room for the next; ending a queued one takes it out.
    assert (await client.post(f"/v1/calls/{calls[2]['id']}/end", headers=auth)).status == 200
    assert (await client.post(f"/v1/calls/{calls[0]['id']}/end", headers=auth)).status == 200
    deadline = time.monotonic() + 10
    while (await get_call(client, auth, calls[1]["id"]))["status"] != "ringing":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await get_call(client, auth, calls[2]["id"]))["failureReason"] == "canceled"
    await asyncio.sleep(0.3)
    stats = await (await client.get("/v1/calls/queue/stats", headers=auth)).json()
    assert (stats["active"], stats["waiting"], stats["failed"]) == (1, 0, 2)


@pytest.mark.parametrize("extra", [{"dial_rate_per_second": 4}])
async def test_calls_start_no_faster_than_the_carriers_rate(client, auth):
    agent = await ready_agent(client, auth)
    created = await create_batch(
        client, auth, agent["id"], [{"to": n} for n in distinct_numbers(12)]
    )
    done = await wait_batch(client, auth, created["id"], "completed", within=30)
    starts = sorted(
        [
            datetime.fromisoformat((await get_call(client, auth, c))["createdAt"])
            for r in done["recipients"]
            for c in r["callIds"]
        ]
    )
    assert len(starts) == 12
    # A burst of 4, then 4 a second: the last of 12 starts 2 s after the first at the soonest.
    assert (starts[-1] - starts[0]).total_seconds() >= 1.9
    for i, start in enumerate(starts):
        within_a_second = [s for s in starts[i:] if (s - start).total_seconds() < 1.0]
        assert len(within_a_second) <= 8
