"""Hosted mode's brain (relay.turns.hosted) turn by turn: what the LLM is sent, what the
caller is told, and tools end to end with signed ``tool.call`` requests."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hosted_llm import OpenAIBackend
from relay.config import Settings
from relay.egress import client_session
from relay.turns.hosted import MAX_TOOL_RESULT_BYTES, HostedBrain, phrase, with_templates
from relay.turns.protocol import Chunk, TurnError, TurnRequest
from tests.engine.harness import call_setup
from tests.hosted_llm.scripted_llm import ScriptedLLM, text
from tests.hosted_llm.tools_server import ToolServer

LOOKUP = {
    "name": "lookup_order",
    "description": "Look up an order by its id",
    "parameters": {
        "type": "object",
        "properties": {"orderId": {"type": "string"}},
        "required": ["orderId"],
    },
    "timeout_ms": 2000,
}


@pytest.fixture
async def tool_server(aiohttp_server: Any) -> ToolServer:
    server = ToolServer()
    await server.start(aiohttp_server)
    return server


class Brain:
    """A HostedBrain plus what a session would hand it and keep from it."""

    def __init__(self, scripted: ScriptedLLM, http: aiohttp.ClientSession, **agent: Any) -> None:
        agent.setdefault("system_prompt", "You are Ava from Acme.")
        self.setup = replace(call_setup("call_test", "", **agent), voice_mode="hosted")
        self.tools: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.backend = OpenAIBackend(scripted.url, model="tiny", timeout_s=2)
        self.brain = HostedBrain(
            with_templates(self.setup),
            self.backend,
            http,
            on_tool=lambda summary, start, end, data: self.tools.append((summary, data)),
            on_event=lambda *event: self.events.append(event),
        )
        self.number = 0

    async def turn(
        self, transcript: str = "", history: list[dict[str, Any]] | None = None, **data: Any
    ) -> list[Chunk]:
        self.number += 1
        payload = {
            "event": "agent.message",
            "data": {"callId": "call_test", "turnId": f"turn_{self.number}", **data},
            "recentHistory": history or [],
        }
        if transcript:
            payload["data"]["transcript"] = transcript
        request = TurnRequest(url="", secrets=(), timeout_s=5, payload=payload)
        chunks = [c async for c in self.brain.reply(request)]
        assert request.timing.sent_at > 0
        return chunks


def spoken(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_a_turn_sends_prompt_greeting_and_words_and_streams_the_reply(scripted, http):
    scripted.add(text("We open", " at nine."))
    brain = Brain(scripted, http, greeting="Hi, this is Ava.", first_speaker="agent")
    chunks = await brain.turn("When do you open?")
    assert spoken(chunks) == "We open at nine."
    assert [c.text for c in chunks] == ["We open at nine."]  # whole clauses, not tokens
    assert scripted.messages(0) == [
        {"role": "system", "content": "You are Ava from Acme."},
        {"role": "assistant", "content": "Hi, this is Ava."},
        {"role": "user", "content": "When do you open?"},
    ]
    assert "tools" not in scripted.requests[0]
    await brain.backend.aclose()


async def test_templates_fill_the_prompt_and_greeting(scripted, http):
    scripted.add(text("Sure."))
    brain = Brain(
        scripted,
        http,
        system_prompt="Caller {{call.from}} is {{variables.name}}; tier {{variables.tier}}.",
        greeting="Hi {{variables.name}}!",
        first_speaker="agent",
        variables={"name": "Ana", "tier": "gold"},
    )
    await brain.turn("Hello")
    assert scripted.messages(0)[:2] == [
        {"role": "system", "content": "Caller +61412345678 is Ana; tier gold."},
        {"role": "assistant", "content": "Hi Ana!"},
    ]
    await brain.backend.aclose()


async def test_the_history_keeps_what_the_caller_heard(scripted, http):
    scripted.add(text("Our store opens at nine and closes at five."), text("Yes."), text("Ok."))
    brain = Brain(scripted, http)
    await brain.turn("When do you open?")
    heard = [
        {"role": "user", "content": "When do you open?"},
        {"role": "agent", "content": "Our store opens at", "interrupted": True},
    ]
    await brain.turn("Sorry, on Sunday?", heard)
    assert scripted.messages(1)[2:] == [
        {"role": "assistant", "content": "Our store opens at..."},
        {"role": "user", "content": "Sorry, on Sunday?"},
    ]
    after_reprompt = [
        {"role": "user", "content": "Sorry, on Sunday?"},
        {"role": "agent", "content": "Yes."},
        {"role": "agent", "content": "Are you still there?"},
    ]
    await brain.turn("Yes I am", after_reprompt)
    assert scripted.messages(2)[-3:] == [
        {"role": "assistant", "content": "Yes."},
        {"role": "assistant", "content": "Are you still there?"},
        {"role": "user", "content": "Yes I am"},
    ]
    await brain.backend.aclose()


async def test_dtmf_and_an_open_turn(scripted, http):
    scripted.add(text("Hello, Acme here."), text("Press received."))
    brain = Brain(scripted, http)
    assert spoken(await brain.turn()) == "Hello, Acme here."  # the agent opens the call
    assert scripted.messages(0) == [{"role": "system", "content": "You are Ava from Acme."}]
    await brain.turn(dtmf="42#")
    assert scripted.messages(1)[-1] == {
        "role": "user",
        "content": "(The caller pressed 42# on the keypad.)",
    }
    await brain.backend.aclose()


async def test_a_tool_call_is_signed_posted_and_its_result_fed_back(scripted, http, tool_server):
    scripted.add(
        [("text", "Let me check."), ("tool", "lookup_order", {"orderId": "A-17"})],
        text("It has shipped."),
    )
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    chunks = await brain.turn("Where is order A-17?")

    assert spoken(chunks) == "Let me check.It has shipped."  # the session spaces chunks
    assert tool_server.verified == [True]
    event = tool_server.requests[0]
    assert event["event"] == "tool.call" and event["agentId"] == "agt_test"
    assert event["data"]["name"] == "lookup_order"
    assert event["data"]["arguments"] == {"orderId": "A-17"}
    assert event["data"]["callId"] == "call_test" and event["data"]["turnId"] == "turn_1"
    assert event["data"]["toolCallId"] == "call_0"

    offered = scripted.requests[0]["tools"]
    assert offered == [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Look up an order by its id",
                "parameters": LOOKUP["parameters"],
            },
        }
    ]
    second = scripted.messages(1)
    assert second[-2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"orderId": "A-17"}'},
            }
        ],
    }
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": '{"status": "shipped"}',
    }

    ((summary, data),) = brain.tools
    assert data["name"] == "lookup_order" and data["arguments"] == {"orderId": "A-17"}
    assert data["result"] == {"status": "shipped"} and data["error"] is None
    assert data["status"] == 200 and data["durationMs"] >= 0
    assert summary.startswith("lookup_order(") and "shipped" in summary
    await brain.backend.aclose()


async def test_a_slow_tool_times_out_and_the_llm_hears_why(scripted, http, tool_server):
    async def slow(body):
        await asyncio.sleep(2)
        return web.json_response({"result": "late"})

    tool_server.reply = slow
    scripted.add([("tool", "lookup_order", {"orderId": "B"})], text("Sorry, I can't check."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url, "timeout_ms": 300}])
    chunks = await brain.turn("Where is B?")
    assert spoken(chunks) == "Sorry, I can't check."
    assert scripted.messages(1)[-1]["content"] == (
        "Error: lookup_order did not answer within 300 ms"
    )
    assert brain.tools[0][1]["error"] == "lookup_order did not answer within 300 ms"
    await brain.backend.aclose()


async def test_a_tool_result_written_in_pieces_is_read_to_its_end(scripted, http, tool_server):
    body = json.dumps({"result": {"status": "shipped", "note": "left at the door " * 20}})

    async def in_pieces(_body):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(tool_server.request)
        await resp.write(body[:20].encode())
        await asyncio.sleep(0.1)
        await resp.write(body[20:].encode())
        await resp.write_eof()
        return resp

    tool_server.reply = in_pieces
    scripted.add([("tool", "lookup_order", {"orderId": "D"})], text("Shipped."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    await brain.turn("Where is D?")
    assert brain.tools[0][1]["error"] is None
    assert brain.tools[0][1]["result"] == json.loads(body)["result"]
    await brain.backend.aclose()


async def test_a_tool_result_over_the_limit_is_an_error(scripted, http, tool_server):
    tool_server.reply = lambda body: web.json_response({"result": "x" * MAX_TOOL_RESULT_BYTES})
    scripted.add([("tool", "lookup_order", {"orderId": "E"})], text("Too much."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    await brain.turn("Where is E?")
    assert scripted.messages(1)[-1]["content"] == (
        f"Error: lookup_order answered HTTP 200 with more than {MAX_TOOL_RESULT_BYTES} bytes"
    )
    await brain.backend.aclose()


async def test_a_failing_tool_reports_its_status(scripted, http, tool_server):
    tool_server.reply = lambda body: web.Response(status=503, text="down for maintenance")
    scripted.add([("tool", "lookup_order", {"orderId": "C"})], text("It's down."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    await brain.turn("Where is C?")
    # Its status, size and time; never its body (which the call's tool event would show).
    content = scripted.messages(1)[-1]["content"]
    assert re.fullmatch(r"Error: lookup_order answered HTTP 503 \(20 bytes in \d+ ms\)", content)
    assert brain.tools[0][1]["status"] == 503
    await brain.backend.aclose()


@pytest.mark.parametrize("allow_private", [False, True], ids=["checked", "private-allowed"])
async def test_a_tool_whose_name_resolves_to_loopback_is_refused(
    scripted, tool_server, allow_private
):
    settings = Settings(
        allow_private_webhooks=allow_private, webhook_hosts={"tools.test": "127.0.0.1"}
    )
    url = tool_server.url.replace("127.0.0.1", "tools.test")
    scripted.add([("tool", "lookup_order", {"orderId": "D"})], text("Let me see."))
    async with client_session(settings) as http:
        brain = Brain(scripted, http, tools=[{**LOOKUP, "url": url}])
        await brain.turn("Where is D?")
    content = scripted.messages(1)[-1]["content"]
    if allow_private:
        assert content == '{"status": "shipped"}'
        assert len(tool_server.requests) == 1
    else:
        assert content == "Error: lookup_order is unreachable (tools.test is not a public address)"
        assert tool_server.requests == []
        assert brain.tools[0][1]["error"] == content.removeprefix("Error: ")
    await brain.backend.aclose()


async def test_arguments_that_break_the_schema_never_reach_the_tool(scripted, http, tool_server):
    scripted.add([("tool", "lookup_order", {"order": 5})], text("Which order?"))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    assert spoken(await brain.turn("Where is it?")) == "Which order?"
    assert tool_server.requests == []
    assert scripted.messages(1)[-1]["content"] == (
        "Error: invalid arguments for lookup_order: 'orderId' is a required property"
    )
    await brain.backend.aclose()


async def test_an_unknown_tool_is_an_error_for_the_llm(scripted, http):
    scripted.add([("tool", "refund_everything", {})], text("I can't do that."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": "http://127.0.0.1:9/x"}])
    await brain.turn("Refund me")
    assert scripted.messages(1)[-1]["content"] == (
        "Error: there is no tool named 'refund_everything'"
    )
    await brain.backend.aclose()


async def test_end_call_hangs_up_after_the_goodbye(scripted, http):
    scripted.add([("text", "Goodbye!"), ("tool", "end_call", {})])
    brain = Brain(scripted, http, tools=[{"name": "end_call"}])
    chunks = await brain.turn("That's all, bye")
    assert chunks == [Chunk(text="Goodbye!"), Chunk(hangup=True)]
    assert len(scripted.requests) == 1  # nothing more to say once the call is ending
    assert scripted.requests[0]["tools"][0]["function"]["name"] == "end_call"
    assert brain.tools[0][1]["name"] == "end_call"
    await brain.backend.aclose()


async def test_transfer_call_only_to_an_allowed_number(scripted, http):
    allowed = ["+61255501999"]
    scripted.add(
        [("tool", "transfer_call", {"to": "+61255501234"})],
        [("text", "Transferring you now."), ("tool", "transfer_call", {"to": allowed[0]})],
    )
    brain = Brain(scripted, http, tools=[{"name": "transfer_call", "destinations": allowed}])
    chunks = await brain.turn("Get me a human")
    assert chunks == [Chunk(text="Transferring you now."), Chunk(transfer=allowed[0])]
    params = scripted.requests[0]["tools"][0]["function"]["parameters"]
    assert params["properties"]["to"]["enum"] == allowed
    assert scripted.messages(1)[-1]["content"] == (
        "Error: the transfer was refused: Not one of the agent's transfer destinations. "
        "Allowed: +61255501999. The caller is still on the line with you."
    )
    assert brain.events == [
        (
            "telephony",
            "transfer to +61255501234 refused: Not one of the agent's transfer destinations.",
            "warning",
            {"to": "+61255501234", "reason": "destination_not_allowed", "turnId": "turn_1"},
        )
    ]
    assert [data["error"] is None for _, data in brain.tools] == [False, True]
    await brain.backend.aclose()


async def test_transfer_call_stored_without_destinations_transfers_nowhere(scripted, http):
    # Agents stored before destinations were required: the LLM is told, the call goes on.
    scripted.add(
        [("tool", "transfer_call", {"to": "+61255501999"})],
        text("I can't transfer you, but I can help."),
    )
    brain = Brain(scripted, http, tools=[{"name": "transfer_call"}])
    chunks = await brain.turn("Get me a human")
    assert spoken(chunks) == "I can't transfer you, but I can help."
    assert not any(c.transfer for c in chunks)
    assert scripted.messages(1)[-1]["content"].startswith(
        "Error: the transfer was refused: The agent lists no transfer destinations."
    )
    [(source, _, level, data)] = brain.events
    assert (source, level, data["reason"]) == ("telephony", "warning", "no_transfer_destinations")
    await brain.backend.aclose()


async def test_tool_rounds_are_bounded(scripted, http, tool_server):
    loop = [("tool", "lookup_order", {"orderId": "X"})]
    scripted.add(loop, loop, text("Let me answer without it."))
    brain = Brain(scripted, http, tools=[{**LOOKUP, "url": tool_server.url}])
    brain.brain.max_tool_rounds = 2
    assert spoken(await brain.turn("Loop")) == "Let me answer without it."
    assert "tools" not in scripted.requests[2]  # the last round must answer in words
    await brain.backend.aclose()


async def test_an_llm_failure_is_a_turn_error_the_session_can_fall_back_on(scripted, http):
    scripted.add([("status", 500, "overloaded")])
    brain = Brain(scripted, http)
    with pytest.raises(TurnError) as caught:
        await brain.turn("Hello?")
    assert caught.value.reason == "http_status"
    assert "hosted LLM (openai:tiny)" in caught.value.detail and "500" in caught.value.detail
    await brain.backend.aclose()


async def test_the_first_clause_then_whole_sentences_are_spoken_as_soon_as_each_ends(
    scripted, http
):
    scripted.add(
        text("Sure", ",", " we", " open", " at", " nine", ",", " and", " close", " at", " ten")
        + text(".", " See", " you", "!")
    )
    brain = Brain(scripted, http)
    chunks = await brain.turn("Open tomorrow?")
    assert [c.text for c in chunks] == [
        "Sure,",
        " we open at nine, and close at ten.",
        " See you!",
    ]


def test_phrase_splits_after_the_last_clause_only():
    assert phrase("Sure, we open") == ("Sure,", " we open")
    assert phrase("It costs 3.5 dollars") == ("", "It costs 3.5 dollars")
    assert phrase("Yes. Okay. And") == ("Yes. Okay.", " And")
    assert phrase(". ") == ("", ". ")
    assert phrase("Sure, we open", clauses=False) == ("", "Sure, we open")
    assert phrase("Yes, we do. And", clauses=False) == ("Yes, we do.", " And")
