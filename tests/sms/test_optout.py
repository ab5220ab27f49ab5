"""STOP and its synonyms, START / UNSTOP, HELP: what the sender gets back, what the webhook
does not see, and what the project can no longer do."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from relay.store.models import Agent
from sms import is_opted_out
from sms.optout import DEFAULT_HELP, START_CONFIRMATION, STOP_CONFIRMATION, keyword_of
from tests.sms.conftest import HANDSET, make_agent, sim_text

STOP_WORDS = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("stop", "stop"),
        ("  Stop.  ", "stop"),
        ("QUIT!", "stop"),
        ("unstop", "start"),
        ("Start", "start"),
        ("help", "help"),
        ("please stop", None),
        ("stop it", None),
        ("HELP ME", None),
        ("", None),
    ],
)
def test_keywords_are_the_whole_text_in_any_case(text, keyword):
    assert keyword_of(text) == keyword


async def _send(client, auth, agent, to=HANDSET):
    return await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": to, "text": "Sale today!"}, headers=auth
    )


@pytest.mark.parametrize("word", STOP_WORDS)
async def test_stop_word_opts_out_confirms_and_skips_the_webhook(client, auth, hook, word):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, word.lower())
    assert [r["text"] for r in got["replies"]] == [STOP_CONFIRMATION]
    assert hook.received == []
    resp = await _send(client, auth, agent)
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["code"] == "compliance_block"
    assert error["field"] == "to"
    assert error["details"][0]["code"] == "opted_out"


async def _call(client, auth, agent, to=HANDSET):
    return await client.post("/v1/calls", json={"agentId": agent.id, "to": to}, headers=auth)


@pytest.mark.parametrize("word", STOP_WORDS)
async def test_stop_word_refuses_outbound_calls(client, auth, hook, word):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, word)
    resp = await _call(client, auth, agent)
    assert resp.status == 403, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "compliance_block"
    assert error["field"] == "to"
    assert error["details"][0]["code"] == "opted_out"
    calls = await (await client.get("/v1/calls", headers=auth)).json()
    assert calls["data"] == []


async def test_start_lets_calls_through_again(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    assert (await _call(client, auth, agent)).status == 403
    assert (await _call(client, auth, agent, to="+12025550199")).status == 202
    await sim_text(client, auth, agent.number, "START")
    resp = await _call(client, auth, agent)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["to"] == HANDSET


async def test_is_opted_out_is_scoped_to_number_and_project(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    async with database.session() as session:
        project_id = (await session.execute(select(Agent.project_id))).scalar_one()
        assert await is_opted_out(session, project_id, HANDSET) is True
        assert await is_opted_out(session, project_id, "+12025550199") is False
        assert await is_opted_out(session, "proj_other", HANDSET) is False


@pytest.mark.parametrize("word", ["START", "unstop"])
async def test_start_opts_back_in(client, auth, hook, word):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    got = await sim_text(client, auth, agent.number, word)
    assert [r["text"] for r in got["replies"]] == [START_CONFIRMATION]
    assert hook.received == []
    resp = await _send(client, auth, agent)
    assert resp.status == 201, await resp.text()


async def test_help_answers_with_the_agents_help_text(client, auth, hook):
    agent = await make_agent(client, auth, hook, helpText="Ava's Bakery: call 555-0100.")
    got = await sim_text(client, auth, agent.number, "HELP")
    assert [r["text"] for r in got["replies"]] == ["Ava's Bakery: call 555-0100."]
    assert hook.received == []


async def test_help_without_help_text_sends_the_default(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "help")
    assert [r["text"] for r in got["replies"]] == [DEFAULT_HELP]


async def test_opted_out_sender_reaches_no_webhook_until_start(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    got = await sim_text(client, auth, agent.number, "what are your hours?")
    assert got["replies"] == [] and hook.received == []
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    assert [e["code"] for e in detail["events"]] == ["sender_opted_out"]
    await sim_text(client, auth, agent.number, "START")
    got = await sim_text(client, auth, agent.number, "what are your hours?")
    assert [r["text"] for r in got["replies"]] == ["You said: what are your hours?"]


async def test_opt_out_covers_every_number_of_the_project(client, auth, hook):
    first = await make_agent(client, auth, hook)
    second = await make_agent(client, auth, hook)
    await sim_text(client, auth, first.number, "STOP")
    resp = await _send(client, auth, second)
    assert resp.status == 403


async def test_opt_out_is_per_project(client, auth, hook, make_key):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    other_auth = await make_key("proj-b")
    other = await make_agent(client, other_auth, hook)
    resp = await _send(client, other_auth, other)
    assert resp.status == 201


async def test_conversation_shows_opted_out(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "STOP")
    conv = await (
        await client.get(f"/v1/conversations/{got['conversationId']}", headers=auth)
    ).json()
    assert conv["optedOut"] is True
    await sim_text(client, auth, agent.number, "START")
    listed = await (await client.get("/v1/conversations", headers=auth)).json()
    assert listed["data"][0]["optedOut"] is False
