"""What transport and carrier tests share: a relay with Twilio configured, an agent with a
number, signed Twilio requests, and a scripted engine behind the CallerLine seam."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from sqlalchemy import select
from twilio.request_validator import RequestValidator

from relay.config import Settings
from relay.engine.ports import PCM, CallEnd, CallerLine, CallSetup
from relay.state import APP_STATE
from relay.store.models import Call, CallEvent, LifecycleEvent, Number
from relay_numbers import TWILIO_DEPLOYMENT_KEY

PUBLIC_URL = "https://relay.example.com"
TWILIO_TOKEN = "twilio-test-auth-token"


def phone_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_private_webhooks": True,
        "rate_limit_per_second": 1000,
        "rate_limit_burst": 1000,
        "public_url": PUBLIC_URL,
        "twilio_auth_token": TWILIO_TOKEN,
    }
    return Settings(**{**values, **overrides})


async def deployment_number(client, auth, agent_id: str | None = None) -> str:
    """A number on the deployment's own Twilio account (which the sim handset reaches too).

    It is provisioned from the sim's fictional ranges and then stored as imported under the
    deployment's account: these tests run no fake of Twilio's REST API to prove ownership
    with (:mod:`tests.numbers.test_ownership` tests the proof)."""
    body = {"agentId": agent_id} if agent_id else {}
    resp = await client.post("/v1/numbers", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    number = await resp.json()
    async with client.app[APP_STATE].db.session() as session:
        row = await session.get(Number, number["id"])
        row.provider, row.source, row.carrier_key = "twilio", "imported", TWILIO_DEPLOYMENT_KEY
    return str(number["phoneNumber"])


async def agent_with_number(client, auth, **agent: Any) -> tuple[dict, str]:
    """A webhook agent bound to a fresh :func:`deployment_number`: (agent json, number)."""
    body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook", **agent}
    resp = await client.post("/v1/agents", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    return created, await deployment_number(client, auth, created["id"])


def twilio_signature(path: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    return RequestValidator(token).compute_signature(PUBLIC_URL + path, params)


async def twilio_post(client, path: str, params: dict[str, str], *, signature: str | None = None):
    sig = twilio_signature(path, params) if signature is None else signature
    headers = {"X-Twilio-Signature": sig} if sig else {}
    return await client.post(path, data=params, headers=headers)


def voice_params(to: str, frm: str = "+61412345678", sid: str = "CA0001") -> dict[str, str]:
    return {
        "AccountSid": "AC0001",
        "CallSid": sid,
        "From": frm,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


async def calls(database) -> list[Call]:
    async with database.session() as session:
        return list((await session.execute(select(Call).order_by(Call.id))).scalars())


async def call_events(database, call_id: str, source: str | None = None) -> list[CallEvent]:
    async with database.session() as session:
        stmt = select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.created_at)
        if source:
            stmt = stmt.where(CallEvent.source == source)
        return list((await session.execute(stmt)).scalars())


async def lifecycle_types(database, call_id: str) -> list[str]:
    async with database.session() as session:
        rows = await session.execute(
            select(LifecycleEvent.type)
            .where(LifecycleEvent.ordering_key == call_id)
            .order_by(LifecycleEvent.created_at)
        )
        return [r[0] for r in rows]


async def wait_for(check, within: float = 5.0) -> None:
    """Until ``check()`` (a plain or async predicate) holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class ScriptedCall:
    """A CallHandle whose side of the conversation the test plays by hand."""

    def __init__(self, setup: CallSetup, line: CallerLine) -> None:
        self.call_id = setup.call_id
        self.setup = setup
        self.line = line
        self.audio: list[tuple[PCM, int]] = []
        self.dtmf: list[str] = []
        self.hung_up = asyncio.Event()
        self.heard = asyncio.Event()
        self.left: tuple[str | None, str] | None = None  # what leave() was asked
        self._end: asyncio.Future[CallEnd] = asyncio.get_running_loop().create_future()

    def push_audio(self, pcm: PCM, sample_rate: int) -> None:
        self.audio.append((pcm.copy(), sample_rate))
        self.heard.set()

    def push_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)

    def caller_hung_up(self) -> None:
        self.hung_up.set()
        self._finish(CallEnd("completed"))

    async def end(self, reason: str = "completed") -> None:
        self._finish(CallEnd("completed") if reason == "completed" else CallEnd("failed", reason))

    async def leave(self, message: str | None, detail: str) -> None:
        self.left = (message, detail)
        self._finish(CallEnd("completed", detail=detail))

    def _finish(self, result: CallEnd) -> None:
        if not self._end.done():
            self._end.set_result(result)

    async def wait(self) -> CallEnd:
        return await asyncio.shield(self._end)


class ScriptedEngine:
    """Stands where ``relay.engine.engine.VoiceEngine`` stands, for wire-level tests."""

    def __init__(self) -> None:
        self.calls: list[ScriptedCall] = []
        self.active: dict[str, ScriptedCall] = {}
        self.started = asyncio.Event()

    async def start_call(self, setup, line, sink, http) -> ScriptedCall:
        call = ScriptedCall(setup, line)
        self.calls.append(call)
        self.started.set()
        return call
