"""A hosted-mode call end to end through the voice engine: the greeting is spoken, the LLM's
reply is spoken, a tool runs (signed) and lands in the transcript, ``end_call`` hangs up."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from sqlalchemy import select

from relay.calls.live import CallRunner
from relay.config import Settings
from relay.engine import VoiceEngine
from relay.store.models import Call, CallEvent, TranscriptSegment
from tests.engine.harness import RecordingLine, call_setup, make_call, transcribe
from tests.hosted_llm.scripted_llm import text
from tests.hosted_llm.tools_server import ToolServer

pytestmark = pytest.mark.slow

LOOKUP = {
    "name": "lookup_order",
    "description": "Look up an order",
    "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}}},
}


async def dtmf(handle, digits: str) -> None:
    for digit in digits:
        handle.push_dtmf(digit)
        await asyncio.sleep(0.05)


async def test_hosted_call_speaks_runs_a_tool_and_hangs_up(
    aiohttp_server, scripted, speech_models, sqlite_db, http
):
    tools = ToolServer()
    await tools.start(aiohttp_server)
    scripted.add(
        [("text", "Let me look that up."), ("tool", "lookup_order", {"orderId": "A17"})],
        text("Your order has shipped", " and arrives on Friday."),
        [("text", "Goodbye!"), ("tool", "end_call", {})],
    )
    voice = VoiceEngine(Settings(llm_base_url=scripted.url, llm_model="tiny"))
    engine = CallRunner(voice, Settings())  # stores the call's end when it is awaited
    line = RecordingLine(
        sample_rate=16000
    )  # wideband: the words, not the phone band, are under test
    call_id = await make_call(sqlite_db)
    setup = call_setup(
        call_id,
        "",
        system_prompt="You are Ava from Acme. The caller is {{call.from}}.",
        greeting="Hello, thanks for calling.",
        first_speaker="agent",
        tools=[{**LOOKUP, "url": tools.url}, {"name": "end_call"}],
    )
    handle = await engine.start_call(replace(setup, voice_mode="hosted"), line, sqlite_db, http)
    try:
        await line.wait_audio(0.0)
        await line.wait_quiet()
        greeting_heard = transcribe(line.audio(), line.sample_rate).lower()
        since = line.frames[-1][0]
        await dtmf(handle, "1#")
        await line.wait_audio(since)
        for _ in range(200):
            if len(scripted.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        await line.wait_quiet()
        heard = transcribe(line.audio(since), line.sample_rate).lower()
        await dtmf(handle, "2#")
        status = await asyncio.wait_for(handle.wait(), 20)
    finally:
        await voice.close()
        await engine.close()

    assert "for calling" in greeting_heard
    assert "order has shipped" in heard
    assert status == ("completed", None) and line.hangups
    assert tools.verified == [True]
    first = scripted.messages(0)
    assert first[0] == {
        "role": "system",
        "content": "You are Ava from Acme. The caller is +61412345678.",
    }
    assert first[1] == {"role": "assistant", "content": "Hello, thanks for calling."}
    assert first[2]["content"] == "(The caller pressed 1# on the keypad.)"
    async with sqlite_db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
        call = await s.get(Call, call_id)
    assert [g.speaker for g in segs] == ["agent", "dtmf", "tool", "agent", "dtmf", "tool", "agent"]
    assert segs[3].text == "Let me look that up. Your order has shipped and arrives on Friday."
    tool = segs[2]
    assert tool.data["name"] == "lookup_order" and tool.data["arguments"] == {"orderId": "A17"}
    assert tool.data["result"] == {"status": "shipped"} and tool.data["durationMs"] >= 0
    assert segs[5].data["name"] == "end_call"
    assert call.status == "completed"


async def test_a_refused_transfer_call_is_logged_and_the_caller_stays(
    aiohttp_server, scripted, speech_models, sqlite_db, http
):
    allowed = "+61255501999"
    scripted.add(
        [("tool", "transfer_call", {"to": "+61255501234"})],
        text("I can only put you through to the front desk."),
        [("text", "Putting you through."), ("tool", "transfer_call", {"to": allowed})],
    )
    voice = VoiceEngine(Settings(llm_base_url=scripted.url, llm_model="tiny"))
    engine = CallRunner(voice, Settings())
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(
        call_id,
        "",
        system_prompt="You are Ava from Acme.",
        tools=[{"name": "transfer_call", "destinations": [allowed]}],
    )
    handle = await engine.start_call(replace(setup, voice_mode="hosted"), line, sqlite_db, http)
    try:
        await dtmf(handle, "0#")
        await line.wait_audio(0.0)
        await line.wait_quiet()
        assert not line.transfers and not line.hangups  # the caller is still with the agent
        await dtmf(handle, "0#")
        status = await asyncio.wait_for(handle.wait(), 20)
    finally:
        await voice.close()
        await engine.close()

    assert line.transfers == [allowed] and status == ("completed", None)
    assert scripted.messages(1)[-1]["content"].startswith("Error: the transfer was refused: ")
    async with sqlite_db.session() as s:
        events = (
            await s.scalars(
                select(CallEvent)
                .where(CallEvent.call_id == call_id, CallEvent.source == "telephony")
                .order_by(CallEvent.id)
            )
        ).all()
    assert [(e.level, e.data["reason"]) for e in events[:1]] == [
        ("warning", "destination_not_allowed")
    ]
    assert events[0].message.startswith("transfer to +61255501234 refused")
    assert events[1].message == f"transfer to {allowed}"
