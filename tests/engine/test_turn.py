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


async def run_turn(aiohttp_server, sqlite_db, http, reply, source="webhook", **agent):
    """One DTMF turn answered by ``reply``: (the text handed to speech, the plan, the events
    from ``source``), the agent's settings from ``agent``."""
    call_id = await make_call(sqlite_db)
    sink = CallRecorder(sqlite_db, call_id)
    plans = []
    turns = Turns(
        call_setup(call_id, await start_hook(aiohttp_server, Hook(reply)), **agent),
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
        events = [e for e in found.all() if e.source == source]
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


def transfer_reply(to):
    async def reply(request, payload):
        return web.json_response({"text": "Putting you through.", "transfer": to})

    return reply


async def test_a_transfer_to_a_listed_destination_is_planned(aiohttp_server, sqlite_db, http):
    plan, events, _ = await run_turn(
        aiohttp_server,
        sqlite_db,
        http,
        transfer_reply("+61 2 5550 9999"),
        source="telephony",
        transfer_destinations=["+61255509999", "sip:desk@example.com"],
    )
    assert plan.actions == [("transfer", "+61255509999")]  # normalised, as the carrier dials it
    assert events == []


@pytest.mark.parametrize(
    ("to", "allowed", "reason"),
    [
        ("+61255501234", ["+61255509999"], "destination_not_allowed"),
        ("sip:admin@10.0.0.1", ["+61255509999"], "invalid_destination"),
        ("+61255509999", None, "no_transfer_destinations"),  # an agent stored before the list
    ],
)
async def test_a_transfer_the_agent_does_not_allow_is_refused_and_the_turn_goes_on(
    aiohttp_server, sqlite_db, http, to, allowed, reason
):
    plan, events, turns = await run_turn(
        aiohttp_server,
        sqlite_db,
        http,
        transfer_reply(to),
        source="telephony",
        transfer_destinations=allowed,
    )
    assert plan.actions == []  # nothing is dialled, nor is the call ended
    assert plan.text == "Putting you through."
    assert turns.failures == 0
    [event] = events
    assert event.level == "warning"
    assert event.data == {"to": to, "reason": reason, "turnId": plan.turn.turn_id}
    assert event.message.startswith(f"transfer to {to} refused: ")


async def test_lines_after_the_final_chunk_are_ignored_with_an_event(
    aiohttp_server, sqlite_db, http
):
    seen = []

    async def reply(request, payload):
        seen.append(payload)
        resp = await ndjson_start(request)
        await ndjson_line(resp, {"text": "One moment.", "interim": True})
        await resp.write(b'{"text": "Here it is."}\n{"text": "And more."}\n{"hangup": true}\n')
        await resp.write_eof()
        return resp

    plan, events, turns = await run_turn(
        aiohttp_server,
        sqlite_db,
        http,
        reply,
        variables={"customer": "Ann"},
        metadata={"crm": 7},
    )
    assert plan.text == "One moment. Here it is."
    assert plan.actions == []  # the hangup came after the turn closed
    [event] = events
    assert (event.level, event.data["reason"], event.data["lines"]) == (
        "warning",
        "after_final_chunk",
        2,
    )
    assert turns.failures == 0
    # The webhook is told what the call was created with.
    assert seen[0]["data"]["variables"] == {"customer": "Ann"}
    assert seen[0]["data"]["metadata"] == {"crm": 7}


async def test_only_a_play_chunk_puts_a_clip_in_the_reply(aiohttp_server, sqlite_db, http):
    """The character that stands for a clip is taken out of a reply's text: a webhook cannot
    make the speaker wait for a clip it never asked for."""
    from relay.turns import PLAY_MARK

    async def reply(request, payload):
        resp = await ndjson_start(request)
        await ndjson_line(resp, {"text": f"One{PLAY_MARK} two.", "interim": True})
        await ndjson_line(resp, {"play": "https://cdn.example.com/a.wav", "interim": True})
        await ndjson_line(resp, {"text": "Three."})
        await resp.write_eof()
        return resp

    plan, events, turns = await run_turn(aiohttp_server, sqlite_db, http, reply)
    assert plan.text == f"One two.{PLAY_MARK}Three."
    assert list(plan.plays) == [("https://cdn.example.com/a.wav", None)]  # no speaker here
    assert events == [] and turns.failures == 0
