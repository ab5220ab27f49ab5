"""examples/webhook_aiohttp.py: signed requests only, NDJSON answers that fit what was said,
for calls and texts, and it runs on its own as ``python -m examples.webhook_aiohttp``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from examples.webhook_aiohttp import make_app
from relay.signing import signature_headers

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZXhhbXBsZS13ZWJob29r"
REPO = Path(__file__).resolve().parents[1]


def event(said: str, channel: str = "voice", **data: object) -> dict[str, object]:
    body: dict[str, object] = {"callId": "call_1", "turnId": "turn_1", **data}
    body["transcript" if channel == "voice" else "text"] = said
    return {
        "event": "agent.message",
        "channel": channel,
        "agentId": "agt_1",
        "data": body,
        "conversationState": {},
        "recentHistory": [],
    }


async def post(client, payload: dict[str, object], secret: str = SECRET):
    body = json.dumps(payload)
    headers = {"Content-Type": "application/json", **signature_headers(body, [secret])}
    return await client.post("/agent", data=body, headers=headers)


async def chunks(client, payload: dict[str, object]) -> list[dict[str, object]]:
    resp = await post(client, payload)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in (await resp.text()).splitlines()]


@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(make_app(SECRET))


async def test_the_example_refuses_a_request_it_cannot_verify(client):
    assert (await post(client, event("hi"), secret="whsec_" + "b3RoZXItc2VjcmV0")).status == 401
    unsigned = await client.post("/agent", json=event("hi"))
    assert unsigned.status == 401


async def test_the_example_answers_a_booking_with_the_party_and_time_it_heard(client):
    got = await chunks(client, event("Can I book a table for 2 at 7?"))
    assert [c.get("interim") for c in got] == [True, True, None]
    assert got[1]["text"] == "I have booked a table for 2 at 7."
    assert got[-1]["state"] == {"booked": "a table for 2 at 7"}


async def test_the_example_answers_hours_and_ends_the_call_on_goodbye(client):
    hours = await chunks(client, event("What time are you open tonight?"))
    assert "noon" in " ".join(str(c["text"]) for c in hours)
    [bye] = await chunks(client, event("Thanks, goodbye."))
    assert bye["hangup"] is True and "Goodbye" in str(bye["text"])


async def test_the_example_answers_texts_without_hanging_up(client):
    [bye] = await chunks(client, event("ok bye", channel="sms"))
    assert "hangup" not in bye and "Goodbye" in str(bye["text"])
    got = await chunks(client, event("Book a table for four please", channel="sms"))
    assert "a table for four tonight" in " ".join(str(c["text"]) for c in got)


async def test_the_example_answers_keys_and_unknown_requests(client):
    assert await chunks(client, event("", dtmf="42")) == [{"text": "You pressed 42."}]
    [other] = await chunks(client, event("Is parking free?"))
    assert "opening hours" in str(other["text"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_example_runs_standalone_with_its_secret_from_the_environment():
    env = {**os.environ, "PORT": str(port := free_port())}
    env.pop("WEBHOOK_SECRET", None)
    command = [sys.executable, "-m", "examples.webhook_aiohttp"]
    refused = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=REPO, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 1
    assert b"set WEBHOOK_SECRET" in err

    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**env, "WEBHOOK_SECRET": SECRET},
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        body = json.dumps(event("Do you have a vegan menu?"))
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    resp = await http.post(
                        f"http://127.0.0.1:{port}/agent",
                        data=body,
                        headers=signature_headers(body, [SECRET]),
                    )
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the example did not listen within 30 s")
            assert resp.status == 200
            assert "vegan risotto" in await resp.text()
    finally:
        proc.terminate()
        await proc.wait()
