"""The webhook turn client against a real local HTTP server (no mocks)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.turns.protocol import (
    MAX_BODY_BYTES,
    MAX_LINE_BYTES,
    Chunk,
    TurnError,
    TurnRequest,
    stream_turn,
)

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


# ------------------------------------------------------------------ a reply in several pieces


async def test_json_reply_written_in_pieces_is_read_to_its_end(aiohttp_server):
    body = json.dumps({"text": "Half of this arrives late.", "state": {"step": 3}}).encode()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:10])
        await asyncio.sleep(0.1)
        await resp.write(body[10:])
        return resp

    chunks = await collect(turn(await start(aiohttp_server, handler)))
    assert chunks == [Chunk(text="Half of this arrives late.", state={"step": 3})]


async def test_json_reply_in_chunked_transfer_encoding_is_read_to_its_end(aiohttp_server):
    body = json.dumps({"text": "Chunked, " * 50, "hangup": True}).encode()
    seen = {}

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        seen["chunked"] = resp.chunked
        for i in range(0, len(body), 100):
            await resp.write(body[i : i + 100])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    chunks = await collect(turn(await start(aiohttp_server, handler)))
    assert seen["chunked"]
    assert chunks == [Chunk(text="Chunked, " * 50, hangup=True)]


async def test_json_reply_of_exactly_1_mib_is_read_whole(aiohttp_server):
    head = json.dumps({"text": "A long one."}).encode()
    body = head[:-1] + b" " * (MAX_BODY_BYTES - len(head)) + b"}"  # more than one TCP read

    async def handler(request):
        return web.Response(body=body, content_type="application/json")

    assert len(body) == MAX_BODY_BYTES
    chunks = await collect(turn(await start(aiohttp_server, handler)))
    assert chunks == [Chunk(text="A long one.")]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_json_reply_over_1_mib_is_refused(aiohttp_server, framing):
    body = b'{"text": "' + b"a" * MAX_BODY_BYTES + b'"}'

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if framing == "content-length":
            resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 64 * 1024):
            await resp.write(body[i : i + 64 * 1024])
        while framing == "chunked":  # and no end: nothing past the limit is waited for
            await resp.write(b"a" * 64 * 1024)
        return resp

    started = time.perf_counter()
    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert (err.value.reason, err.value.detail) == ("invalid_body", "body larger than 1 MiB")
    assert time.perf_counter() - started < 2.0


async def test_json_body_nested_too_deep_is_invalid(aiohttp_server):
    async def handler(request):
        return web.Response(body=b"[" * 100_000, content_type="application/json")

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert (err.value.reason, err.value.detail) == ("invalid_body", "the body is not JSON")


async def test_json_body_is_due_within_the_timeout_from_sending(aiohttp_server):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"text": ')
        await asyncio.sleep(5)
        return resp

    started = time.perf_counter()
    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler), timeout=0.3))
    assert err.value.reason == "timeout"
    assert time.perf_counter() - started < 2.0


# ------------------------------------------------------------------ NDJSON line limit


def ndjson_body(*lines: bytes):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in lines:
            for i in range(0, len(line), 50_000):  # a long line arrives in many reads
                await resp.write(line[i : i + 50_000])
        await resp.write_eof()
        return resp

    return handler


def line_of(size: int, *, interim: bool = False) -> bytes:
    head = b'{"interim": true, "text": "' if interim else b'{"text": "'
    return head + b"b" * (size - len(head) - 2) + b'"}'


async def test_ndjson_line_up_to_256_kib_is_read(aiohttp_server):
    long = line_of(MAX_LINE_BYTES, interim=True)  # over aiohttp 3.10's readline limit (128 KiB)
    handler = ndjson_body(b'{"text": "Hi.", "interim": true}\n', long + b"\r\n", b'{"text": "end"}')
    chunks = await collect(turn(await start(aiohttp_server, handler)))
    assert [len(c.text) for c in chunks] == [3, MAX_LINE_BYTES - 29, 3]


async def test_ndjson_line_over_256_kib_is_refused(aiohttp_server):
    long = line_of(MAX_LINE_BYTES + 1)
    handler = ndjson_body(b'{"text": "Hi.", "interim": true}\n', long + b"\n")
    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert (err.value.reason, err.value.detail) == ("invalid_line", "line 2 is too long")


async def test_ndjson_endless_line_is_refused_without_waiting_for_its_end(aiohttp_server):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for _ in range(1000):
            await resp.write(b"x" * 64 * 1024)
        return resp

    with pytest.raises(TurnError) as err:
        await collect(turn(await start(aiohttp_server, handler)))
    assert (err.value.reason, err.value.detail) == ("invalid_line", "line 1 is too long")


async def test_the_first_chunk_without_interim_closes_the_turn(aiohttp_server):
    handler = ndjson_body(
        b'{"text": "One.", "interim": true}\n',
        b'{"text": "Two."}\n{"text": "Three."}\n{"hangup": true}\n',
    )
    t = turn(await start(aiohttp_server, handler))
    chunks = await collect(t)
    assert [c.text for c in chunks] == ["One.", "Two."]
    assert t.timing.ignored_lines == 2  # "Three." and the hangup had arrived with "Two."


async def test_a_stream_still_open_after_its_final_chunk_is_not_waited_for(aiohttp_server):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"text": "Done."}\n')
        await asyncio.sleep(30)  # a webhook that never ends its body
        return resp

    t = turn(await start(aiohttp_server, handler), timeout=5.0)
    chunks = await asyncio.wait_for(collect(t), 3)
    assert [c.text for c in chunks] == ["Done."] and t.timing.ignored_lines == 0


def test_a_play_chunk_carries_an_http_url():
    chunk = Chunk.parse({"play": "https://cdn.example.com/hold.wav", "interim": True})
    assert (chunk.play, chunk.text, chunk.interim) == ("https://cdn.example.com/hold.wav", "", True)
    assert Chunk.parse({"text": "hi"}).play is None


@pytest.mark.parametrize(
    "play",
    [
        "ftp://cdn.example.com/hold.wav",
        "file:///etc/passwd",
        "/hold.wav",
        "https://",
        "",
        "https://cdn.example.com/" + "a" * 2048,
        42,
        ["https://cdn.example.com/hold.wav"],
    ],
)
def test_a_play_chunk_that_is_not_an_http_url_is_refused(play):
    with pytest.raises(ValueError, match="'play' must be an http"):
        Chunk.parse({"play": play})
