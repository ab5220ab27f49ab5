"""Inbound texts through the sim carrier: agent.message out, the reply back as a text."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from sqlalchemy import select

from relay.store.models import Conversation, Message
from sms.segmentation import MAX_REPLY_MESSAGES, MAX_REPLY_SEGMENTS
from tests.sms.conftest import (
    HANDSET,
    Hook,
    events_of,
    eventually,
    make_agent,
    ndjson,
    sim_text,
    sms_of,
)


async def test_text_becomes_a_signed_agent_message(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "Do you open on Sundays?")
    assert hook.bad_signatures == 0
    [payload] = hook.received
    assert payload["event"] == "agent.message"
    assert payload["channel"] == "sms"
    assert payload["agentId"] == agent.id
    assert payload["timestamp"].endswith("Z")
    assert payload["data"] == {
        "messageId": got["messageId"],
        "conversationId": got["conversationId"],
        "numberId": agent.number_id,
        "from": HANDSET,
        "to": agent.number,
        "direction": "inbound",
        "text": "Do you open on Sundays?",
    }
    assert payload["conversationState"] == {}
    assert payload["recentHistory"] == []


async def test_json_reply_is_texted_back_through_the_sim_carrier(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "Yes, 10 to 4.", "state": {"asked": "hours"}}
    got = await sim_text(client, auth, agent.number, "Open Sundays?")
    [reply] = got["replies"]
    assert reply["text"] == "Yes, 10 to 4."
    assert reply["status"] == "delivered"
    assert reply["from"] == agent.number and reply["to"] == HANDSET
    assert reply["inReplyTo"] == got["messageId"]
    inbox = sms_of(client).sim.inbox(HANDSET)
    assert [t.text for t in inbox] == ["Yes, 10 to 4."]
    assert inbox[0].from_number == agent.number


async def test_ndjson_chunks_are_joined_into_one_text(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: ndjson(
        {"text": "Let me check.", "interim": True},
        {"text": "We open at ", "interim": True},
        {"text": "10am.", "state": {"step": 2}},
        pause=0.01,
    )
    got = await sim_text(client, auth, agent.number, "When do you open?")
    assert [r["text"] for r in got["replies"]] == ["Let me check. We open at 10am."]


async def test_state_is_stored_and_echoed_next_turn(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "Noted.", "state": {"turns": len(hook.received)}}
    await sim_text(client, auth, agent.number, "one")
    await sim_text(client, auth, agent.number, "two")
    assert hook.received[1]["conversationState"] == {"turns": 1}
    async with database.session() as session:
        conv = (await session.execute(select(Conversation))).scalar_one()
    assert conv.state == {"turns": 2}
    assert conv.message_count == 4


async def test_recent_history_holds_the_earlier_texts_of_the_conversation(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": f"reply to {p['data']['text']}"}
    await sim_text(client, auth, agent.number, "first")
    await sim_text(client, auth, agent.number, "second")
    history = hook.received[1]["recentHistory"]
    assert [(h["role"], h["content"], h["channel"]) for h in history] == [
        ("user", "first", "sms"),
        ("agent", "reply to first", "sms"),
    ]
    assert all(h["at"].endswith("Z") for h in history)


async def test_other_handsets_are_other_conversations(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    a = await sim_text(client, auth, agent.number, "hi", frm="+12025550143")
    b = await sim_text(client, auth, agent.number, "hi", frm="+12025550144")
    assert a["conversationId"] != b["conversationId"]
    assert hook.received[1]["recentHistory"] == []


async def test_received_event_is_written_with_the_message(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "hello")
    events = await events_of(database)
    assert [e.type for e in events] == ["message.received", "message.sent", "message.delivered"]
    assert events[0].data["messageId"] == got["messageId"]
    assert events[0].ordering_key == got["conversationId"]
    assert events[2].data["status"] == "delivered"


async def test_long_reply_is_one_text_in_several_segments(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "a" * 200}
    got = await sim_text(client, auth, agent.number, "tell me a lot")
    [reply] = got["replies"]
    assert (reply["segments"], reply["encoding"]) == (2, "gsm7")


async def test_reply_longer_than_ten_segments_goes_as_several_texts(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    words = " ".join(["word"] * 500)  # 2,499 characters
    hook.reply = lambda p: {"text": words}
    got = await sim_text(client, auth, agent.number, "essay please")
    texts = [r["text"] for r in got["replies"]]
    assert len(texts) == 2
    assert " ".join(texts) == words
    assert all(r["segments"] <= 10 for r in got["replies"])
    assert [t.text for t in sms_of(client).sim.inbox(HANDSET)] == texts


async def test_a_300_kb_reply_is_cut_to_the_segment_cap_with_an_event(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    words = " ".join(f"w{i:05d}" for i in range(50_000))  # 349,999 characters
    hook.reply = lambda p: {"text": words}
    got = await sim_text(client, auth, agent.number, "everything please")
    texts = [r["text"] for r in got["replies"]]
    assert len(texts) == MAX_REPLY_MESSAGES
    assert words.startswith(" ".join(texts))
    assert sum(r["segments"] for r in got["replies"]) <= MAX_REPLY_SEGMENTS == 30
    assert [t.text for t in sms_of(client).sim.inbox(HANDSET)] == texts
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    assert [(e["code"], e["level"]) for e in detail["events"]] == [("reply_truncated", "warning")]
    assert detail["events"][0]["data"] == {"limitMessages": 3, "limitSegments": 30}


async def test_a_long_ndjson_reply_is_cut_and_its_later_state_still_kept(
    client, auth, hook, database
):
    agent = await make_agent(client, auth, hook)
    line = {"text": "Blah blah blah. " * 60, "interim": True}  # 960 characters
    hook.reply = lambda p: ndjson(*[line] * 300, {"text": "The end.", "state": {"step": 9}})
    got = await sim_text(client, auth, agent.number, "go on")
    assert len(got["replies"]) == MAX_REPLY_MESSAGES
    assert "The end." not in " ".join(r["text"] for r in got["replies"])
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    assert [e["code"] for e in detail["events"]] == ["reply_truncated"]
    async with database.session() as session:
        conv = (await session.execute(select(Conversation))).scalar_one()
    assert conv.state == {"step": 9}


async def test_empty_reply_sends_nothing(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"state": {"quiet": True}}
    got = await sim_text(client, auth, agent.number, "ok thanks")
    assert got["replies"] == []
    assert sms_of(client).sim.outbox == type(sms_of(client).sim.outbox)()
    async with database.session() as session:
        msg = await session.get(Message, got["messageId"])
        assert msg.work == "done"


async def test_unknown_number_is_404(client, auth, hook):
    await make_agent(client, auth, hook)
    resp = await client.post(
        "/carriers/sim/sms", json={"to": "+14155550199", "text": "hi"}, headers=auth
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["field"] == "to"


async def test_another_projects_number_is_404(client, auth, hook, make_key):
    agent = await make_agent(client, auth, hook)
    other = await make_key("proj-b")
    resp = await client.post(
        "/carriers/sim/sms", json={"to": agent.number, "text": "hi"}, headers=other
    )
    assert resp.status == 404
    assert hook.received == []


async def test_number_without_agent_stores_the_text_and_logs_why(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await client.patch(f"/v1/numbers/{agent.number_id}", json={"agentId": None}, headers=auth)
    got = await sim_text(client, auth, agent.number, "anyone there?")
    assert got["replies"] == [] and hook.received == []
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    assert detail["text"] == "anyone there?"
    assert [e["code"] for e in detail["events"]] == ["no_agent"]


async def test_a_number_unbound_after_a_text_takes_the_next_text_without_its_agent(
    client, auth, hook
):
    # The first text's lookup of the number is kept (SQLite); the PATCH must end that.
    agent = await make_agent(client, auth, hook)
    first = await sim_text(client, auth, agent.number, "hello")
    assert len(first["replies"]) == 1
    await client.patch(f"/v1/numbers/{agent.number_id}", json={"agentId": None}, headers=auth)
    got = await sim_text(client, auth, agent.number, "still there?")
    assert got["replies"] == [] and hook.texts() == ["hello"]


async def test_an_agent_given_another_webhook_after_a_text_sends_the_next_text_there(
    client, auth, hook, aiohttp_server
):
    # The first text's read of the agent is kept (SQLite); the PATCH must end that.
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "hello")
    other = Hook(secrets=[agent.secret])
    app = web.Application()
    app.router.add_post("/other", other.handle)
    other.url = str((await aiohttp_server(app)).make_url("/other"))
    resp = await client.patch(
        f"/v1/agents/{agent.id}", json={"webhookUrl": other.url}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    got = await sim_text(client, auth, agent.number, "still there?")
    assert [r["text"] for r in got["replies"]] == ["You said: still there?"]
    assert hook.texts() == ["hello"] and other.texts() == ["still there?"]


async def test_a_number_whose_agent_is_deleted_after_a_text_has_no_agent(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "hello")
    resp = await client.delete(f"/v1/agents/{agent.id}", headers=auth)
    assert resp.status == 200, await resp.text()
    got = await sim_text(client, auth, agent.number, "still there?")
    assert got["replies"] == [] and hook.texts() == ["hello"]


async def test_a_released_number_takes_no_more_texts(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "hello")
    resp = await client.delete(f"/v1/numbers/{agent.number_id}", headers=auth)
    assert resp.status in (200, 204), await resp.text()
    await sim_text(client, auth, agent.number, "still there?", status=404)
    assert hook.texts() == ["hello"]


async def test_hosted_agent_records_mode_not_available(client, auth, hook):
    agent = await make_agent(client, auth, None, voiceMode="hosted", systemPrompt="You are Ava.")
    got = await sim_text(client, auth, agent.number, "hi")
    assert got["replies"] == []
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    [event] = detail["events"]
    assert event["code"] == "mode_not_available"
    assert event["level"] == "warning"


async def test_hosted_agent_with_fallback_text_sends_it(client, auth):
    agent = await make_agent(
        client,
        auth,
        None,
        voiceMode="hosted",
        systemPrompt="You are Ava.",
        fallbackText="We'll call you back.",
    )
    got = await sim_text(client, auth, agent.number, "hi")
    assert [r["text"] for r in got["replies"]] == ["We'll call you back."]


async def test_sim_endpoint_needs_a_sim_number(client, auth, hook):
    agent = await make_agent(client, auth, hook, provider="twilio", phone="+14155550123")
    resp = await client.post(
        "/carriers/sim/sms", json={"to": agent.number, "text": "hi"}, headers=auth
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "not_a_sim_number"


async def test_without_waiting_the_answer_comes_later(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "later", wait=0)
    assert got["replies"] == [] and got["timedOut"] is False
    await sms_of(client).queues.idle()
    assert [t.text for t in sms_of(client).sim.outbox] == ["You said: later"]


async def test_wait_gives_up_after_wait_seconds(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.delay = 0.5
    got = await sim_text(client, auth, agent.number, "slow", wait=0.05)
    assert got["timedOut"] is True and got["replies"] == []
    await asyncio.sleep(0.6)
    await sms_of(client).queues.idle()
    assert [t.text for t in sms_of(client).sim.outbox] == ["You said: slow"]


async def test_an_overloaded_relay_refuses_sim_texts_at_once_and_takes_them_again_after(
    client, auth, hook
):
    agent = await make_agent(client, auth, hook)
    svc = sms_of(client)
    time.sleep(0.3)  # noqa: ASYNC251  (blocking the loop is the point)
    await asyncio.sleep(0.1)
    assert not svc.overloaded  # one long pause is not overload
    for _ in range(50):  # the loop stays behind, as under more texts than it can answer
        time.sleep(0.1)  # noqa: ASYNC251
        await asyncio.sleep(0)
        if svc.overloaded:
            break
    assert svc.overloaded
    resp = await client.post(
        "/carriers/sim/sms",
        json={"to": agent.number, "from": HANDSET, "text": "hello?", "waitSeconds": 5},
        headers=auth,
    )
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "overloaded"
    listed = await (await client.get("/v1/messages", headers=auth)).json()
    assert listed["data"] == [] and hook.received == []  # refused before anything was stored
    await eventually(lambda: not svc.overloaded, within=2.0)
    got = await sim_text(client, auth, agent.number, "hello again")
    assert len(got["replies"]) == 1 and hook.texts() == ["hello again"]


async def test_texts_past_the_backlog_limit_are_refused_until_it_drains(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    svc = sms_of(client)
    svc.max_waiting = 2
    hook.delay = 0.3
    # One text in its webhook, three waiting behind it in the conversation: one over the limit.
    for n in range(4):
        await sim_text(client, auth, agent.number, f"text {n}", wait=0)
    assert svc.overloaded
    await sim_text(client, auth, agent.number, "one too many", wait=0, status=503)
    await eventually(lambda: not svc.overloaded, within=5.0)
    await sim_text(client, auth, agent.number, "after", wait=5)
    assert hook.texts() == ["text 0", "text 1", "text 2", "text 3", "after"]
