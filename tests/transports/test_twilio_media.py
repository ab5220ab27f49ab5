"""The Twilio Media Streams socket, at the wire: tokens, frames in and out, how calls end.

The engine here is scripted (tests/transports/support.py); the real engine's end-to-end
calls are in test_calls_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET

import aiohttp
import numpy as np
import pytest

from relay import tokens
from relay.api.media import UNAUTHENTICATED
from relay.calls.media import MEDIA
from relay.carriers import CarrierError
from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.state import APP_STATE
from relay.transports.twilio import dtmf_tones
from tests.transports.support import (
    ScriptedEngine,
    agent_with_number,
    call_events,
    calls,
    lifecycle_types,
    phone_settings,
    twilio_post,
    voice_params,
    wait_for,
)


async def new_call(phone, auth) -> tuple[str, str]:
    """A Twilio call answered with TwiML: (call id, media token)."""
    _, number = await agent_with_number(phone, auth)
    resp = await twilio_post(phone, "/carriers/twilio/voice", voice_params(number, sid="CA7"))
    stream = ET.fromstring(await resp.text()).find("Connect/Stream")
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return params["callId"], params["token"]


def start_frame(**custom: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC0001",
                "streamSid": "MZ1",
                "callSid": "CA7",
                "tracks": ["inbound"],
                "customParameters": custom,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": "MZ1",
        }
    )


def media_frame(payload: bytes) -> str:
    media = {"track": "inbound", "payload": base64.b64encode(payload).decode()}
    return json.dumps({"event": "media", "streamSid": "MZ1", "media": media})


async def connect(phone, engine, token: str, *, query: bool = True):
    path = f"/media/twilio?token={token}" if query else "/media/twilio"
    ws = await phone.ws_connect(path)
    await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    await ws.send_str(start_frame(callId="ignored", **({} if query else {"token": token})))
    await asyncio.wait_for(engine.started.wait(), 5)
    return ws


async def status_of(database, call_id: str) -> str:
    return next(c.status for c in await calls(database) if c.id == call_id)


async def ended(database, call_id: str) -> None:
    async def check() -> bool:
        return await status_of(database, call_id) in ("completed", "failed")

    await wait_for(check)


async def test_a_call_streams_both_ways_and_ends_when_the_carrier_stops(
    phone, engine, auth, database
):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    [call] = engine.calls
    assert call.call_id == call_id
    assert call.setup.direction == "inbound" and call.setup.webhook_url == "http://127.0.0.1:9/hook"
    assert call.setup.webhook_secrets and call.setup.webhook_secrets[0].startswith("whsec_")
    assert call.line.sample_rate == 8000
    assert await status_of(database, call_id) == "in_progress"

    caller = (3000 * np.sin(np.arange(160) / 8000 * 2 * np.pi * 440)).astype(np.int16)
    await ws.send_str(media_frame(ulaw_encode(caller)))
    await ws.send_str('{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"5"}}')
    await wait_for(lambda: len(call.audio) == 1 and call.dtmf == ["5"])
    pcm, rate = call.audio[0]
    assert rate == 8000
    assert np.array_equal(pcm, ulaw_decode(ulaw_encode(caller)))

    agent = (2000 * np.sin(np.arange(320) / 8000 * 2 * np.pi * 300)).astype(np.int16)
    await call.line.send_audio(agent)  # 40 ms: two 20 ms media frames
    await call.line.clear()
    frames = [json.loads((await ws.receive()).data) for _ in range(3)]
    assert [f["event"] for f in frames] == ["media", "media", "clear"]
    assert all(f["streamSid"] == "MZ1" for f in frames)
    payloads = [base64.b64decode(f["media"]["payload"]) for f in frames[:2]]
    assert [len(p) for p in payloads] == [160, 160]
    assert b"".join(payloads) == ulaw_encode(agent)

    await ws.send_str('{"event":"stop","streamSid":"MZ1","stop":{"callSid":"CA7"}}')
    await asyncio.wait_for(call.hung_up.wait(), 5)
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
    assert row.carrier_call_id == "CA7"
    await ws.close()


async def test_the_token_may_come_in_the_start_frame_instead_of_the_url(
    phone, engine, auth, database
):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token, query=False)
    assert engine.calls[0].call_id == call_id
    assert await status_of(database, call_id) == "in_progress"
    await ws.close()
    await ended(database, call_id)


async def test_a_socket_without_a_token_is_closed_as_a_policy_violation(phone, engine, auth):
    call_id, _ = await new_call(phone, auth)
    ws = await phone.ws_connect("/media/twilio")
    await ws.send_str(start_frame(callId=call_id))
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert engine.calls == []


async def test_a_forged_token_in_the_start_frame_is_closed_as_a_policy_violation(
    phone, engine, auth
):
    call_id, token = await new_call(phone, auth)
    forged = tokens.issue(b"not the relay's key" * 2, call_id, "media", 60)
    ws = await phone.ws_connect("/media/twilio")
    await ws.send_str(start_frame(token=forged))
    msg = await ws.receive()
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert engine.calls == []


async def test_an_unauthenticated_socket_loads_no_engine(database, app_client):
    client = await app_client(phone_settings())
    made: list[ScriptedEngine] = []

    def factory() -> ScriptedEngine:
        made.append(ScriptedEngine())
        return made[-1]

    client.app[MEDIA].engine_factory = factory
    ws = await client.ws_connect("/media/twilio")
    await ws.send_str(start_frame(token="not a token"))
    msg = await ws.receive()
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert made == []  # no speech models were loaded for a socket that proved nothing


async def test_unauthenticated_sockets_per_address_are_capped_until_they_name_their_call(
    phone, engine, auth
):
    limit = phone.app[UNAUTHENTICATED].per_address
    silent = [await phone.ws_connect("/media/twilio") for _ in range(limit)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await phone.ws_connect("/media/twilio")
    assert refused.value.status == 429
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    resp = await phone.get("/media/twilio", headers=upgrade)  # the refusal's JSON shape
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "too_many_unauthenticated_sockets"
    # A socket that names its call with a good token frees its place at once.
    call_id, token = await new_call(phone, auth)
    await silent[0].send_str(start_frame(token=token))
    await asyncio.wait_for(engine.started.wait(), 5)
    assert engine.calls[0].call_id == call_id
    await wait_for(lambda: len(phone.app[UNAUTHENTICATED]) == limit - 1)
    extra = await phone.ws_connect("/media/twilio")
    # Closing silent sockets frees theirs; a socket with its token in the URL never counts.
    for ws in [*silent[1:], extra]:
        await ws.close()
    await wait_for(lambda: len(phone.app[UNAUTHENTICATED]) == 0)
    await silent[0].close()


async def test_a_malformed_frame_before_start_ends_the_socket(phone, engine):
    ws = await phone.ws_connect("/media/twilio")
    await ws.send_str(
        '{"event":"start","start":{"streamSid":"MZ1","mediaFormat":{"sampleRate":"x"}}}'
    )
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert engine.calls == []


@pytest.mark.parametrize("kind", ["garbage", "forged", "expired", "other_purpose", "no_upgrade"])
async def test_bad_tokens_are_refused_before_the_upgrade(phone, engine, auth, database, kind):
    call_id, token = await new_call(phone, auth)
    key = phone.app[APP_STATE].signing_key
    bad = {
        "garbage": "not-a-token",
        "forged": tokens.issue(b"x" * 32, call_id, "media", 60),
        "expired": tokens.issue(key, call_id, "media", -5),
        "other_purpose": tokens.issue(key, call_id, "download", 60),
        "no_upgrade": token,
    }[kind]
    if kind == "no_upgrade":
        resp = await phone.get("/media/twilio")  # no token, and not a websocket
        assert resp.status == 403
        return
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await phone.ws_connect(f"/media/twilio?token={bad}")
    assert info.value.status == 403
    assert engine.calls == []
    assert await status_of(database, call_id) == "connecting"


async def test_a_second_socket_for_the_same_call_is_refused(phone, engine, auth, database):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await phone.ws_connect(f"/media/twilio?token={token}")
    assert info.value.status == 403
    second = await phone.ws_connect("/media/twilio")
    await second.send_str(start_frame(token=token))
    assert (await second.receive()).data == 1008
    assert len(engine.calls) == 1
    await ws.close()


async def test_bad_frames_are_logged_on_the_call_and_dropped(phone, engine, auth, database):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    [call] = engine.calls
    await ws.send_str("this is not json")
    await ws.send_str('{"event":"media","media":{"payload":"***"}}')
    await ws.send_str('{"event":"dtmf","dtmf":{"digit":"55"}}')
    await ws.send_bytes(b"\x00\x01")
    await ws.send_str(media_frame(b"\xff" * 160))
    await wait_for(lambda: len(call.audio) == 1)
    events = await call_events(database, call_id, "telephony")
    assert len(events) == 4
    assert all(e.message.startswith("dropped a bad frame") for e in events)
    assert "not JSON" in events[0].message
    assert await status_of(database, call_id) == "in_progress"
    await ws.close()


async def test_when_the_engine_hangs_up_the_socket_closes_and_the_call_completes(
    phone, engine, auth, database
):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    [call] = engine.calls
    await call.line.hangup()
    await call.end()
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE
    await ended(database, call_id)
    assert await status_of(database, call_id) == "completed"


async def test_an_engine_failure_fails_the_call_with_its_reason(phone, engine, auth, database):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    await engine.calls[0].end("webhook_error")
    assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    await ended(database, call_id)
    [row] = await calls(database)
    assert (row.status, row.failure_reason) == ("failed", "webhook_error")


async def test_a_socket_dropped_without_stop_is_the_caller_hanging_up(
    phone, engine, auth, database
):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    await ws.close()
    await asyncio.wait_for(engine.calls[0].hung_up.wait(), 5)
    await ended(database, call_id)
    assert await status_of(database, call_id) == "completed"


async def test_dtmf_to_the_caller_is_played_as_tones(phone, engine, auth):
    _, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    await engine.calls[0].line.send_dtmf("5")
    tone = dtmf_tones("5")
    frames = [json.loads((await ws.receive()).data) for _ in range(len(tone) // 160)]
    pcm = ulaw_decode(b"".join(base64.b64decode(f["media"]["payload"]) for f in frames))
    spectrum = np.abs(np.fft.rfft(pcm[:800].astype(np.float64)))
    freqs = np.fft.rfftfreq(800, 1 / 8000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert abs(peaks[0] - 770) <= 10 and abs(peaks[1] - 1336) <= 10  # the two tones of "5"
    await ws.close()


async def test_a_transfer_twilio_cannot_take_is_dialled_when_the_stream_ends(
    phone, engine, auth, database
):
    call_id, token = await new_call(phone, auth)
    ws = await connect(phone, engine, token)
    # No Twilio REST API answers here: the transfer is refused, logged, and still recorded.
    with pytest.raises(CarrierError):
        await engine.calls[0].line.transfer("+61255501234")
    await engine.calls[0].line.hangup()
    await engine.calls[0].end()
    await ended(database, call_id)
    path = f"/carriers/twilio/voice/after?callId={call_id}"
    resp = await twilio_post(phone, path, {"CallSid": "CA7"})
    assert [(c.tag, c.text) for c in ET.fromstring(await resp.text())] == [("Dial", "+61255501234")]
    await ws.close()


async def test_a_call_whose_socket_never_comes_fails_with_network_timeout(
    phone, engine, auth, database
):
    phone.app[MEDIA].connect_deadline = 0.2
    call_id, _ = await new_call(phone, auth)
    await ended(database, call_id)
    [row] = await calls(database)
    assert (row.status, row.failure_reason) == ("failed", "network_timeout")
