"""One turn of a call (relay.engine.turn) against a real webhook, outside a livekit session:
the reply's text as the session would be handed it, and what the call's log keeps."""

from __future__ import annotations

import time

import pytest
from aiohttp import web
from livekit.agents import llm
from sqlalchemy import select

from relay.calls.records import CallRecorder
from relay.engine.history import History
from relay.engine.turn import MAX_TURN_TEXT, Turns
from relay.store.models import CallEvent
from relay.turns import WebhookBrain
from tests.engine.harness import Hook, call_setup, make_call, ndjson_line, ndjson_start, start_hook


async def run_turn(aiohttp_server, sqlite_db, http, reply):
    """One DTMF turn answered by ``reply``: (the text handed to speech, the plan, events)."""
    call_id = await make_call(sqlite_db)
    sink = CallRecorder(sqlite_db, call_id)
    plans = []
    turns = Turns(
        call_setup(call_id, await start_hook(aiohttp_server, Hook(reply))),
        WebhookBrain(http),
        sink,
        History(sink, time.time()),
        None,  # no speech is playing: the turn's plan goes to ``unspoken``
        after_speech=lambda handle, plan: None,
        unspoken=plans.append,
    )
    turns.pending_input = ("dtmf", "1")
    emitted: list[str] = []
    await turns.run(llm.ChatContext(), emitted.append)
    await sink.flush()
    async with sqlite_db.session() as session:
        found = await session.scalars(select(CallEvent).where(CallEvent.call_id == call_id))
        events = [e for e in found.all() if e.source == "webhook"]
    [plan] = plans
    assert "".join(emitted) == plan.text
    return plan, events, turns


WORDS = " ".join(["word"] * 1200)  # 5,999 characters


@pytest.mark.parametrize("framing", ["json", "ndjson"])
async def test_reply_text_over_the_cap_is_cut_with_one_event(
    aiohttp_server, sqlite_db, http, framing
):
    async def reply(request, payload):
        if framing == "json":
            return web.json_response({"text": WORDS, "hangup": True})
        resp = await ndjson_start(request)
        for i in range(0, len(WORDS), 1000):
            await ndjson_line(resp, {"text": WORDS[i : i + 1000], "interim": True})
        await ndjson_line(resp, {"text": "The end.", "hangup": True})
        await resp.write_eof()
        return resp

    plan, events, turns = await run_turn(aiohttp_server, sqlite_db, http, reply)
    assert len(plan.text) <= MAX_TURN_TEXT == 4000
    assert WORDS.startswith(plan.text) and plan.text.rstrip().endswith("word")
    assert len(plan.text) > MAX_TURN_TEXT - 10
    [event] = events
    assert (event.level, event.data["reason"], event.data["limit"]) == (
        "warning",
        "text_too_long",
        4000,
    )
    assert event.message.startswith("the reply was longer than 4000 characters")
    assert [a for a, _ in plan.actions] == ["hangup"]  # the rest of the reply still counts
    assert turns.failures == 0


async def test_reply_text_up_to_the_cap_is_whole(aiohttp_server, sqlite_db, http):
    text = WORDS[:MAX_TURN_TEXT]

    async def reply(request, payload):
        return web.json_response({"text": text})

    plan, events, _ = await run_turn(aiohttp_server, sqlite_db, http, reply)
    assert (plan.text, events) == (text, [])
