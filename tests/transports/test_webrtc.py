"""The WebRTC transport at the wire: a page's aiortc peer and the relay's, Opus both ways,
the data channel's events, hang-ups from either side and a page that vanishes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from relay.calls.media import MEDIA
from relay.handset.web import RATE, WebPage
from relay.store.models import Call
from tests.transports.support import agent_with_number, lifecycle_types, wait_for


async def web_call(phone, auth) -> dict:
    agent, _ = await agent_with_number(phone, auth)
    resp = await phone.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "webrtc"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def status_of(database, call_id: str) -> str:
    async with database.session() as session:
        return (await session.get(Call, call_id)).status


def status_is(database, call_id: str, status: str):
    async def check() -> bool:
        return await status_of(database, call_id) == status

    return check


def tone(seconds: float, freq: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


def loud(pcm: np.ndarray) -> bool:
    return len(pcm) > 0 and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > 1000


@pytest.fixture
async def connected(phone, engine, auth, database):
    call = await web_call(phone, auth)
    page = await WebPage.join(phone, "/media/webrtc", call["token"])
    await asyncio.wait_for(engine.started.wait(), 10)
    [scripted] = engine.calls
    await asyncio.wait_for(page.channel_open(), 10)
    yield call, page, scripted
    await page.close()


async def test_opus_flows_both_ways_at_48_khz(connected, database):
    call, page, scripted = connected
    assert scripted.line.sample_rate == 48000
    assert await status_of(database, call["id"]) == "in_progress"
    page.mic.say(tone(0.5))
    await wait_for(lambda: any(loud(pcm) for pcm, _ in scripted.audio), within=10)
    assert {rate for _, rate in scripted.audio} == {48000}

    sent = tone(0.4, 660)
    for i in range(0, len(sent), 960):
        await scripted.line.send_audio(sent[i : i + 960])
        await asyncio.sleep(0.02)
    await wait_for(lambda: page.first_loud_after(0.0, level=1000) is not None, within=10)


async def test_the_data_channel_carries_live_events(connected):
    _, page, scripted = connected
    scripted.line.live_event({"type": "agent_state", "state": "speaking"})
    scripted.line.live_event({"type": "transcript", "role": "agent", "text": "Hi", "final": True})
    await page.wait_event(lambda e: e.get("text") == "Hi", within=10)
    assert page.events[0] == {"type": "agent_state", "state": "speaking"}


async def test_barge_in_drops_what_the_page_has_not_heard(connected):
    _, page, scripted = connected
    track = scripted.line._peer.track
    for _ in range(5):
        await scripted.line.send_audio(tone(0.02))
    assert len(track._queue) == 5
    await scripted.line.clear()
    assert len(track._queue) == 0


async def test_the_relay_hanging_up_tells_the_page_and_ends_the_call(connected, database):
    call, page, scripted = connected
    scripted.line.live_event({"type": "ended", "status": "completed", "reason": None})
    await scripted.line.hangup()
    await scripted.end()
    await page.wait_event(lambda e: e["type"] == "ended", within=10)
    await wait_for(status_is(database, call["id"], "completed"), within=10)


async def test_a_page_that_vanishes_ends_the_call_completed(connected, database):
    call, page, scripted = connected
    page.mic.stop()  # the tab is gone: no more RTP, no goodbye
    await wait_for(status_is(database, call["id"], "completed"), within=15)
    assert scripted.hung_up.is_set()
    assert await lifecycle_types(database, call["id"]) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]


async def test_the_pages_delete_ends_the_call_completed(connected, phone, database):
    call, page, scripted = connected
    resp = await phone.delete(page.location, headers={"Authorization": f"Bearer {call['token']}"})
    assert resp.status == 200
    await wait_for(status_is(database, call["id"], "completed"), within=10)
    assert scripted.hung_up.is_set()
    assert phone.app[MEDIA].live == {}
