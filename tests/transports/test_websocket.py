"""The raw websocket transport at the wire: PCM16 both ways, the JSON control protocol."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest

from relay import tokens
from relay.calls import inbound
from relay.state import APP_STATE
from relay.store.models import Agent
from tests.transports.support import (
    agent_with_number,
    call_events,
    calls,
    lifecycle_types,
    twilio_post,
    voice_params,
    wait_for,
)


async def open_call(phone, auth, database, sample_rate: int = 16000, **kwargs):
    agent, number = await agent_with_number(phone, auth)
    async with database.session() as session:
        project_id = (await session.get(Agent, agent["id"])).project_id
    target = {"number": number} if kwargs.pop("by_number", False) else {"agent_id": agent["id"]}
    return await inbound.start_websocket_call(
        phone.app[APP_STATE], project_id=project_id, sample_rate=sample_rate, **target, **kwargs
    )


def local(join_url: str) -> str:
    parts = urlsplit(join_url)
    return f"{parts.path}?{parts.query}"


async def connect(phone, engine, join_url: str):
    ws = await phone.ws_connect(local(join_url))
    hello = json.loads((await ws.receive()).data)
    await asyncio.wait_for(engine.started.wait(), 5)
    return ws, hello


async def status_of(database, call_id: str) -> str:
    return next(c.status for c in await calls(database) if c.id == call_id)


async def test_pcm_and_control_messages_flow_both_ways_at_16_khz(phone, engine, auth, database):
    opened = await open_call(phone, auth, database, metadata={"crm": "42"})
    assert opened.join_url.startswith("wss://relay.example.com/media/websocket?token=")
    ws, hello = await connect(phone, engine, opened.join_url)
    assert hello == {"type": "connected", "callId": opened.call_id, "sampleRate": 16000}
    [call] = engine.calls
    assert call.line.sample_rate == 16000
    assert call.setup.metadata == {"crm": "42"}
    assert await status_of(database, opened.call_id) == "in_progress"

    caller = (np.arange(320) * 50 - 8000).astype(np.int16)  # 20 ms at 16 kHz
    await ws.send_bytes(caller.astype("<i2").tobytes())
    await ws.send_str(json.dumps({"type": "dtmf", "digit": "#"}))
    await wait_for(lambda: len(call.audio) == 1 and call.dtmf == ["#"])
    pcm, rate = call.audio[0]
    assert rate == 16000 and np.array_equal(pcm, caller)

    agent = (np.arange(320) * -30).astype(np.int16)
    await call.line.send_audio(agent)
    await call.line.clear()
    await call.line.send_dtmf("12#")
    await call.line.transfer("+61255501234")
    audio = await ws.receive()
    assert audio.type == aiohttp.WSMsgType.BINARY
    assert np.array_equal(np.frombuffer(audio.data, dtype="<i2"), agent)
    controls = [json.loads((await ws.receive()).data) for _ in range(3)]
    assert controls == [
        {"type": "clear"},
        {"type": "dtmf", "digits": "12#"},
        {"type": "transfer", "to": "+61255501234"},
    ]

    await ws.send_str('{"type": "stop"}')
    await asyncio.wait_for(call.hung_up.wait(), 5)
    await wait_for(_status_is(database, opened.call_id, "completed"))
    assert await lifecycle_types(database, opened.call_id) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]
    await ws.close()


def _status_is(database, call_id: str, status: str):
    async def check() -> bool:
        return await status_of(database, call_id) == status

    return check


@pytest.mark.parametrize("rate", [8000, 24000, 48000])
async def test_the_sample_rate_is_the_one_the_call_was_opened_with(
    phone, engine, auth, database, rate
):
    opened = await open_call(phone, auth, database, sample_rate=rate)
    ws, hello = await connect(phone, engine, opened.join_url)
    assert hello["sampleRate"] == rate == engine.calls[0].line.sample_rate
    await ws.close()
    await wait_for(_status_is(database, opened.call_id, "completed"))


async def test_a_call_may_be_opened_by_number(phone, engine, auth, database):
    opened = await open_call(phone, auth, database, by_number=True, from_number="+15005550006")
    [row] = await calls(database)
    assert (row.connection_type, row.from_number, row.number_id is not None) == (
        "websocket",
        "+15005550006",
        True,
    )
    assert row.id == opened.call_id


async def test_hangup_tells_the_client_then_closes(phone, engine, auth, database):
    opened = await open_call(phone, auth, database)
    ws, _ = await connect(phone, engine, opened.join_url)
    call = engine.calls[0]
    await call.line.hangup()
    await call.end()
    assert json.loads((await ws.receive()).data) == {"type": "hangup"}
    assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    await wait_for(_status_is(database, opened.call_id, "completed"))


async def test_bad_frames_get_an_error_frame_and_the_call_goes_on(phone, engine, auth, database):
    opened = await open_call(phone, auth, database)
    ws, _ = await connect(phone, engine, opened.join_url)
    for bad in ("not json", '{"type": "dtmf", "digit": "55"}', '{"type": "dance"}'):
        await ws.send_str(bad)
    await ws.send_bytes(b"\x01\x02\x03")
    errors = [json.loads((await ws.receive()).data) for _ in range(4)]
    assert [e["code"] for e in errors] == [
        "malformed_json",
        "invalid_dtmf",
        "unknown_type",
        "odd_length_audio",
    ]
    assert all(e["type"] == "error" and e["message"] for e in errors)
    await ws.send_bytes(b"\x00\x00" * 160)
    await wait_for(lambda: len(engine.calls[0].audio) == 1)
    logged = await call_events(database, opened.call_id, "telephony")
    assert len(logged) == 4
    assert await status_of(database, opened.call_id) == "in_progress"
    await ws.close()


@pytest.mark.parametrize("kind", ["missing", "expired", "twilio_path"])
async def test_refused_tokens(phone, engine, auth, database, kind):
    opened = await open_call(phone, auth, database)
    token = opened.join_url.split("token=", 1)[1]
    key = phone.app[APP_STATE].signing_key
    path = {
        "missing": "/media/websocket",
        "expired": "/media/websocket?token=" + tokens.issue(key, opened.call_id, "media", -1),
        "twilio_path": f"/media/twilio?token={token}",  # a websocket call's token elsewhere
    }[kind]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await phone.ws_connect(path)
    assert info.value.status == 403
    assert engine.calls == []


async def test_a_twilio_calls_token_does_not_open_a_raw_socket(phone, engine, auth, database):
    _, number = await agent_with_number(phone, auth)
    resp = await twilio_post(phone, "/carriers/twilio/voice", voice_params(number))
    token = (await resp.text()).split('name="token" value="', 1)[1].split('"', 1)[0]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await phone.ws_connect(f"/media/websocket?token={token}")
    assert info.value.status == 403
