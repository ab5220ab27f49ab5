"""The webhook turn client against a real local HTTP server (no mocks)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.turns.protocol import Chunk, TurnError, TurnRequest, stream_turn

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
PAYLOAD = {"event": "agent.message", "channel": "voice", "data": {"transcript": "hello"}}


async def start(aiohttp_server, handler):
    app = web.Application()
    app.router.add_post("/hook", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook"))


def turn(url, timeout=2.0, secrets=(SECRET,)):
    return TurnRequest(url=url, secrets=list(secrets), timeout_s=timeout, payload=PAYLOAD)


async def collect(t):
    async with aiohttp.ClientSession() as session:
        return [c async for c in stream_turn(session, t)]


async def test_json_reply_is_one_chunk_and_request_is_signed(aiohttp_server):
    seen = {}

    async def handler(request):
        body = await request.read()
        seen["event"] = Webhook(SECRET).verify(body, dict(request.headers))
        return web.json_response({"text": "Hi there.", "state": {"step": 2}, "hangup": True})

    chunks = await collect(turn(await start(aiohttp_server, handler)))
    assert chunks == [Chunk(text="Hi there.", state={"step": 2}, hangup=True)]
    assert seen["event"] == PAYLOAD


async def test_rotation_signs_with_both_secrets(aiohttp_server):
    verified = []

    async def handler(request):
        body = await request.read()
        for secret in (SECRET, OLD_SECRET):
            verified.append(Webhook(secret).verify(body, dict(request.headers))["event"])
        return web.json_response({"text": "ok"})

    await collect(turn(await start(aiohttp_server, handler), secrets=(SECRET, OLD_SECRET)))
    assert verified == ["agent.message", "agent.message"]


async def test_ndjson_chunks_arrive_before_the_stream_ends(aiohttp_server):
    release = asyncio.Event()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"text": "First part.", "interim": true}\n')
        await release.wait()
        await resp.write(b'{"text": "Second part.", "dtmf": "12#"}\n')
        await resp.write_eof()
        return resp

    t = turn(await start(aiohttp_server, handler))
    async with aiohttp.ClientSession() as session:
        gen = stream_turn(session, t)
        first = await asyncio.wait_for(gen.__anext__(), 1.0)
        assert first == Chunk(text="First part.", interim=True)
        release.set()
        rest = [c async for c in gen]
    assert rest == [Chunk(text="Second part.", dtmf="12#")]
    assert t.timing.first_chunk_at is not None and t.timing.done_at is not None


async def test_closing_the_stream_aborts_the_request(aiohttp_server):
    disconnected = asyncio.Event()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"text": "Long story.", "interim": true}\n')
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                await resp.write(b'{"text": "more", "interim": true}\n')
        except (ConnectionResetError, asyncio.CancelledError):
            disconnected.set()
            raise
        return resp

    t = turn(await start(aiohttp_server, handler))
    async with aiohttp.ClientSession() as session:
        gen = stream_turn(session, t)
        await gen.__anext__()
        await gen.aclose()
    await asyncio.wait_for(disconnected.wait(), 3.0)


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "http_status"), (500, "http_status"), (302, "http_status")]
)
async def test_error_statuses(aiohttp_server, status, reason):
    async def handler(request):
        return web.Response(status=status, headers={"Location": "/elsewhere"})

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert err.value.reason == reason
    assert err.value.status == status


async def test_refused_connection(unused_tcp_port):
    with pytest.raises(TurnError) as err:
        await collect(turn(f"http://127.0.0.1:{unused_tcp_port}/hook"))
    assert err.value.reason == "connection_failed"


async def test_no_first_chunk_within_timeout(aiohttp_server):
    async def handler(request):
        await asyncio.sleep(5)
        return web.json_response({"text": "late"})

    started = time.perf_counter()
    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler), timeout=0.3))
    assert err.value.reason == "timeout"
    assert time.perf_counter() - started < 2.0


async def test_ndjson_line_that_is_not_an_object(aiohttp_server):
    async def handler(request):
        return web.Response(
            body=b'{"text": "ok", "interim": true}\n[1, 2]\n', content_type="application/x-ndjson"
        )

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert err.value.reason == "invalid_line"
    assert "line 2" in err.value.detail


async def test_ndjson_line_that_is_not_json(aiohttp_server):
    async def handler(request):
        return web.Response(body=b"hello there\n", content_type="application/x-ndjson")

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert err.value.reason == "invalid_line"


@pytest.mark.parametrize("body", [b"not json", b'"a string"', b'{"text": 5}'])
async def test_json_body_that_is_unusable(aiohttp_server, body):
    async def handler(request):
        return web.Response(body=body, content_type="application/json")

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert err.value.reason == "invalid_body"


def test_chunk_parse_rejects_bad_dtmf_and_state():
    with pytest.raises(ValueError):
        Chunk.parse({"dtmf": "12x"})
    with pytest.raises(ValueError):
        Chunk.parse({"state": [1]})
    assert Chunk.parse({"text": "a", "interruptible": False}).interruptible is False
    assert json.dumps(PAYLOAD)
