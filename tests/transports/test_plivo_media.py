"""Plivo's audio stream, wire level: the fake Plivo answers a call with the relay's XML,
opens the ``<Stream>`` socket and speaks Plivo's side (``start``, ``media``, ``dtmf``); the
relay answers with ``playAudio`` and ``clearAudio``. The engine is scripted
(:class:`tests.transports.support.ScriptedEngine`); whole calls with real speech are in
:mod:`tests.carriers.test_plivo_calls`."""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET

import aiohttp
import numpy as np
import pytest

from relay import tokens
from relay.calls.media import MEDIA
from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.handset.fake_plivo import FakePlivo, PlivoMediaLine, StreamedCall
from tests.carriers.plivo_support import (
    AUTH_A,
    CALLER,
    NUMBER_A,
    PUBLIC_URL,
    TOKEN_A,
    answer_url,
    origin,
    plivo_agent,
    plivo_settings,
)
from tests.transports.support import (
    ScriptedEngine,
    call_events,
    calls,
    lifecycle_types,
    wait_for,
)


@pytest.fixture
async def fake(aiohttp_server) -> tuple[FakePlivo, str]:
    fake = FakePlivo(AUTH_A, TOKEN_A, {NUMBER_A})
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def phone(database, app_client, fake):
    client = await app_client(plivo_settings(fake[1]))
    client.app[MEDIA].engine = ScriptedEngine()
    fake[0].deliver_to = (PUBLIC_URL, origin(client))
    return client


@pytest.fixture
def engine(phone) -> ScriptedEngine:
    return phone.app[MEDIA].engine


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def answered(phone, auth, fake, http) -> StreamedCall:
    await plivo_agent(phone, auth)
    call = await fake[0].incoming_call(http, answer_url(), CALLER, NUMBER_A)
    assert call.status == 200 and call.stream_url, call.answer
    return call


async def opened(phone, auth, fake, http, engine) -> tuple[StreamedCall, PlivoMediaLine]:
    call = await answered(phone, auth, fake, http)
    line = await fake[0].open_stream(http, call, fake[0].accounts[AUTH_A])
    await asyncio.wait_for(engine.started.wait(), 5)
    return call, line


async def status_of(database, call_id: str) -> str:
    return next(c.status for c in await calls(database) if c.id == call_id)


async def ended(database, call_id: str) -> None:
    async def check() -> bool:
        return await status_of(database, call_id) in ("completed", "failed")

    await wait_for(check)


async def test_a_call_streams_both_ways_and_ends_when_plivo_closes(
    phone, engine, auth, database, fake, http
):
    call, line = await opened(phone, auth, fake, http, engine)
    call_id = call.extra_headers["callId"]
    [scripted] = engine.calls
    assert scripted.call_id == call_id and scripted.line.sample_rate == 8000
    assert await status_of(database, call_id) == "in_progress"

    caller = (3000 * np.sin(np.arange(160) / 8000 * 2 * np.pi * 440)).astype(np.int16)
    await line.ws.send_str(line.media_frame(ulaw_encode(caller)))
    await line.ws.send_str(line.dtmf_frame("5"))
    await wait_for(lambda: len(scripted.audio) == 1 and scripted.dtmf == ["5"])
    pcm, rate = scripted.audio[0]
    assert rate == 8000 and np.array_equal(pcm, ulaw_decode(ulaw_encode(caller)))

    agent = (2000 * np.sin(np.arange(320) / 8000 * 2 * np.pi * 300)).astype(np.int16)
    await scripted.line.send_audio(agent)  # 40 ms: two 20 ms playAudio frames
    await scripted.line.clear()
    frames = [json.loads((await line.ws.receive()).data) for _ in range(3)]
    assert [f["event"] for f in frames] == ["playAudio", "playAudio", "clearAudio"]
    assert all(f["streamId"] == line.sid for f in frames)
    media = [f["media"] for f in frames[:2]]
    assert all((m["contentType"], m["sampleRate"]) == ("audio/x-mulaw", 8000) for m in media)
    assert b"".join(base64.b64decode(m["payload"]) for m in media) == ulaw_encode(agent)

    await line.ws.close()  # the caller hung up: Plivo closes the stream
    await asyncio.wait_for(scripted.hung_up.wait(), 5)
    await ended(database, call_id)
    assert await status_of(database, call_id) == "completed"
    assert await lifecycle_types(database, call_id) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]
    [row] = await calls(database)
    assert row.carrier_call_id == call.call_uuid
    await fake[0].stream_ended(http, call, fake[0].accounts[AUTH_A])
    assert [c.tag for c in ET.fromstring(call.after or "")] == ["Hangup"]


async def test_the_token_may_come_in_the_start_events_extra_headers_only(
    phone, engine, auth, database, fake, http
):
    call = await answered(phone, auth, fake, http)
    call.stream_url = (call.stream_url or "").split("?")[0]  # a stream URL without its query
    line = await fake[0].open_stream(http, call, fake[0].accounts[AUTH_A])
    await asyncio.wait_for(engine.started.wait(), 5)
    call_id = call.extra_headers["callId"]
    assert engine.calls[0].call_id == call_id
    assert await status_of(database, call_id) == "in_progress"
    await line.ws.close()
    await ended(database, call_id)


@pytest.mark.parametrize("token", ["", "forged"])
async def test_a_stream_without_a_good_token_is_closed_as_a_policy_violation(
    phone, engine, auth, fake, http, token
):
    call = await answered(phone, auth, fake, http)
    call.stream_url = (call.stream_url or "").split("?")[0]
    if token == "forged":
        forged = tokens.issue(b"not the relay's key" * 2, call.extra_headers["callId"], "media", 60)
        call.extra_headers["token"] = forged
    else:
        del call.extra_headers["token"]
    line = await fake[0].open_stream(http, call, fake[0].accounts[AUTH_A])
    msg = await line.ws.receive()
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.POLICY_VIOLATION)
    assert engine.calls == []


async def test_a_bad_token_in_the_url_is_refused_before_the_upgrade(phone, engine, auth):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await phone.ws_connect("/media/plivo?token=not-a-token")
    assert info.value.status == 403
    assert engine.calls == []


async def test_a_twilio_frame_is_not_a_plivo_start(phone, engine, auth, fake, http):
    call = await answered(phone, auth, fake, http)
    url = (call.stream_url or "").replace(PUBLIC_URL.replace("https", "wss"), "")
    ws = await phone.ws_connect(url)
    await ws.send_str('{"event":"start","start":{"streamSid":"MZ1","callSid":"CA1"}}')
    assert (await ws.receive()).data == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert engine.calls == []


async def test_bad_frames_are_logged_on_the_call_and_dropped(
    phone, engine, auth, database, fake, http
):
    call, line = await opened(phone, auth, fake, http, engine)
    call_id = call.extra_headers["callId"]
    [scripted] = engine.calls
    await line.ws.send_str("this is not json")
    await line.ws.send_str('{"event":"media","media":{"payload":"***"}}')
    await line.ws.send_str('{"event":"dtmf","dtmf":{"digit":"55"}}')
    await line.ws.send_bytes(b"\x00\x01")
    await line.ws.send_str(line.media_frame(b"\xff" * 160))
    await wait_for(lambda: len(scripted.audio) == 1)
    events = await call_events(database, call_id, "telephony")
    assert len(events) == 4
    assert all(e.message.startswith("dropped a bad frame") for e in events)
    assert await status_of(database, call_id) == "in_progress"
    await line.ws.close()


async def test_when_the_engine_hangs_up_plivo_hangs_up_through_its_call_api(
    phone, engine, auth, database, fake, http
):
    call, line = await opened(phone, auth, fake, http, engine)
    call_id = call.extra_headers["callId"]
    await engine.calls[0].line.hangup()
    await engine.calls[0].end()
    assert (await line.ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ended(database, call_id)
    assert await status_of(database, call_id) == "completed"
    assert ("DELETE", f"/v1/Account/{AUTH_A}/Call/{call.call_uuid}/") in fake[0].requests
    assert call.hung_up
    await fake[0].stream_ended(http, call, fake[0].accounts[AUTH_A])
    assert call.after is None  # hung up: the <Redirect> is not followed


async def test_without_plivos_call_api_the_redirect_hangs_up(
    phone, engine, auth, database, fake, http
):
    call, line = await opened(phone, auth, fake, http, engine)
    fake[0].control_error = 500
    await engine.calls[0].line.hangup()
    await engine.calls[0].end()
    await ended(database, call.extra_headers["callId"])
    await fake[0].stream_ended(http, call, fake[0].accounts[AUTH_A])
    assert [c.tag for c in ET.fromstring(call.after or "")] == ["Hangup"]


async def test_a_transfer_is_dialled_when_the_stream_ends(
    phone, engine, auth, database, fake, http
):
    call, line = await opened(phone, auth, fake, http, engine)
    await engine.calls[0].line.transfer("+61255501234")
    await engine.calls[0].line.hangup()
    await engine.calls[0].end()
    await ended(database, call.extra_headers["callId"])
    await fake[0].stream_ended(http, call, fake[0].accounts[AUTH_A])
    dial = ET.fromstring(call.after or "").find("Dial")
    assert dial is not None
    assert [(n.tag, n.text) for n in dial] == [("Number", "61255501234")]


async def test_a_byot_join_url_takes_a_plivo_stream(phone, engine, auth, database, fake, http):
    agent = await plivo_agent(phone, auth)
    resp = await phone.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "plivo"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["joinUrl"].startswith("wss://relay.example.com/media/plivo?token=")
    byot = StreamedCall(call_uuid="own-plivo-call", answer="", stream_url=created["joinUrl"])
    line = await fake[0].open_stream(http, byot, fake[0].accounts[AUTH_A])
    await asyncio.wait_for(engine.started.wait(), 5)
    assert engine.calls[0].call_id == created["id"]
    assert await status_of(database, created["id"]) == "in_progress"
    await line.ws.close()
    await ended(database, created["id"])
