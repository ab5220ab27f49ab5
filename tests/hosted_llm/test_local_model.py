"""The embedded model for real: Qwen2.5-Coder-1.5B in llama.cpp (the ``local-llm`` extra,
which scripts/bootstrap installs, so CI runs these). Assertions are keyword-level."""

from __future__ import annotations

import json
from dataclasses import replace

import aiohttp
import pytest

from hosted_llm import LocalBackend, Priority, TextDelta, ToolCallDelta, ensure_model
from hosted_llm.weights import MODELS, _hash_file
from relay.turns.hosted import HostedBrain, with_templates
from relay.turns.protocol import TurnRequest
from tests.engine.harness import call_setup

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def backend():
    local = LocalBackend("qwen-1.5b", timeout_s=120)
    await local.load()
    yield local
    await local.aclose()


async def reply(backend, messages, **kwargs):
    return [d async for d in backend.stream(messages, **kwargs)]


def test_the_joined_weights_are_the_pinned_file():
    path = ensure_model("qwen-1.5b")
    assert path.stat().st_size > 900_000_000
    assert _hash_file(path) == MODELS["qwen-1.5b"].sha256


async def test_it_answers_a_question(backend):
    deltas = await reply(
        backend,
        [
            {"role": "system", "content": "Answer with just the number."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        max_tokens=8,
        temperature=0.0,
    )
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert "4" in text
    assert deltas[-1].reason == "stop" and deltas[-1].prompt_tokens > 10


async def test_it_calls_a_tool_in_the_wire_shape(backend):
    deltas = await reply(
        backend,
        [
            {"role": "system", "content": "You are a helpful assistant. Use tools when useful."},
            {"role": "user", "content": "What's the weather in Paris right now?"},
        ],
        tools=[WEATHER],
        max_tokens=60,
        temperature=0.0,
    )
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls and calls[0].name == "get_weather"
    assert "paris" in calls[0].parsed_arguments()["city"].lower()
    assert deltas[-1].reason == "tool_calls"


async def test_json_output_is_constrained_by_the_schema(backend):
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]}
        },
        "required": ["sentiment"],
    }
    deltas = await reply(
        backend,
        [{"role": "user", "content": "Caller: This is wonderful, thank you so much! Sentiment?"}],
        json_schema=schema,
        max_tokens=20,
        temperature=0.0,
        priority=Priority.BACKGROUND,  # the post-call context
    )
    value = json.loads("".join(d.text for d in deltas if isinstance(d, TextDelta)))
    assert value["sentiment"] in ("positive", "neutral", "negative")


async def test_a_hosted_turn_answers_from_the_system_prompt(backend):
    setup = call_setup(
        "call_local",
        "",
        system_prompt=(
            "You are the phone assistant of Bella's restaurant in {{variables.city}}. "
            "Bella's opens at 11 am and closes at 10 pm every day. Answer in one short sentence."
        ),
        greeting="Hi, Bella's here.",
        first_speaker="agent",
        variables={"city": "Sydney"},
    )
    async with aiohttp.ClientSession() as http:
        brain = HostedBrain(
            with_templates(replace(setup, voice_mode="hosted")),
            backend,
            http,
            on_tool=lambda *a: None,
            on_event=lambda *a: None,
            max_tokens=40,
        )
        brain.start()  # warms the prompt, as while the greeting plays
        request = TurnRequest(
            url="",
            secrets=(),
            timeout_s=60,
            payload={
                "data": {"turnId": "turn_1", "transcript": "What time do you open?"},
                "recentHistory": [{"role": "agent", "content": "Hi, Bella's here."}],
            },
        )
        words = "".join([c.text async for c in brain.reply(request)])
        await brain.aclose()
    assert "11" in words or "eleven" in words.lower()
    assert request.timing.first_chunk_at is not None


def conversation(system: str, *turns: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for index, words in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": words})
    return messages


async def finish(backend, messages, **kwargs):
    deltas = await reply(backend, messages, max_tokens=12, temperature=0.0, **kwargs)
    return "".join(d.text for d in deltas if isinstance(d, TextDelta)), deltas[-1]


async def test_a_call_gets_its_prefix_back_after_another_call_used_the_model(backend):
    alice = "You are Ava at Bella's restaurant. It opens at 11 am. Answer in one sentence."
    bob = "You are Max at Joe's garage. It opens at 8 am. Answer in one sentence."
    first_words, first = await finish(backend, conversation(alice, "When do you open?"))
    _, other = await finish(backend, conversation(bob, "When do you open?"))
    assert other.cached_tokens < 10  # nothing of Bob's call was in the cache
    history = conversation(alice, "When do you open?", first_words, "Sorry, what time again?")
    words, second = await finish(backend, history)
    assert "11" in words or "eleven" in words.lower()  # Alice's own words, not Bob's
    # Alice's whole first prompt came back from RAM: only her new words were evaluated.
    assert second.cached_tokens >= first.prompt_tokens
    assert second.prompt_tokens - second.cached_tokens < 30


async def test_a_post_call_job_leaves_the_live_prefix_alone(backend):
    system = "You are Ava at Bella's restaurant. It opens at 11 am. Answer in one sentence."
    words, first = await finish(backend, conversation(system, "When do you open?"))
    await finish(
        backend,
        [{"role": "user", "content": "Summarise: the caller asked when Bella's opens."}],
        priority=Priority.BACKGROUND,
    )
    _, second = await finish(backend, conversation(system, "When do you open?", words, "Why?"))
    assert second.cached_tokens >= first.prompt_tokens
