"""``relay phone sms``: a simulated handset texts a running relay and prints the reply."""

from __future__ import annotations

import asyncio

from relay.cli import main
from tests.sms.conftest import HANDSET, make_agent


async def run_cli(*argv):
    return await asyncio.to_thread(main, ["phone", "sms", *argv])


def printed(capsys):
    """What the command printed (the relay under test logs to the same stdout)."""
    return [line for line in capsys.readouterr().out.splitlines() if line[:1] in "<> "]


async def test_prints_the_text_and_the_reply(client, auth, hook, capsys):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "We open at 9."}
    key = auth["Authorization"].removeprefix("Bearer ")
    base = str(client.make_url("/"))
    code = await run_cli(agent.number, "When do you open?", "--url", base, "--key", key)
    assert code == 0
    assert printed(capsys) == [
        f"> {HANDSET} -> {agent.number}: When do you open?",
        f"< {agent.number}: We open at 9.",
    ]


async def test_key_comes_from_the_environment(client, auth, hook, capsys, monkeypatch):
    agent = await make_agent(client, auth, hook)
    monkeypatch.setenv("RELAY_KEY", auth["Authorization"].removeprefix("Bearer "))
    monkeypatch.setenv("RELAY_URL", str(client.make_url("/")))
    code = await run_cli(agent.number, "hi", "--from", "+12025550177")
    assert code == 0
    assert printed(capsys)[-1] == f"< {agent.number}: You said: hi"


async def test_without_a_key_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("RELAY_KEY", raising=False)
    assert await run_cli("+14155550100", "hi") == 2
    assert "RELAY_KEY" in capsys.readouterr().err


async def test_errors_are_printed_with_their_code(client, auth, hook, capsys):
    await make_agent(client, auth, hook)
    key = auth["Authorization"].removeprefix("Bearer ")
    code = await run_cli("+14155550199", "hi", "--url", str(client.make_url("/")), "--key", key)
    assert code == 1
    assert "(not_found)" in capsys.readouterr().err
