"""SMS fixtures: a real local webhook that verifies Standard Webhooks signatures, a fake
Twilio REST API, agents with numbers, and helpers that text the relay like carriers do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twilio.request_validator import RequestValidator

from relay.config import Settings
from relay.handset.fake_twilio import FakeTwilio
from relay.store.models import LifecycleEvent
from sms.service import SMS, SmsService

PUBLIC_URL = "https://relay.example.com"
TWILIO_SID = "AC" + "5" * 32
TWILIO_TOKEN = "sms-test-twilio-auth-token"
HANDSET = "+12025550142"


@dataclass
class Hook:
    """The developer's webhook: verifies every request's signature, records what came, in
    order, with how many requests were in flight at once, and answers with ``reply``."""

    url: str = ""
    secrets: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0
    reply: Callable[..., Any] = lambda payload: {"text": f"You said: {payload['data']['text']}"}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = None
        for secret in self.secrets:
            try:
                payload = Webhook(secret).verify(body, dict(request.headers))
                break
            except WebhookVerificationError:
                continue
        if payload is None:
            self.bad_signatures += 1
            return web.Response(status=401)
        self.received.append(payload)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            result = self.reply(payload)
            if asyncio.iscoroutine(result):
                result = await result
            if callable(result):  # a streaming reply: (request) -> StreamResponse
                streamed: web.StreamResponse = await result(request)
                return streamed
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)
        finally:
            self.in_flight -= 1

    def texts(self) -> list[str]:
        return [p["data"]["text"] for p in self.received]


def ndjson(*objects: dict[str, Any], pause: float = 0.0) -> Callable[..., Any]:
    """A reply that streams ``objects`` as NDJSON lines."""

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for obj in objects:
            await resp.write((json.dumps(obj) + "\n").encode())
            if pause:
                await asyncio.sleep(pause)
        await resp.write_eof()
        return resp

    return stream


@pytest.fixture
async def hook(aiohttp_server: Any) -> Hook:
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    hook.url = str(server.make_url("/hook"))
    return hook


@pytest.fixture
async def fake_twilio(aiohttp_server: Any) -> tuple[FakeTwilio, str]:
    fake = FakeTwilio(TWILIO_SID, TWILIO_TOKEN)
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


@pytest.fixture
def settings(fake_twilio: tuple[FakeTwilio, str]) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_api_base_url=fake_twilio[1],
    )


@pytest.fixture
async def twilio(fake_twilio: tuple[FakeTwilio, str], client: Any) -> AsyncIterator[FakeTwilio]:
    """The fake Twilio, its status callbacks routed to the relay under test (and all of them
    answered before the relay stops)."""
    fake = fake_twilio[0]
    fake.deliver_to = (PUBLIC_URL, str(client.make_url("")).rstrip("/"))
    yield fake
    await client.app[SMS].queues.idle()
    await fake.settle()


def sms_of(client: Any) -> SmsService:
    return client.app[SMS]


@dataclass(frozen=True)
class AgentNumber:
    id: str
    secret: str
    number: str
    number_id: str


async def make_agent(
    client: Any,
    auth: dict[str, str],
    hook: Hook | None,
    *,
    provider: str = "sim",
    phone: str = "+14155550100",
    **fields: Any,
) -> AgentNumber:
    """An agent (its webhook: ``hook``) with a number: a sim one, or an imported Twilio one."""
    body: dict[str, Any] = {"name": "Ava", **fields}
    if hook is not None and "webhookUrl" not in fields and fields.get("voiceMode") != "hosted":
        body["webhookUrl"] = hook.url
    resp = await client.post("/v1/agents", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    if hook is not None:
        hook.secrets.append(agent["webhookSecret"])
    if provider == "sim":
        resp = await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
    else:
        resp = await client.post(
            "/v1/numbers/import",
            json={
                "provider": provider,
                "phoneNumber": phone,
                "credentialsRef": "main",
                "agentId": agent["id"],
            },
            headers=auth,
        )
    assert resp.status == 201, await resp.text()
    number = await resp.json()
    return AgentNumber(agent["id"], agent["webhookSecret"], number["phoneNumber"], number["id"])


async def sim_text(
    client: Any,
    auth: dict[str, str],
    to: str,
    text: str,
    *,
    frm: str = HANDSET,
    wait: float = 5.0,
    status: int = 200,
    **extra: Any,
) -> dict[str, Any]:
    body = {"to": to, "from": frm, "text": text, "waitSeconds": wait, **extra}
    resp = await client.post("/carriers/sim/sms", json=body, headers=auth)
    assert resp.status == status, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


def twilio_sms_params(to: str, frm: str, body: str, sid: str, **extra: str) -> dict[str, str]:
    """The fields of Twilio's inbound-message webhook."""
    return {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "DC",
        "SmsStatus": "received",
        "FromCity": "WASHINGTON",
        "Body": body,
        "FromCountry": "US",
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": frm,
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def twilio_post(
    client: Any, path: str, params: dict[str, str], *, token: str = TWILIO_TOKEN
) -> Any:
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + path, params)
    return await client.post(path, data=params, headers={"X-Twilio-Signature": signature})


async def events_of(database: Any, type_prefix: str = "message.") -> list[LifecycleEvent]:
    async with database.session() as session:
        rows = await session.execute(
            select(LifecycleEvent)
            .where(LifecycleEvent.type.startswith(type_prefix))
            .order_by(LifecycleEvent.created_at, LifecycleEvent.id)
        )
        return list(rows.scalars())


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
