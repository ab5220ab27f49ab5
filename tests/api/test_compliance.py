"""Calling hours through the API: the project's and an agent's policy, a call placed outside
them ending failed / compliance_block before any carrier is asked, and /v1/compliance/check.
(The decisions at fixed clock times are tests/test_calling_hours.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from relay.app import create_app
from relay.calling_hours import DAYS
from relay.config import Settings
from tests.api.test_calls import (
    BASE,
    lifecycle_messages,
    new_agent,
    new_number,
    phone_call,
    wait_status,
)

CALLEE = "+12125550142"  # New York


@pytest.fixture
async def client(database, aiohttp_client):
    return await aiohttp_client(create_app(Settings(**BASE), db=database))


def closed_now() -> dict:
    """Windows on every day but today and tomorrow in New York: closed whenever the test
    runs (two days, so a midnight while it runs changes nothing), open in two days."""
    today = datetime.now(ZoneInfo("America/New_York")).weekday()
    days = [d for i, d in enumerate(DAYS) if i not in (today, (today + 1) % 7)]
    return {"windows": [{"days": days, "start": "00:00", "end": "24:00"}]}


async def patch_project(client, auth, hours):
    resp = await client.patch("/v1/project", json={"callingHours": hours}, headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_call_outside_the_projects_hours_fails_before_the_carrier(client, auth):
    project = await patch_project(client, auth, closed_now())
    assert project["callingHours"]["windows"][0]["start"] == "00:00"
    agent = await new_agent(client, auth)
    await new_number(client, auth, agent["id"])
    call = await phone_call(client, auth, agent["id"], to=CALLEE)
    done = await wait_status(client, auth, call["id"], "failed")
    assert done["failureReason"] == "compliance_block"
    assert lifecycle_messages(done) == ["status -> queued", "status -> failed (compliance_block)"]
    [event] = [e for e in done["events"] if e["source"] == "compliance"]
    assert event["data"]["reason"] == "outside_calling_hours"
    assert event["data"]["timeZones"] == ["America/New_York"]
    next_at = datetime.fromisoformat(event["data"]["nextAllowedAt"])
    assert timedelta(hours=24) <= next_at - datetime.now(UTC) <= timedelta(hours=48)
    assert "America/New_York" in event["message"]


async def test_an_agents_own_hours_override_the_projects(client, auth):
    await patch_project(client, auth, closed_now())
    open_agent = await new_agent(client, auth, callingHours={"preset": "none"})
    assert open_agent["callingHours"] == {
        "preset": "none",
        "windows": None,
        "noPublicHolidays": None,
    }
    await new_number(client, auth, open_agent["id"])
    call = await phone_call(client, auth, open_agent["id"], to=CALLEE)
    rang = await wait_status(client, auth, call["id"], "failed")
    assert rang["failureReason"] == "no_answer"  # it was dialled: the sim rings, nobody answers
    closed_agent = await new_agent(client, auth, callingHours=closed_now())
    await patch_project(client, auth, None)  # the project has no limit; the agent does
    await new_number(client, auth, closed_agent["id"])
    blocked = await phone_call(client, auth, closed_agent["id"], to=CALLEE)
    done = await wait_status(client, auth, blocked["id"], "failed")
    assert done["failureReason"] == "compliance_block"


async def test_check_says_what_would_happen_and_why(client, auth):
    agent = await new_agent(client, auth)
    resp = await client.get("/v1/compliance/check", params={"to": CALLEE}, headers=auth)
    body = await resp.json()
    assert (body["allowed"], body["blockedBy"], body["callingHours"]["policy"]) == (
        True,
        [],
        "none",
    )
    await patch_project(client, auth, closed_now())
    await client.post("/v1/dnc", json={"numbers": [CALLEE]}, headers=auth)
    resp = await client.get(
        "/v1/compliance/check", params={"to": CALLEE, "agentId": agent["id"]}, headers=auth
    )
    body = await resp.json()
    assert body["allowed"] is False
    assert body["blockedBy"] == ["dnc_conflict", "outside_calling_hours"]
    assert body["callingHours"]["timeZones"] == ["America/New_York"]
    assert body["callingHours"]["nextAllowedAt"] is not None
    unknown = await client.get(
        "/v1/compliance/check", params={"to": CALLEE, "agentId": "agt_nope"}, headers=auth
    )
    assert unknown.status == 404


@pytest.mark.parametrize(
    ("hours", "field"),
    [
        ({}, "callingHours"),
        (
            {"preset": "us_tcpa", "windows": [{"days": ["mon"], "start": "09:00", "end": "17:00"}]},
            "callingHours",
        ),
        ({"preset": "whenever"}, "callingHours.preset"),
        ({"preset": "us_tcpa", "noPublicHolidays": True}, "callingHours"),
        ({"windows": []}, "callingHours.windows"),
        (
            {"windows": [{"days": ["someday"], "start": "09:00", "end": "17:00"}]},
            "callingHours.windows.0.days.0",
        ),
        (
            {"windows": [{"days": ["mon"], "start": "9am", "end": "17:00"}]},
            "callingHours.windows.0.start",
        ),
        (
            {"windows": [{"days": ["mon"], "start": "17:00", "end": "09:00"}]},
            "callingHours.windows.0",
        ),
        (
            {"windows": [{"days": ["mon"], "start": "09:00", "end": "24:01"}]},
            "callingHours.windows.0.end",
        ),
    ],
)
async def test_bad_policies_are_422_naming_the_field(client, auth, hours, field):
    for path, method in (("/v1/project", client.patch), ("/v1/agents", client.post)):
        body = {"callingHours": hours} | ({"name": "Ava"} if path == "/v1/agents" else {})
        resp = await method(path, json=body, headers=auth)
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["error"]["field"] == field
