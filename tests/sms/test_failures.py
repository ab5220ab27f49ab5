"""A webhook that fails never loses a text: the sender gets the fallback, the text's log
says exactly what went wrong, the conversation goes on."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from sqlalchemy import update

from relay.store.models import Agent
from sms.worker import DEFAULT_FALLBACK
from tests.sms.conftest import HANDSET, events_of, make_agent, ndjson, sim_text, sms_of


async def detail_of(client, auth, message_id):
    return await (await client.get(f"/v1/messages/{message_id}", headers=auth)).json()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda p: web.Response(status=500, text="boom"), "http_status"),
        (lambda p: web.Response(status=404), "http_status"),
        (lambda p: web.Response(text="not json", content_type="application/json"), "invalid_body"),
        (lambda p: web.json_response(["a", "list"]), "invalid_body"),
        (lambda p: ndjson({"text": "Hi", "interim": True}, {"text": 5}), "invalid_line"),
    ],
    ids=["500", "404", "not-json", "not-an-object", "bad-ndjson-line"],
)
async def test_failed_turn_sends_the_fallback_and_logs_why(
    client, auth, hook, database, reply, reason
):
    agent = await make_agent(client, auth, hook)
    hook.reply = reply
    got = await sim_text(client, auth, agent.number, "hello?")
    assert [r["text"] for r in got["replies"]] == [DEFAULT_FALLBACK]
    detail = await detail_of(client, auth, got["messageId"])
    assert detail["text"] == "hello?"
    assert detail["errorCode"] == f"webhook_{reason}"
    [event] = detail["events"]
    assert (event["code"], event["level"]) == ("webhook_failed", "error")
    assert event["data"]["reason"] == reason
    types = [e.type for e in await events_of(database)]
    assert types[0] == "message.received"


async def test_agents_fallback_text_is_used(client, auth, hook):
    agent = await make_agent(client, auth, hook, fallbackText="Back soon, sorry!")
    hook.reply = lambda p: web.Response(status=503)
    got = await sim_text(client, auth, agent.number, "hi")
    assert [r["text"] for r in got["replies"]] == ["Back soon, sorry!"]
    detail = await detail_of(client, auth, got["messageId"])
    assert detail["events"][0]["data"] == {
        "reason": "http_status",
        "detail": "webhook answered HTTP 503",
        "status": 503,
    }


async def test_unreachable_webhook(client, auth, hook):
    agent = await make_agent(client, auth, hook, webhookUrl="http://127.0.0.1:9/hook")
    got = await sim_text(client, auth, agent.number, "hi")
    assert [r["text"] for r in got["replies"]] == [DEFAULT_FALLBACK]
    detail = await detail_of(client, auth, got["messageId"])
    assert detail["events"][0]["data"]["reason"] == "connection_failed"


async def test_slow_webhook_times_out(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    async with database.session() as session:  # the API's floor is 5 s; tests need less
        await session.execute(
            update(Agent).where(Agent.id == agent.id).values(webhook_timeout_ms=200)
        )
    hook.delay = 1.0
    got = await sim_text(client, auth, agent.number, "anyone?")
    assert [r["text"] for r in got["replies"]] == [DEFAULT_FALLBACK]
    detail = await detail_of(client, auth, got["messageId"])
    assert detail["errorCode"] == "webhook_timeout"


async def test_the_conversation_goes_on_after_a_failure(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: web.Response(status=500)
    await sim_text(client, auth, agent.number, "first")
    hook.reply = lambda p: {"text": "All good now."}
    got = await sim_text(client, auth, agent.number, "second")
    assert [r["text"] for r in got["replies"]] == ["All good now."]
    history = hook.received[1]["recentHistory"]
    assert [(h["role"], h["content"]) for h in history] == [
        ("user", "first"),
        ("agent", DEFAULT_FALLBACK),
    ]


async def test_wrongly_signed_requests_are_refused_by_the_receiver(client, auth, hook):
    """The receiver only trusts the agent's secret: a rotated-away secret fails there."""
    agent = await make_agent(client, auth, hook)
    hook.secrets.remove(agent.secret)
    got = await sim_text(client, auth, agent.number, "hi")
    assert hook.bad_signatures == 1 and hook.received == []
    assert [r["text"] for r in got["replies"]] == [DEFAULT_FALLBACK]


async def test_rotation_signs_with_both_secrets_during_grace(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    resp = await client.post(
        f"/v1/agents/{agent.id}/rotate-webhook-secret", json={"graceSeconds": 60}, headers=auth
    )
    new_secret = (await resp.json())["webhookSecret"]
    for secrets in ([agent.secret], [new_secret]):
        hook.secrets[:] = secrets
        got = await sim_text(client, auth, agent.number, "hi")
        assert got["replies"][0]["text"] == "You said: hi"
    assert hook.bad_signatures == 0


async def test_nothing_is_sent_twice_when_the_sender_retries_during_a_failure(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: web.Response(status=500)
    first = await sim_text(client, auth, agent.number, "hi", carrierMessageId="SIMretry1")
    again = await sim_text(client, auth, agent.number, "hi", carrierMessageId="SIMretry1")
    assert again["duplicate"] is True and again["messageId"] == first["messageId"]
    await asyncio.sleep(0)
    await sms_of(client).queues.idle()
    assert [t.text for t in sms_of(client).sim.inbox(HANDSET)] == [DEFAULT_FALLBACK]
