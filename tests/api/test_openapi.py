"""The OpenAPI document: valid OpenAPI 3.1 (openapi-spec-validator), and its ``webhooks``
section true to the wire: what the relay really sends (turns of calls and texts, tool calls,
lifecycle events) and every webhook body the README shows validate against it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator, FormatChecker
from livekit.agents import llm
from openapi_spec_validator import validate

from relay.calls.records import CallRecorder
from relay.engine.history import History
from relay.engine.turn import Turns
from relay.events import EVENT_TYPES
from relay.turns import WebhookBrain
from tests.engine.harness import Hook, call_setup, make_call, start_hook
from tests.events.receiver import Receiver
from tests.hosted_llm.scripted_llm import ScriptedLLM
from tests.hosted_llm.test_hosted_mode import LOOKUP, Brain
from tests.hosted_llm.tools_server import ToolServer
from tests.transports.support import agent_with_number

README = Path(__file__).resolve().parents[2] / "README.md"
TURNS = {"agent.message", "tool.call"}


async def document(client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    return await resp.json()


def body_errors(doc: dict[str, Any], webhook: str, body: Any) -> list[str]:
    """Why ``body`` is not a valid request body of ``webhook`` (empty if it is)."""
    schema = doc["webhooks"][webhook]["post"]["requestBody"]["content"]["application/json"]
    return chunk_errors(doc, schema["schema"], body)


def chunk_errors(doc: dict[str, Any], schema: dict[str, Any], body: Any) -> list[str]:
    validator = Draft202012Validator(
        {**schema, "components": doc["components"]}, format_checker=FormatChecker()
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    ]


def reply_schema(doc: dict[str, Any]) -> dict[str, Any]:
    content = doc["webhooks"]["agent.message"]["post"]["responses"]["200"]["content"]
    schema: dict[str, Any] = content["application/x-ndjson"]["schema"]
    return schema


async def test_the_document_is_valid_openapi_3_1_with_a_webhook_for_every_event(client):
    doc = await document(client)
    validate(doc)  # raises on the first violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    assert set(doc["webhooks"]) == TURNS | set(EVENT_TYPES)
    for name, item in doc["webhooks"].items():
        names = [p["name"] for p in item["post"]["parameters"]]
        assert names == ["webhook-id", "webhook-timestamp", "webhook-signature"], name


async def test_the_validator_catches_a_broken_webhook_entry(client):
    doc = await document(client)
    del doc["webhooks"]["tool.call"]["post"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        validate(doc)


async def test_every_401_names_www_authenticate(client):
    doc = await document(client)
    secured = [
        op for item in doc["paths"].values() for op in item.values() if "401" in op["responses"]
    ]
    assert secured
    for op in secured:
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"], op["operationId"]


async def test_a_text_turn_and_lifecycle_events_match_their_schemas(
    client, app_client, auth, aiohttp_server
):
    doc = await document(client)
    turns: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        turns.append(await request.json())
        return web.json_response({"text": "Yes, until ten.", "state": {"asked": "hours"}})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    receiver = Receiver()
    await receiver.start()
    try:
        resp = await client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth)
        assert resp.status == 201, await resp.text()
        agent, _ = await agent_with_number(client, auth, webhookUrl=str(server.make_url("/hook")))
        # A sim number of its own: the texts come in through the sim carrier.
        resp = await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
        assert resp.status == 201, await resp.text()
        number = (await resp.json())["phoneNumber"]
        for words in ("Are you open tonight?", "And tomorrow?"):
            resp = await client.post(
                "/carriers/sim/sms",
                json={"to": number, "from": "+15005550006", "text": words, "waitSeconds": 10},
                headers=auth,
            )
            assert resp.status == 200, await resp.text()
        resp = await client.post(
            "/v1/calls", json={"agentId": agent["id"], "connectionType": "websocket"}, headers=auth
        )
        assert resp.status == 201, await resp.text()
        call_id = (await resp.json())["id"]
        assert (await client.post(f"/v1/calls/{call_id}/end", headers=auth)).status == 200
        got = await receiver.wait_for(
            lambda seen: {"call.failed", "message.sent"} <= {r.type for r in seen}
        )
    finally:
        await receiver.stop()

    assert [t["channel"] for t in turns] == ["sms", "sms"]
    assert turns[1]["recentHistory"] and turns[1]["conversationState"] == {"asked": "hours"}
    for turn in turns:
        assert body_errors(doc, "agent.message", turn) == []
    assert {"message.received", "message.sent", "call.queued", "call.failed"} <= {
        r.type for r in got
    }
    for received in got:
        assert body_errors(doc, received.type, received.json) == [], received.type


async def test_voice_turns_match_the_agent_message_schema(client, database, aiohttp_server):
    """A spoken turn and a keypad turn, from the engine's own turn code to a real webhook."""
    doc = await document(client)
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(database)
    sink = CallRecorder(database, call_id)
    history = History(sink, time.time())
    history.remember("agent", "Hi, this is Ava.")
    history.remember("user", "1", dtmf=True)
    history.remember("agent", "Sure, which day", interrupted=True)
    async with aiohttp.ClientSession() as http:
        turns = Turns(
            call_setup(call_id, url),
            WebhookBrain(http),
            sink,
            history,
            None,
            after_speech=lambda handle, plan: None,
            unspoken=lambda plan: None,
        )
        chat = llm.ChatContext()
        chat.add_message(role="user", content="I'd like to book for Tuesday")
        await turns.run(chat, lambda text: None)
        turns.pending_input = ("dtmf", "42#")
        await turns.run(chat, lambda text: None)
    await sink.flush()
    spoken, keys = hook.requests
    assert "transcript" in spoken["data"] and keys["data"]["dtmf"] == "42#"
    assert [h.get("interrupted") for h in spoken["recentHistory"]] == [None, None, True]
    for body in hook.requests:
        assert body_errors(doc, "agent.message", body) == []


async def test_a_tool_call_matches_the_tool_call_schema(client, aiohttp_server):
    doc = await document(client)
    tool, scripted = ToolServer(), ScriptedLLM()
    await tool.start(aiohttp_server)
    await scripted.start(aiohttp_server)
    scripted.add([("tool", "lookup_order", {"orderId": "A-17"})], [("text", "It has shipped.")])
    async with aiohttp.ClientSession() as http:
        brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool.url}])
        await brain.turn("Where is order A-17?")
        await brain.backend.aclose()
    [event] = tool.requests
    assert body_errors(doc, "tool.call", event) == []


WEBHOOK_BODY = re.compile(r'"(?:event|type)": "([a-z_.]+)"')


def readme_bodies() -> list[tuple[str, Any]]:
    """Every webhook body in the README's ```json blocks, named by its webhook, and every line
    of its ```jsonl blocks (replies) as ``reply``. Other JSON blocks (an error) are skipped."""
    text = README.read_text()
    found: list[tuple[str, Any]] = []
    for lang, block in re.findall(r"```(json|jsonl)\n(.*?)```", text, re.DOTALL):
        if lang == "jsonl":
            found += [("reply", json.loads(line)) for line in block.splitlines() if line]
            continue
        named = WEBHOOK_BODY.search(block)
        if named and named[1] in TURNS | set(EVENT_TYPES):
            found.append((named[1], json.loads(block)))
    return found


def body_model(doc: dict[str, Any], webhook: str) -> str:
    """The schema a webhook's body is made of (lifecycle types of one shape share one)."""
    schema = doc["webhooks"][webhook]["post"]["requestBody"]["content"]["application/json"]
    body = schema["schema"]
    refs = [s["$ref"] for s in body.get("oneOf", body.get("allOf", [body])) if "$ref" in s]
    return " | ".join(refs)


async def test_the_readmes_webhook_bodies_validate_and_show_every_shape(client):
    doc = await document(client)
    bodies = readme_bodies()
    for name, body in bodies:
        if name == "reply":
            assert chunk_errors(doc, reply_schema(doc), body) == [], body
        else:
            assert body_errors(doc, name, body) == [], (name, body)
    shown = {body_model(doc, name) for name, _ in bodies if name != "reply"}
    assert shown == {body_model(doc, name) for name in doc["webhooks"]}
    assert "reply" in {name for name, _ in bodies}
    channels = {body["channel"] for name, body in bodies if name == "agent.message"}
    assert channels == {"voice", "sms"}


async def test_a_body_that_breaks_the_schema_is_caught(client):
    doc = await document(client)
    [(_, sms)] = [
        (n, b) for n, b in readme_bodies() if n == "agent.message" and b["channel"] == "sms"
    ]
    assert body_errors(doc, "agent.message", {**sms, "channel": "fax"})
    assert body_errors(doc, "agent.message", {**sms, "data": {**sms["data"], "text": 5}})
    assert chunk_errors(doc, reply_schema(doc), {"dtmf": "12x"})


async def test_the_document_shows_voicemail_and_answered_by(client):
    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    voicemail = schemas["VoicemailSettings"]["properties"]
    assert voicemail["action"]["enum"] == ["hangup", "leave_message"]
    assert voicemail["message"]["anyOf"][0]["maxLength"] == 1000
    assert "voicemail" in schemas["AgentCreate"]["properties"]
    answered = schemas["CallOut"]["properties"]["answeredBy"]
    assert {"enum": ["human", "machine", "unknown"], "type": "string"} in answered["anyOf"]
