"""A webhook that fails never kills the call: fallback, a logged reason, and a failure limit."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aiohttp import web
from sqlalchemy import select

from relay.engine.turn import DEFAULT_FALLBACK
from relay.store.models import Call, CallEvent, TranscriptSegment
from tests.engine.harness import (
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    ndjson_line,
    ndjson_start,
    start_hook,
)

pytestmark = pytest.mark.slow


async def press(handle, digits):
    for digit in digits:
        handle.push_dtmf(digit)
        await asyncio.sleep(0.02)


async def fail_500(request, payload):
    return web.Response(status=500, text="boom")


async def fail_timeout(request, payload):
    await asyncio.sleep(5)
    return web.json_response({"text": "too late"})


async def fail_invalid_line(request, payload):
    resp = await ndjson_start(request)
    await resp.write(b"this is not json\n")
    await resp.write_eof()
    return resp


async def fail_invalid_body(request, payload):
    return web.Response(text="<html>oops</html>", content_type="application/json")


async def fail_stream_broken(request, payload):
    resp = await ndjson_start(request)
    await ndjson_line(resp, {"text": "Let me check", "interim": True})
    await asyncio.sleep(0.1)
    request.transport.close()
    return resp


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


MODES = {
    "connection_failed": None,
    "http_status": fail_500,
    "timeout": fail_timeout,
    "invalid_line": fail_invalid_line,
    "invalid_body": fail_invalid_body,
    "stream_broken": fail_stream_broken,
}


async def events(db, call_id):
    async with db.session() as s:
        q = select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
        return (await s.scalars(q)).all()


async def agent_lines(db, call_id):
    async with db.session() as s:
        q = (
            select(TranscriptSegment)
            .where(TranscriptSegment.call_id == call_id, TranscriptSegment.speaker == "agent")
            .order_by(TranscriptSegment.seq)
        )
        return [seg.text for seg in (await s.scalars(q)).all()]


@pytest.mark.parametrize("reason", list(MODES))
async def test_failed_turn_speaks_fallback_logs_reason_and_call_goes_on(
    reason, aiohttp_server, engine, sqlite_db, http
):
    failing = MODES[reason]
    fallback = None if reason == "http_status" else "Sorry, try again."  # None: the default

    async def reply(request, payload):
        if len(hook.requests) == 1 and failing is not None:
            return await failing(request, payload)
        return web.json_response({"text": "All good now."})

    hook = Hook(reply)
    url = closed_port_url() if failing is None else await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(
        call_setup(call_id, url, timeout_ms=1000, fallback_text=fallback), line, sqlite_db, http
    )
    await press(handle, "1#")
    await line.wait_audio(0.0)
    await line.wait_quiet(0.5)
    second_turn = time.perf_counter()
    await press(handle, "2#")
    await line.wait_audio(second_turn)  # the second turn is spoken too
    await line.wait_quiet(0.5)
    assert call_id in engine.active
    await handle.end()

    logged = [e for e in await events(sqlite_db, call_id) if e.source == "webhook"]
    assert logged[0].level == "error"
    assert logged[0].data["reason"] == reason
    assert logged[0].message.startswith(f"webhook turn failed: {reason}: ")
    if reason == "http_status":
        assert logged[0].data["status"] == 500 and "HTTP 500" in logged[0].message
    spoken = await agent_lines(sqlite_db, call_id)
    assert spoken[0].endswith(fallback or DEFAULT_FALLBACK)
    if reason == "stream_broken":
        assert spoken[0] == "Let me check " + fallback
    if failing is not None:
        assert spoken[1] == "All good now."
        assert len(logged) == 1


async def test_consecutive_failures_end_the_call_failed_webhook_error(
    aiohttp_server, engine, sqlite_db, http
):
    hook = Hook(fail_500)
    url = await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, fallback_text="Sorry, one moment please.")
    handle = await engine.start_call(setup, line, sqlite_db, http)
    for n in range(3):
        await press(handle, f"{n}#")
        await hook.wait_request(n + 1)
        await line.wait_audio(line.frames[-1][0] if line.frames else 0.0)
        if n < 2:
            await line.wait_quiet(0.5)
    status = await asyncio.wait_for(handle.wait(), 15)
    assert status == ("failed", "webhook_error")
    assert line.hangups
    async with sqlite_db.session() as s:
        call = await s.get(Call, call_id)
    assert (call.status, call.failure_reason) == ("failed", "webhook_error")
    logged = await events(sqlite_db, call_id)
    assert [e.data["consecutiveFailures"] for e in logged if e.source == "webhook"] == [1, 2, 3]
    assert any(e.source == "engine" and "3 webhook turns failed" in e.message for e in logged)
    assert await agent_lines(sqlite_db, call_id) == ["Sorry, one moment please."] * 3


async def test_one_broken_webhook_does_not_disturb_another_call(
    aiohttp_server, engine, sqlite_db, http
):
    good = Hook()
    good_url = await start_hook(aiohttp_server, good)
    lines = [RecordingLine(), RecordingLine()]
    ids = [await make_call(sqlite_db), await make_call(sqlite_db)]
    broken = await engine.start_call(
        call_setup(ids[0], closed_port_url(), max_webhook_failures=1), lines[0], sqlite_db, http
    )
    healthy = await engine.start_call(call_setup(ids[1], good_url), lines[1], sqlite_db, http)
    await press(broken, "1#")
    await press(healthy, "1#")
    assert await asyncio.wait_for(broken.wait(), 15) == ("failed", "webhook_error")
    await lines[1].wait_audio(0.0)
    second_turn = time.perf_counter()
    await press(healthy, "2#")
    await lines[1].wait_audio(second_turn)
    await lines[1].wait_quiet(0.5)
    assert ids[1] in engine.active and ids[0] not in engine.active
    await healthy.end()
    assert await agent_lines(sqlite_db, ids[1]) == ["Okay.", "Okay."]


async def test_a_long_reply_in_pieces_is_heard_cut_to_the_cap_and_the_call_goes_on(
    aiohttp_server, engine, sqlite_db, http
):
    body = json.dumps({"text": "Here is the whole story. " + "It goes on and on. " * 250})

    async def in_pieces(request, payload):  # the JSON body in two writes, 0.2 s apart
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(body[:30].encode())
        await asyncio.sleep(0.2)
        await resp.write(body[30:].encode())
        await resp.write_eof()
        return resp

    url = await start_hook(aiohttp_server, Hook(in_pieces))
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    await press(handle, "1#")
    await line.wait_audio(0.0)
    await asyncio.sleep(2.5)  # the first sentence is heard
    assert call_id in engine.active
    await handle.end()
    logged = [e for e in await events(sqlite_db, call_id) if e.source == "webhook"]
    assert [(e.level, e.data["reason"]) for e in logged] == [("warning", "text_too_long")]
    spoken = await agent_lines(sqlite_db, call_id)
    assert spoken[0].startswith("Here is the whole")  # not the fallback
