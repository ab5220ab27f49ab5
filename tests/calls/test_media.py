"""The HTTP client a call's engine gets from the media runtime (its webhook turns, its tool
calls) is the checked one: a name that resolves to loopback is refused at connect time."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from relay.calls.media import MediaRuntime
from relay.config import Settings
from relay.engine import VoiceEngine
from relay.store.db import Database
from relay.turns.brain import WebhookBrain
from relay.turns.protocol import Chunk, TurnError, TurnRequest


@pytest.mark.parametrize("allow_private", [False, True], ids=["checked", "private-allowed"])
async def test_a_voice_webhook_whose_name_resolves_to_loopback_is_refused(
    aiohttp_server: Any, tmp_path: Any, allow_private: bool
) -> None:
    seen: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"text": "Hello from inside."})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    settings = Settings(
        allow_private_webhooks=allow_private, webhook_hosts={"hooks.test": "127.0.0.1"}
    )
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    runtime = MediaRuntime(db, "node", settings, b"k" * 32, engine=VoiceEngine(settings))
    deps = runtime.deps()
    turn = TurnRequest(
        url=f"http://hooks.test:{server.port}/hook",
        secrets=["whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        timeout_s=5,
        payload={"event": "agent.message", "data": {"transcript": "hello"}},
    )
    try:
        if allow_private:
            assert [c async for c in WebhookBrain(deps.http).reply(turn)] == [
                Chunk(text="Hello from inside.")
            ]
            assert seen == ["/hook"]
        else:
            with pytest.raises(TurnError) as err:
                _ = [c async for c in WebhookBrain(deps.http).reply(turn)]
            assert err.value.reason == "connection_failed"
            assert err.value.detail == "hooks.test is not a public address"
            assert seen == []
    finally:
        await deps.http.close()
        await deps.runner().close()
        await db.close()
