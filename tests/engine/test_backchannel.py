"""Backchannels while the agent speaks: real speech through the real engines.

The caller's "mhm" pauses the agent and lets it go on from the same place, reaches no
webhook and is kept in the transcript as backchannel caller speech; a short word that is not
an acknowledgement still cuts the agent and is the next turn.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from sqlalchemy import select

from relay.api.webhook_payloads import AgentInterruptedData
from relay.engine.backchannel import Backchannels
from relay.store.models import Call, LifecycleEvent, TranscriptSegment
from tests.engine.harness import (
    Caller,
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    start_hook,
    text_reply,
    transcribe,
)

LONG = (
    "Our restaurant is open every day from eleven in the morning until ten at night, "
    "and on weekends we also serve breakfast from eight, with live music on Fridays."
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mhm.", True),
        ("Mm-hmm.", True),
        ("Uh-huh.", True),
        ("Yeah, yeah. Okay.", True),
        ("I see.", True),
        ("Right", True),
        ("Mmmmmmmmmm", True),
        ("Stop.", False),
        ("Okay, but what about Sunday?", False),
        ("", False),
    ],
)
def test_acknowledgements_are_told_from_words(text, expected):
    assert Backchannels.for_agent("medium", "en-US", None).matches(text) is expected


def test_an_agent_word_list_replaces_the_language_default():
    policy = Backchannels.for_agent("low", "en-AU", {"en": ["righto", "no worries"]})
    assert policy.matches("Righto, no worries.")
    assert not policy.matches("Okay.")
    assert policy.matches("Mmm.")  # a hum, in any language
    assert policy.max_speech_s > Backchannels.for_agent("medium", "en", None).max_speech_s
    assert not Backchannels.for_agent("high", "en", None).screening


def _gaps(line: RecordingLine, since: float) -> list[tuple[float, float]]:
    """(start, length) of each pause of more than 60 ms in the agent audio after ``since``."""
    times = [t for t, _ in line.frames if t >= since]
    return [(a, b - a) for a, b in zip(times, times[1:], strict=False) if b - a > 0.06]


def _went_quiet(line: RecordingLine, since: float) -> float:
    """When the agent audio sent after ``since`` first stopped for more than 300 ms."""
    times = [t for t, _ in line.frames if t >= since]
    for a, b in zip(times, [*times[1:], float("inf")], strict=True):
        if b - a > 0.3:
            return a
    raise AssertionError("no agent audio")


async def _setup(db, url):
    """A call of a real project (its lifecycle events are stored under it)."""
    call_id = await make_call(db)
    async with db.session() as s:
        project_id = (await s.get(Call, call_id)).project_id
    return replace(call_setup(call_id, url), project_id=project_id)


async def _segments(db):
    async with db.session() as s:
        return (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()


@pytest.mark.parametrize("ack", ["Yeah.", "Uh-huh."])
async def test_a_backchannel_neither_cuts_the_agent_nor_reaches_the_webhook(
    aiohttp_server, engine, sqlite_db, http, voice, ack
):
    line = RecordingLine()
    hook = Hook(text_reply(LONG))
    url = await start_hook(aiohttp_server, hook)
    handle = await engine.start_call(await _setup(sqlite_db, url), line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    spoke_until = await caller.say(voice("What are your opening hours?"))
    started = await line.wait_audio(spoke_until)
    await asyncio.sleep(1.5)
    ack_end = await caller.say(voice(ack))
    ack_start = caller.first_loud_at
    await line.wait_quiet(quiet=3.0)
    await caller.stop()
    await handle.end()

    assert len(hook.requests) == 1, [r["data"].get("transcript") for r in hook.requests]
    async with sqlite_db.session() as s:
        events = (await s.scalars(select(LifecycleEvent))).all()
    assert "agent.interrupted" not in {e.type for e in events}
    assert not line.clears, "the line was cleared: the agent was cut"
    pauses = [(at, size) for at, size in _gaps(line, started) if at > ack_start - 0.1]
    assert pauses, "the agent did not pause while the caller spoke"
    paused_at, paused_for = pauses[0]
    resumed_after_speech = paused_at + paused_for - ack_end
    heard = transcribe(line.audio(started)).lower()
    # Every word is spoken once: the reply resumed where it paused.
    assert "music on friday" in heard and heard.count("breakfast") == 1, heard
    segs = await _segments(sqlite_db)
    assert [(g.speaker, g.interrupted, (g.data or {}).get("backchannel")) for g in segs] == [
        ("user", False, None),
        ("user", False, True),
        ("agent", False, None),
    ]
    print(
        f"backchannel: paused {round((paused_at - ack_start) * 1000)} ms after the caller's "
        f"first loud frame, for {round(paused_for * 1000)} ms, resumed "
        f"{round(resumed_after_speech * 1000)} ms after the caller's last loud frame"
    )


async def test_a_short_word_that_is_not_an_acknowledgement_cuts_and_is_the_next_turn(
    aiohttp_server, engine, sqlite_db, http, voice
):
    line = RecordingLine()
    replies = iter([LONG, "Sure, I'll stop."])

    async def reply(request, payload):
        return await text_reply(next(replies))(request, payload)

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    handle = await engine.start_call(await _setup(sqlite_db, url), line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    spoke_until = await caller.say(voice("What are your opening hours?"))
    started = await line.wait_audio(spoke_until)
    await asyncio.sleep(1.5)
    await caller.say(voice("Stop."))
    second = await hook.wait_request(2, within=20)
    await line.wait_quiet()
    await caller.stop()
    await handle.end()

    assert "stop" in second["data"]["transcript"].lower()
    assert line.clears, "the agent was not cut"
    cut = second["recentHistory"][-1]
    assert cut["role"] == "agent" and cut["interrupted"] is True
    assert LONG.startswith(cut["content"].rstrip(".,")) and cut["content"] != LONG
    async with sqlite_db.session() as s:
        events = (await s.scalars(select(LifecycleEvent))).all()
    cuts = [e.data for e in events if e.type == "agent.interrupted"]
    assert len(cuts) == 1
    AgentInterruptedData.model_validate(cuts[0])
    assert cuts[0]["turnId"] == hook.requests[0]["data"]["turnId"]
    assert cuts[0]["heard"] == cut["content"] and 1000 < cuts[0]["spokenMs"] < 4000
    quiet = _went_quiet(line, started) - caller.first_loud_at
    assert quiet < 0.5
    print("short interruption: the agent went quiet", round(quiet * 1000), "ms after the caller")
