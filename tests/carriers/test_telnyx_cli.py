"""``relay phone call --carrier telnyx``: the handset is Telnyx. It serves Telnyx's REST API
where the relay reaches Telnyx, rings a number of a project's Telnyx account with a signed
``call.initiated``, and talks over Telnyx's media protocol once the relay answers through
Call Control. Slow (Piper, Whisper, real-time audio) and SQLite only, as the sim's are."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from relay.events import attach
from relay.handset.fake_telnyx import FakeTelnyx
from relay.store.db import Database
from tests.carriers.telnyx_support import NUMBER_A, PUBLIC_URL, bound_number
from tests.carriers.test_sim_calls import RELAY, REPO, Hook
from tests.transports.support import calls

pytestmark = pytest.mark.slow


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_of(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


async def telnyx_cli(relay_url: str, api_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TELNYX_"))}
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "phone",
        "call",
        NUMBER_A,
        "--carrier",
        "telnyx",
        "--relay",
        relay_url,
        "--public-url",
        PUBLIC_URL,
        "--telnyx-api-url",
        api_url,
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_relay_phone_call_rings_a_telnyx_number_as_telnyx_would(
    database, app_client, aiohttp_server, raw_key, telnyx_settings
):
    hook = Hook({"weather": "It will be sunny all week."})
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    api_url = f"http://127.0.0.1:{free_port()}"
    client = await app_client(telnyx_settings.model_copy(update={"telnyx_api_base_url": api_url}))
    auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
    # Telnyx while the account is added and the number imported; the CLI is Telnyx after.
    fake = FakeTelnyx()
    account = fake.add_account({NUMBER_A})
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(api_url.rsplit(":", 1)[1])).start()
    try:
        agent, _, _ = await bound_number(
            client, auth, fake, account, NUMBER_A, str(server.make_url("/hook"))
        )
    finally:
        await runner.cleanup()
    hook.secret = agent["webhookSecret"]
    relay_url = str(client.make_url("")).rstrip("/")
    who = ("--telnyx-api-key", account.api_key, "--telnyx-connection-id", account.connection_id)

    code, out, err = await telnyx_cli(
        relay_url,
        api_url,
        *who,
        "--telnyx-signing-key",
        seed_of(account.signing_key),
        "--say",
        "What will the weather be like?",
    )
    assert code == 0, err[-2000:]
    answer = next(line for line in out.splitlines() if line.startswith("agent: [+"))
    assert "sunny all week" in answer.lower(), out
    [call] = await calls(database)
    assert (call.connection_type, call.status) == ("telnyx", "completed")

    # Signed with another key: no Telnyx signature for this account, refused, exit 2.
    other = seed_of(Ed25519PrivateKey.generate())
    code, _, err = await telnyx_cli(
        relay_url, api_url, *who, "--telnyx-signing-key", other, "--say", "hello"
    )
    assert code == 2 and "invalid_signature" in err, err[-2000:]
    assert len(await calls(database)) == 1
