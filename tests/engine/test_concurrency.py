"""Several calls at once share the models and nothing else."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.engine.harness import (
    Caller,
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    start_hook,
    transcribe,
)

pytestmark = pytest.mark.slow

ASKS = {
    "pizza": ("Can I order a pizza, please?", "Your pizza is on its way."),
    "taxi": ("I need a taxi to the airport.", "A taxi will pick you up soon."),
}


async def test_simultaneous_calls_each_hear_only_their_own_answer(
    aiohttp_server, engine, sqlite_db, http, voice
):
    async def reply(request, payload):
        said = payload["data"]["transcript"].lower()
        for key, (_, answer) in ASKS.items():
            if key in said:
                return web.json_response({"text": answer})
        return web.json_response({"text": "Sorry?"})

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    audio = {key: voice(question) for key, (question, _) in ASKS.items()}

    async def one_call(key: str) -> tuple[str, str]:
        line = RecordingLine()
        call_id = await make_call(sqlite_db)
        handle = await engine.start_call(
            call_setup(call_id, url, tts="piper"), line, sqlite_db, http
        )
        caller = Caller(handle)
        await asyncio.sleep(0.2)
        done = await caller.say(audio[key])
        await line.wait_audio(done, within=30)
        await line.wait_quiet(0.8)
        await caller.stop()
        await handle.end()
        return call_id, transcribe(line.audio()).lower()

    results = await asyncio.gather(one_call("pizza"), one_call("taxi"))
    (pizza_id, pizza_heard), (taxi_id, taxi_heard) = results
    assert "pizza" in pizza_heard and "taxi" not in pizza_heard
    assert "taxi" in taxi_heard and "pizza" not in taxi_heard
    by_call = {r["data"]["callId"]: r["data"]["transcript"].lower() for r in hook.requests}
    assert "pizza" in by_call[pizza_id] and "taxi" in by_call[taxi_id]
