"""Recordings in the store and the API, on SQLite and PostgreSQL: the row's life,
``recording.ready`` after the call's end, the signed download (expiry, tampering, another
call's token), ``disabled`` and ``pending``, the project's retention and the purge job.

The audio is tapped into the real recorder and encoded by the real encoder; whole calls with
real speech are in ``test_recording_call.py``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from sqlalchemy import select, update

from relay import tokens
from relay.api.recordings import TOKEN_PURPOSE
from relay.calls import recordings
from relay.calls.inbound import MEDIA_TOKEN_PURPOSE
from relay.calls.lifecycle import transition
from relay.calls.recovery import RECOVERY, lock_call
from relay.config import Settings
from relay.engine.recording import StereoRecorder
from relay.state import APP_STATE
from relay.store.models import Call, CallEvent, LifecycleEvent, Recording, RelayNode, utcnow

RATE = 8000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url="https://relay.example.com",
        data_dir=tmp_path / "data",
    )


async def new_call(client, auth, *, recording: bool = True) -> dict[str, Any]:
    resp = await client.post(
        "/v1/agents",
        json={
            "name": "Ava",
            "webhookUrl": "http://127.0.0.1:9/hook",
            "recordingEnabled": recording,
        },
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "websocket"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def move(database, call_id: str, *statuses: str, reason: str | None = None) -> None:
    for status in statuses:
        async with database.session() as session:
            call = await lock_call(session, call_id)
            await transition(session, call, status, reason=reason)


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


async def record(client, database, call_id: str, *, complete: bool = True) -> StereoRecorder:
    """What the engine does for a recorded call: the pending row, both sides tapped."""
    state = client.app[APP_STATE]
    async with database.session() as session:
        project_id = (await session.get(Call, call_id)).project_id
    rec = StereoRecorder(
        recordings.recordings_dir(state.settings, project_id), call_id, rate=RATE, origin=0.0
    )
    async with database.session() as session:
        await recordings.open_row(session, state.settings, call_id, project_id, rec)
    rec.agent(tone(1.0, 440), RATE, at=0.2)
    rec.caller(tone(0.5, 700), RATE, at=2.0)
    rec.close()
    if complete:
        await move(database, call_id, "in_progress", "completed")
    return rec


async def recorded_call(client, auth, database) -> tuple[dict[str, Any], Recording]:
    call = await new_call(client, auth)
    rec = await record(client, database, call["id"])
    row = await recordings.finish(database, call["id"], rec)
    assert row is not None and row.status == "ready", row and row.error
    return call, row


async def get_recording(client, auth, call_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/calls/{call_id}/recording", headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_finished_recording_is_ready_with_a_signed_url(client, auth, database, settings):
    call, row = await recorded_call(client, auth, database)
    body = await get_recording(client, auth, call["id"])
    file = settings.data_dir / row.path
    assert file.is_file() and file.suffix == ".ogg"
    assert body["status"] == "ready" and body["format"] == "audio/ogg"
    assert body["durationSeconds"] == pytest.approx(2.0, abs=0.05)
    assert body["sizeBytes"] == file.stat().st_size
    assert body["url"].startswith(f"https://relay.example.com/v1/recordings/{call['id']}?token=")
    assert body["error"] is None and body["readyAt"] is not None

    resp = await client.get(path_of(body["url"]))  # no API key: the token is the credential
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/ogg"
    assert await resp.read() == file.read_bytes()

    detail = await (await client.get(f"/v1/calls/{call['id']}", headers=auth)).json()
    assert detail["recording"]["status"] == "ready"
    assert detail["recording"]["sizeBytes"] == body["sizeBytes"]


async def test_recording_ready_is_announced_after_the_call_ends(client, auth, database):
    call = await new_call(client, auth)
    rec = await record(client, database, call["id"], complete=False)
    await move(database, call["id"], "in_progress")
    finishing = asyncio.create_task(recordings.finish(database, call["id"], rec))
    await asyncio.sleep(0.5)  # encoded by now, but the call has not ended: it waits
    async with database.session() as session:
        assert (await session.get(Recording, call["id"])).status == "pending"
    await move(database, call["id"], "completed")
    row = await asyncio.wait_for(finishing, 10)
    assert row.status == "ready"
    async with database.session() as session:
        events = list(
            await session.scalars(
                select(LifecycleEvent)
                .where(LifecycleEvent.ordering_key == call["id"])
                .order_by(LifecycleEvent.created_at, LifecycleEvent.id)
            )
        )
    types = [e.type for e in events]
    assert types[-2:] == ["call.completed", "recording.ready"], types
    data = events[-1].data
    assert data["callId"] == call["id"] and data["status"] == "ready"
    assert data["durationSeconds"] == pytest.approx(2.0, abs=0.05)
    assert data["sizeBytes"] == row.size_bytes
    assert data["channels"] == {"left": "agent", "right": "caller"}


async def test_a_tampered_token_is_refused(client, auth, database):
    call, _ = await recorded_call(client, auth, database)
    url = (await get_recording(client, auth, call["id"]))["url"]
    token = urlsplit(url).query.removeprefix("token=")
    payload, mac = token.split(".")
    forged_payload = tokens._b64(
        tokens._unb64(payload).replace(b'"exp":', b'"exp":9')  # a longer life
    )
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    for bad in (f"{forged_payload}.{mac}", f"{payload}.{flipped}", "garbage", ""):
        resp = await client.get(f"/v1/recordings/{call['id']}", params={"token": bad})
        assert resp.status == 403, bad
        assert (await resp.json())["error"]["code"] == "invalid_recording_token"
    resp = await client.get(f"/v1/recordings/{call['id']}")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_recording_token"


async def test_an_expired_or_foreign_token_is_refused(client, auth, database):
    call, _ = await recorded_call(client, auth, database)
    key = client.app[APP_STATE].signing_key
    expired = tokens.issue(key, call["id"], TOKEN_PURPOSE, -1)
    resp = await client.get(f"/v1/recordings/{call['id']}", params={"token": expired})
    assert resp.status == 403
    err = (await resp.json())["error"]
    assert err["code"] == "recording_token_expired" and "expired" in err["message"]

    media = tokens.issue(key, call["id"], MEDIA_TOKEN_PURPOSE, 60)  # signed, wrong purpose
    other_call = tokens.issue(key, "call_other", TOKEN_PURPOSE, 60)  # signed, another call
    another_relay = tokens.issue(b"k" * 32, call["id"], TOKEN_PURPOSE, 60)
    for bad in (media, other_call, another_relay):
        resp = await client.get(f"/v1/recordings/{call['id']}", params={"token": bad})
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "invalid_recording_token"

    good = tokens.issue(key, call["id"], TOKEN_PURPOSE, 60)
    resp = await client.get(f"/v1/recordings/{call['id']}", params={"token": good})
    assert resp.status == 200


async def test_disabled_pending_and_never_connected(client, auth, database):
    plain = await new_call(client, auth, recording=False)
    assert await get_recording(client, auth, plain["id"]) == {
        "status": "disabled",
        "format": None,
        "durationSeconds": None,
        "sizeBytes": None,
        "url": None,
        "urlExpiresAt": None,
        "retainedUntil": None,
        "error": None,
        "createdAt": None,
        "readyAt": None,
    }
    recorded = await new_call(client, auth)
    assert (await get_recording(client, auth, recorded["id"]))["status"] == "pending"
    await move(
        database, recorded["id"], "failed", reason="network_timeout"
    )  # never connected: no audio at all
    body = await get_recording(client, auth, recorded["id"])
    assert body["status"] == "failed" and "Nothing was recorded" in body["error"]
    assert body["url"] is None

    key = client.app[APP_STATE].signing_key
    token = tokens.issue(key, plain["id"], TOKEN_PURPOSE, 60)
    resp = await client.get(f"/v1/recordings/{plain['id']}", params={"token": token})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "recording_not_found"


async def test_a_failed_encode_is_reported(client, auth, database):
    call = await new_call(client, auth)
    rec = await record(client, database, call["id"])
    rec.left.path.unlink()  # the spooled audio is gone before the encoder gets to it
    row = await recordings.finish(database, call["id"], rec)
    assert row.status == "failed" and "encoding the recording failed" in row.error
    body = await get_recording(client, auth, call["id"])
    assert body["status"] == "failed" and body["url"] is None
    assert not rec.output.exists()


async def test_another_projects_recording_is_not_found(client, auth, database, make_key):
    call, _ = await recorded_call(client, auth, database)
    other = await make_key("proj-b")
    assert (await client.get(f"/v1/calls/{call['id']}/recording", headers=other)).status == 404
    pk = await make_key("proj-a", kind="publishable")
    assert (await client.get(f"/v1/calls/{call['id']}/recording", headers=pk)).status == 403


# --- retention ------------------------------------------------------------------------------


async def test_the_project_retention_defaults_to_90_days_and_is_validated(client, auth, make_key):
    resp = await client.get("/v1/project", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["recordingRetentionDays"] == 90 and body["object"] == "project"
    for bad in (29, 366, "ninety", 30.5):
        resp = await client.patch("/v1/project", json={"recordingRetentionDays": bad}, headers=auth)
        assert resp.status == 422, bad
        assert (await resp.json())["error"]["field"] == "recordingRetentionDays"
    resp = await client.patch("/v1/project", json={"retention": 30}, headers=auth)
    assert resp.status == 422
    resp = await client.patch("/v1/project", json={"recordingRetentionDays": 30}, headers=auth)
    assert resp.status == 200 and (await resp.json())["recordingRetentionDays"] == 30
    assert (await (await client.get("/v1/project", headers=auth)).json())[
        "recordingRetentionDays"
    ] == 30
    other = await make_key("proj-b")
    assert (await (await client.get("/v1/project", headers=other)).json())[
        "recordingRetentionDays"
    ] == 90
    pk = await make_key("proj-a", kind="publishable")
    resp = await client.patch("/v1/project", json={"recordingRetentionDays": 40}, headers=pk)
    assert resp.status == 403


async def age(database, call_id: str, days: float) -> None:
    async with database.session() as session:
        await session.execute(
            update(Recording)
            .where(Recording.call_id == call_id)
            .values(created_at=utcnow() - timedelta(days=days))
        )


async def test_the_purge_deletes_recordings_past_the_projects_retention(
    client, auth, database, settings, make_key
):
    resp = await client.patch("/v1/project", json={"recordingRetentionDays": 30}, headers=auth)
    assert resp.status == 200
    old, old_row = await recorded_call(client, auth, database)
    young, young_row = await recorded_call(client, auth, database)
    await age(database, old["id"], 31)
    await age(database, young["id"], 29)
    other_auth = await make_key("proj-b")  # default 90 days: 31 days old is kept
    kept, kept_row = await recorded_call(client, other_auth, database)
    await age(database, kept["id"], 31)
    old_url = (await get_recording(client, auth, old["id"]))["url"]

    assert await recordings.purge_once(database, settings) == (1, 0)

    assert not (settings.data_dir / old_row.path).exists()
    assert (settings.data_dir / young_row.path).is_file()
    assert (settings.data_dir / kept_row.path).is_file()
    body = await get_recording(client, auth, old["id"])
    assert body["status"] == "expired" and body["url"] is None
    assert body["sizeBytes"] == old_row.size_bytes  # what it was, for the record
    resp = await client.get(path_of(old_url))  # a URL handed out before the purge
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "recording_not_found"
    assert (await get_recording(client, auth, young["id"]))["status"] == "ready"
    async with database.session() as session:
        logged = (
            await session.scalars(select(CallEvent.message).where(CallEvent.call_id == old["id"]))
        ).all()
    assert any("30-day retention" in m for m in logged)
    assert await recordings.purge_once(database, settings) == (0, 0)


async def test_a_recording_left_pending_by_a_dead_relay_is_failed(client, auth, database, settings):
    call = await new_call(client, auth)
    rec = await record(client, database, call["id"])  # spooled, never encoded
    assert await recordings.purge_once(database, settings) == (0, 0)  # just ended: not yet
    async with database.session() as session:
        await session.execute(
            update(Call)
            .where(Call.id == call["id"])
            .values(ended_at=utcnow() - recordings.ABANDONED_AFTER - timedelta(seconds=1))
        )
    assert await recordings.purge_once(database, settings) == (0, 1)
    body = await get_recording(client, auth, call["id"])
    assert body["status"] == "failed" and body["error"] == recordings.ABANDONED
    assert not rec.left.path.exists() and not rec.right.path.exists()


async def test_a_dead_nodes_recordings_are_failed_when_it_is_buried(client, auth, database):
    call = await new_call(client, auth)
    rec = await record(client, database, call["id"])  # spooled, never encoded: its node died
    long_ago = utcnow() - timedelta(minutes=5)
    async with database.session() as session:
        row = await session.get(Recording, call["id"])
        assert row.claimed_by == client.app[APP_STATE].settings.effective_node_id()
        row.claimed_by = "node-dead"
        session.add(RelayNode(id="node-dead", started_at=long_ago, heartbeat_at=long_ago))
    other = await new_call(client, auth)
    await record(client, database, other["id"])  # this live node's: left alone

    assert await client.app[RECOVERY].bury() == ["node-dead"]
    body = await get_recording(client, auth, call["id"])
    assert body["status"] == "failed" and body["error"] == recordings.ABANDONED
    assert not rec.left.path.exists() and not rec.right.path.exists()
    assert (await get_recording(client, auth, other["id"]))["status"] == "pending"


async def test_the_purge_worker_runs_with_the_app(database, app_client, raw_key, tmp_path):
    settings = Settings(
        allow_private_webhooks=True, data_dir=tmp_path / "d", recording_purge_seconds=0.05
    )
    client = await app_client(settings)
    auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
    call, row = await recorded_call(client, auth, database)
    await age(database, call["id"], 91)
    for _ in range(100):
        if (await get_recording(client, auth, call["id"]))["status"] == "expired":
            break
        await asyncio.sleep(0.05)
    assert (await get_recording(client, auth, call["id"]))["status"] == "expired"
    assert not (settings.data_dir / row.path).exists()
