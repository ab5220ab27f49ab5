"""examples/fastapi and examples/express against a real relay, each run as its own process.

A relay on a real port (the sim carrier, the real voice engine), the example as a subprocess
(uvicorn; ``node``), and an OpenAI-compatible LLM played by a local server speaking the real
chat-completions SSE wire format (the outside world). The sim handset calls the agent's
number with spoken lines: the turns reach the example (which verifies every signature), its
streamed reply is what the caller hears; a text to the same number is answered by it too.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only, like the other whole calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from relay.events import attach
from relay.handset import SimHandset
from relay.signing import signature_headers
from relay.store.db import Database
from tests.hosted_llm.scripted_llm import ScriptedLLM, text
from tests.transports.support import agent_with_number, phone_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GREETING = "Hello, this is the booking line."
BOOKED = "Of course. I have booked a table for two at seven."
SUNDAY = "Yes, we are open on Sunday from noon."


def command(example: str, port: int) -> list[str]:
    if example == "fastapi":
        return [
            *(sys.executable, "-m", "uvicorn", "app:app", "--app-dir", "examples/fastapi"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ]
    if shutil.which("node") is None:
        pytest.skip("node is not installed on this machine")
    if not (REPO / "examples/express/node_modules").is_dir():
        pytest.fail("run scripts/bootstrap: it installs examples/express's packages (npm ci)")
    return ["node", "examples/express/server.js"]


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


def answer(body: dict) -> list:
    """The LLM: what it says depends on the caller's last words; split into several deltas."""
    said = body["messages"][-1]["content"].lower()
    reply = BOOKED if "table" in said else SUNDAY if "sunday" in said else "Sorry?"
    words = reply.split(" ")
    return text(*(w + " " for w in words[:-1]), words[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def listening(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(600):
        if proc.returncode is not None:
            pytest.fail(f"the example exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail("the example did not listen within 60 s")


@pytest.fixture(params=["fastapi", "express"])
async def live(request, app_client, aiohttp_server, raw_key):
    """(relay client, key, agent, number, LLM, example URL) with the example running."""
    port = free_port()
    argv = command(request.param, port)
    llm = ScriptedLLM()
    llm.add(*[answer] * 20)
    await llm.start(aiohttp_server)
    client = await app_client(phone_settings())
    key = await raw_key("proj-a")
    url = f"http://127.0.0.1:{port}/agent"
    agent, number = await agent_with_number(
        client, {"Authorization": f"Bearer {key}"}, webhookUrl=url, greeting=GREETING
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RELAY_"))}
    env |= {
        "WEBHOOK_SECRET": agent["webhookSecret"],
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_MODEL": "scripted-model",
        "PORT": str(port),
    }
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await listening(port, proc)
        yield client, key, agent, number, llm, url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def base_url(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_call_reaches_the_example_and_the_caller_hears_its_streamed_reply(live):
    client, key, _, number, llm, _ = live
    report = await SimHandset(base_url(client), key).call(
        number, ["I would like to book a table for two people.", "Thank you, goodbye."]
    )

    assert "booking line" in report.greeting.lower()
    # The first turn went to the LLM through the example: the transcript is the user's line.
    [request] = llm.requests
    assert request["stream"] is True and request["model"] == "scripted-model"
    assert "table" in request["messages"][-1]["content"].lower()
    assert "turn 1 " in request["messages"][0]["content"]
    assert [m["role"] for m in request["messages"][1:]] == ["assistant", "user"]  # the greeting
    booked, bye = report.turns
    assert "table for two" in booked.heard.lower() or "table for 2" in booked.heard.lower()
    assert "seven" in booked.heard.lower() or "7" in booked.heard
    assert "goodbye" in bye.heard.lower() or "bye" in bye.heard.lower()
    assert report.ended_by == "relay"  # the example's hangup: true

    call = await (
        await client.get(f"/v1/calls/{report.call_id}", headers={"Authorization": f"Bearer {key}"})
    ).json()
    assert call["status"] == "completed"


async def test_texts_are_answered_by_the_example_and_its_state_comes_back(live):
    client, key, agent, _, llm, _ = live
    auth = {"Authorization": f"Bearer {key}"}
    # A sim number of the agent's own: texts come in through the sim carrier.
    resp = await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
    assert resp.status == 201, await resp.text()
    number = (await resp.json())["phoneNumber"]

    async def sms(words: str) -> list[str]:
        resp = await client.post(
            "/carriers/sim/sms",
            json={"to": number, "from": "+15005550006", "text": words, "waitSeconds": 30},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["timedOut"] is False
        return [r["text"] for r in body["replies"]]

    assert await sms("Are you open on Sunday?") == [SUNDAY]
    assert await sms("Can I book a table for two?") == [BOOKED]
    # The second text's turn count came from the state the example returned with the first.
    assert ["turn 1 " in r["messages"][0]["content"] for r in llm.requests] == [True, False]
    assert "turn 2 " in llm.requests[1]["messages"][0]["content"]
    assert "text message" in llm.requests[1]["messages"][0]["content"]
    assert await sms("ok bye") == ["Thanks for calling. Goodbye!"]


async def test_the_example_refuses_what_it_cannot_verify_and_shows_the_call_controls(live):
    *_, agent, _, llm, url = live
    secret = agent["webhookSecret"]

    def event(said: str, **data: object) -> dict:
        return {
            "event": "agent.message",
            "channel": "voice",
            "agentId": agent["id"],
            "data": {"callId": "call_1", "turnId": "turn_1", "transcript": said, **data},
            "conversationState": {"turns": 4, "name": "Sam"},
            "recentHistory": [],
        }

    async with aiohttp.ClientSession() as http:

        async def post(payload: dict, key: str = secret) -> tuple[int, list[dict]]:
            body = json.dumps(payload)
            headers = {"Content-Type": "application/json", **signature_headers(body, [key])}
            async with http.post(url, data=body, headers=headers) as resp:
                lines = (await resp.text()).splitlines()
                return resp.status, [json.loads(line) for line in lines if line]

        forged = "whsec_" + "b3RoZXItc2VjcmV0LWZvci10aGUtdGVzdA=="
        assert (await post(event("hi"), key=forged))[0] == 401
        async with http.post(url, json=event("hi")) as unsigned:
            assert unsigned.status == 401
        assert llm.requests == []

        assert await post(event("", dtmf="0")) == (
            200,
            [
                {
                    "text": "Let me put you through to a person.",
                    "transfer": "+14155550100",
                    "state": {"turns": 5, "name": "Sam"},
                }
            ],
        )
        _, [keys] = await post(event("please dial extension 42"))
        assert keys["dtmf"] == "42"
        _, [bye] = await post(event("bye now"))
        assert bye["hangup"] is True

        status, chunks = await post(event("A table please"))
        assert status == 200
        assert [c.get("interim") for c in chunks] == [True, True, None]
        assert " ".join(c["text"] for c in chunks[:-1]) == BOOKED
        assert chunks[-1] == {"state": {"turns": 5, "name": "Sam"}}
