"""hosted_llm.OpenAIBackend against a real local server speaking the OpenAI wire format."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from hosted_llm import (
    Finish,
    LLMConnectionError,
    LLMResponseError,
    LLMStatusError,
    LLMTimeout,
    OpenAIBackend,
    TextDelta,
    ToolCallDelta,
)
from tests.hosted_llm.scripted_llm import ScriptedLLM, text

MESSAGES = [
    {"role": "system", "content": "You are Ava."},
    {"role": "user", "content": "Hi"},
]
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}}},
    },
}


async def collect(backend: OpenAIBackend, **kwargs):
    return [d async for d in backend.stream(MESSAGES, **kwargs)]


async def test_text_streams_in_order_and_the_request_carries_the_settings(scripted: ScriptedLLM):
    scripted.add(text("Hello", ", this is", " Ava."))
    backend = OpenAIBackend(scripted.url, api_key="sk-test", model="tiny")
    deltas = await collect(backend, temperature=0.3, max_tokens=50)
    await backend.aclose()

    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Hello", ", this is", " Ava."]
    assert deltas[-1] == Finish("stop", prompt_tokens=11, completion_tokens=7)
    body = scripted.requests[0]
    assert body["model"] == "tiny" and body["stream"] is True
    assert body["messages"] == MESSAGES
    assert body["temperature"] == 0.3 and body["max_tokens"] == 50
    assert "tools" not in body and "response_format" not in body
    assert scripted.headers[0]["Authorization"] == "Bearer sk-test"


async def test_first_delta_arrives_before_the_reply_is_finished(scripted: ScriptedLLM):
    release = asyncio.Event()
    scripted.add([("text", "Sure,"), ("wait", release), ("text", " Tuesday.")])
    backend = OpenAIBackend(scripted.url, model="tiny")
    stream = backend.stream(MESSAGES)
    first = await anext(stream)
    assert first == TextDelta("Sure,")  # while the server is still holding the rest
    release.set()
    rest = [d async for d in stream]
    await backend.aclose()
    assert rest[0] == TextDelta(" Tuesday.")


async def test_tool_call_fragments_become_one_call_per_index(scripted: ScriptedLLM):
    scripted.add(
        [
            ("text", "Let me check."),
            ("tool", "lookup_order", {"orderId": "A-1234"}),
            ("tool", "end_call", {}),
        ]
    )
    backend = OpenAIBackend(scripted.url, model="tiny")
    deltas = await collect(backend, tools=[LOOKUP])
    await backend.aclose()

    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls == [
        ToolCallDelta("call_0", "lookup_order", json.dumps({"orderId": "A-1234"})),
        ToolCallDelta("call_1", "end_call", "{}"),
    ]
    assert calls[0].parsed_arguments() == {"orderId": "A-1234"}
    assert deltas[0] == TextDelta("Let me check.")
    assert deltas[-1].reason == "tool_calls"
    assert scripted.requests[0]["tools"] == [LOOKUP]


async def test_json_schema_is_sent_as_response_format(scripted: ScriptedLLM):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    scripted.add(text('{"x": 1}'))
    backend = OpenAIBackend(scripted.url, model="tiny")
    await collect(backend, json_schema=schema)
    await backend.aclose()
    assert scripted.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema},
    }


async def test_the_agents_model_overrides_the_default(scripted: ScriptedLLM):
    scripted.add(text("ok"))
    backend = OpenAIBackend(scripted.url, model="default-model")
    await collect(backend, model="llama-3.1-8b-instant")
    await backend.aclose()
    assert scripted.requests[0]["model"] == "llama-3.1-8b-instant"


async def test_no_model_at_all_is_a_clear_error(scripted: ScriptedLLM):
    backend = OpenAIBackend(scripted.url)
    with pytest.raises(LLMResponseError, match="RELAY_LLM_MODEL"):
        await collect(backend)
    await backend.aclose()
    assert scripted.requests == []


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_http_errors_keep_their_status(scripted: ScriptedLLM, status: int):
    scripted.add([("status", status, "scripted failure")])
    backend = OpenAIBackend(scripted.url, model="tiny")
    with pytest.raises(LLMStatusError) as caught:
        await collect(backend)
    await backend.aclose()
    assert caught.value.status == status
    assert caught.value.code == "http_status"
    assert f"HTTP {status}" in caught.value.message
    assert len(scripted.requests) == 1  # no silent retries: a live call cannot wait


async def test_refused_connection_is_connection_failed():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="tiny", timeout_s=5)
    with pytest.raises(LLMConnectionError) as caught:
        await collect(backend)
    await backend.aclose()
    assert caught.value.code == "connection_failed"


async def test_a_silent_server_times_out_on_the_first_chunk(scripted: ScriptedLLM):
    scripted.add([("hang",)])
    backend = OpenAIBackend(scripted.url, model="tiny", timeout_s=0.5)
    # the server sends the role chunk at once, then nothing: the first content never comes
    with pytest.raises(LLMTimeout) as caught:
        await collect(backend)
    await backend.aclose()
    assert caught.value.code == "timeout"


async def test_a_stalled_stream_times_out_between_chunks(scripted: ScriptedLLM):
    scripted.add([("text", "Sure"), ("sleep", 2.0), ("text", " thing")])
    backend = OpenAIBackend(scripted.url, model="tiny", timeout_s=0.4)
    got = []
    with pytest.raises(LLMTimeout, match="no chunk 3 within 0.4 s"):
        async for delta in backend.stream(MESSAGES):
            got.append(delta)
    await backend.aclose()
    assert got == [TextDelta("Sure")]


async def test_a_body_that_is_not_sse_is_invalid_response(scripted: ScriptedLLM):
    scripted.add([("garbage", "data: {this is not json\n\n")])
    backend = OpenAIBackend(scripted.url, model="tiny")
    with pytest.raises(LLMResponseError):
        await collect(backend)
    await backend.aclose()


async def test_closing_the_stream_aborts_the_request(scripted: ScriptedLLM):
    scripted.add([("text", "One"), ("sleep", 5.0), ("text", " two")])
    backend = OpenAIBackend(scripted.url, model="tiny")
    stream = backend.stream(MESSAGES)
    assert await anext(stream) == TextDelta("One")
    await stream.aclose()  # the caller barged in
    for _ in range(50):
        if scripted.disconnected:
            break
        await asyncio.sleep(0.05)
    await backend.aclose()
    assert scripted.disconnected == [0]
