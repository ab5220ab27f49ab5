"""The Telnyx media streaming socket, at the wire: frames in and out, the token, how calls
end (a ``stop``; or the relay hanging up, which must also end the call at Telnyx, since a
Telnyx call outlives its stream). The engine is scripted; whole calls with real speech are
in tests/carriers/test_telnyx_calls.py; the wire protocol in
relay/transports/telnyx_protocol.py."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import urlsplit

import numpy as np
import pytest

from relay.calls.media import MEDIA
from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.transports import telnyx_protocol as tp
from tests.carriers.telnyx_support import CALLER, NUMBER_A, bound_number, deliver_to_relay
from tests.transports.support import ScriptedEngine, calls, lifecycle_types, wait_for


@pytest.fixture
def settings(telnyx_settings):
    return telnyx_settings


@pytest.fixture
def engine(client) -> ScriptedEngine:
    client.app[MEDIA].engine = ScriptedEngine()
    return client.app[MEDIA].engine


def start_frame(ccid: str, encoding: str = "PCMU") -> str:
    start = {
        "user_id": "u1",
        "call_control_id": ccid,
        "client_state": None,
        "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1},
    }
    return json.dumps({"event": "start", "sequence_number": "1", "start": start, "stream_id": "S1"})


def media_frame(payload: bytes, seq: int = 2) -> str:
    media = {
        "track": "inbound",
        "chunk": str(seq),
        "timestamp": "20",
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps(
        {"event": "media", "sequence_number": str(seq), "media": media, "stream_id": "S1"}
    )


async def answered_call(client, auth, fake, account):
    """A Telnyx call the relay answered: (the fake's call, the stream path the relay gave)."""
    await bound_number(client, auth, fake, account, NUMBER_A)
    deliver_to_relay(fake, client)
    call = await fake.place_call(account, CALLER, NUMBER_A, [])
    body = next(b for _, p, b in fake.requests if p.endswith("/actions/answer"))
    url = urlsplit(body["stream_url"])
    return call, f"{url.path}?{url.query}"


async def test_a_call_streams_both_ways_and_ends_when_telnyx_stops(
    client, auth, fake, account_a, engine, database
):
    call, path = await answered_call(client, auth, fake, account_a)
    ws = await client.ws_connect(path)
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame(call.call_control_id))
    await asyncio.wait_for(engine.started.wait(), 5)
    [scripted] = engine.calls
    [row] = await calls(database)
    assert (row.status, row.carrier_call_id) == ("in_progress", call.call_control_id)

    caller = (3000 * np.sin(np.arange(160) / 8000 * 2 * np.pi * 440)).astype(np.int16)
    await ws.send_str(media_frame(ulaw_encode(caller)))
    dtmf = {"event": "dtmf", "stream_id": "S1", "sequence_number": "3", "dtmf": {"digit": "7"}}
    await ws.send_str(json.dumps(dtmf))
    outbound = {**json.loads(media_frame(ulaw_encode(caller), 4))}
    outbound["media"]["track"] = "outbound"  # both_tracks: the agent's own audio, ignored
    await ws.send_str(json.dumps(outbound))
    await wait_for(lambda: len(scripted.audio) == 1 and scripted.dtmf == ["7"])
    assert np.array_equal(scripted.audio[0][0], ulaw_decode(ulaw_encode(caller)))

    agent = (2000 * np.sin(np.arange(320) / 8000 * 2 * np.pi * 300)).astype(np.int16)
    await scripted.line.send_audio(agent)
    await scripted.line.clear()
    frames = [json.loads((await ws.receive()).data) for _ in range(3)]
    assert frames[2] == {"event": "clear"}
    assert [f["event"] for f in frames[:2]] == ["media", "media"]
    assert b"".join(base64.b64decode(f["media"]["payload"]) for f in frames[:2]) == ulaw_encode(
        agent
    )
    stop = {"event": "stop", "sequence_number": "5", "stop": {"call_control_id": "x"}}
    await ws.send_str(json.dumps({**stop, "stream_id": "S1"}))
    await asyncio.wait_for(scripted.hung_up.wait(), 5)
    await wait_for(lambda: _status(database, row.id, "completed"))
    assert await lifecycle_types(database, row.id) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]


async def _status(database, call_id: str, status: str) -> bool:
    return any(c.id == call_id and c.status == status for c in await calls(database))


async def test_a_hangup_by_the_agent_ends_the_call_at_telnyx(
    client, auth, fake, account_a, engine, database
):
    call, path = await answered_call(client, auth, fake, account_a)
    ws = await client.ws_connect(path)
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame(call.call_control_id))
    await asyncio.wait_for(engine.started.wait(), 5)
    assert call.alive
    await engine.calls[0].end("completed")
    hangup = f"/v2/calls/{call.call_control_id}/actions/hangup"
    await wait_for(lambda: any(p == hangup for _, p, _ in fake.requests))
    await fake.settle()
    assert (call.alive, call.hangup_cause) == (False, "normal_clearing")


async def test_a_socket_without_a_token_or_with_another_codec_is_refused(
    client, auth, fake, account_a, engine, database
):
    resp = await client.get("/media/telnyx")
    assert resp.status == 403
    call, path = await answered_call(client, auth, fake, account_a)
    ws = await client.ws_connect(path)
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame(call.call_control_id, encoding="OPUS"))
    msg = await ws.receive()
    assert msg.type.name in ("CLOSE", "CLOSED")
    assert engine.calls == []
    [row] = await calls(database)
    assert row.status == "connecting"


def test_the_protocol_reads_telnyx_frames_and_refuses_malformed_ones():
    start = tp.parse(start_frame("v3:abc"))
    assert start == tp.Start(stream_id="S1", call_control_id="v3:abc")
    assert tp.parse(media_frame(b"\xff\x7f")) == tp.Media(b"\xff\x7f", "inbound")
    assert tp.parse('{"event":"mark","mark":{"name":"m1"}}') == tp.Mark("m1")
    error = '{"event":"error","payload":{"code":100002,"detail":"Unknown error"}}'
    assert tp.parse(error) == tp.Error("100002", "Unknown error")
    for bad in (
        "nope",
        "[]",
        '{"event":"media","media":{"payload":"***"}}',
        '{"event":"dtmf","dtmf":{"digit":"77"}}',
        '{"event":"start","start":{}}',
        '{"event":"teleport"}',
    ):
        with pytest.raises(tp.ProtocolError):
            tp.parse(bad)
    assert json.loads(tp.media(b"\x00")) == {"event": "media", "media": {"payload": "AA=="}}
    assert json.loads(tp.mark("m")) == {"event": "mark", "mark": {"name": "m"}}


async def test_a_transfer_is_handed_to_telnyx_and_the_call_is_not_hung_up(
    client, auth, fake, account_a, engine, database
):
    call, path = await answered_call(client, auth, fake, account_a)
    ws = await client.ws_connect(path)
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame(call.call_control_id))
    await asyncio.wait_for(engine.started.wait(), 5)
    [scripted] = engine.calls
    await scripted.line.transfer("+14155550199")
    await scripted.end("completed")
    [row] = await calls(database)
    await wait_for(lambda: _status(database, row.id, "completed"))
    assert call.transfer_to == "+14155550199"
    actions = [p.rsplit("/", 1)[1] for _, p, _ in fake.requests if "/actions/" in p]
    assert actions == ["answer", "transfer"]  # not hung up: Telnyx bridges it on


async def test_digits_go_through_call_controls_send_dtmf(
    client, auth, fake, account_a, engine, database
):
    call, path = await answered_call(client, auth, fake, account_a)
    ws = await client.ws_connect(path)
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame(call.call_control_id))
    await asyncio.wait_for(engine.started.wait(), 5)
    await engine.calls[0].line.send_dtmf("1w2#")
    assert call.digits == ["1w2#"]
    [(_, sent)] = [(p, b) for _, p, b in fake.requests if p.endswith("/actions/send_dtmf")]
    assert sent == {"digits": "1w2#", "duration_millis": 250}
    with pytest.raises(TimeoutError):  # no tones in the stream besides
        await ws.receive(timeout=0.3)
    await engine.calls[0].end("completed")


async def test_a_byot_call_streams_over_the_telnyx_socket(client, auth, engine, database):
    body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/h"}
    agent = await (await client.post("/v1/agents", json=body, headers=auth)).json()
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "telnyx"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    join = urlsplit((await resp.json())["joinUrl"])
    assert join.path == "/media/telnyx"
    ws = await client.ws_connect(f"{join.path}?{join.query}")
    await ws.send_str('{"event":"connected","version":"1.0.0"}')
    await ws.send_str(start_frame("v3:developers-own"))
    await asyncio.wait_for(engine.started.wait(), 5)
    [row] = await calls(database)
    assert (row.status, row.connection_type, row.carrier_call_id) == (
        "in_progress",
        "telnyx",
        "v3:developers-own",
    )
    await engine.calls[0].end("completed")  # the developer's Telnyx call: not ours to end
    await wait_for(lambda: _status(database, row.id, "completed"))
