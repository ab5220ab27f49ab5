"""A stand-in for Telnyx that speaks its wire protocols, for tests and for trying the relay's
Telnyx side without Telnyx (``RELAY_TELNYX_API_BASE_URL`` points the relay at it).

Its REST API (v2, JSON, ``Authorization: Bearer <API key>``; a wrong key answers 401 with
Telnyx's error body, ``down`` answers 503 to everything):

``GET   /v2/balance``                                  the account's balance
``GET   /v2/call_control_applications/{id}``           the account's application
``PATCH /v2/call_control_applications/{id}``           where its call events go
``PATCH /v2/messaging_profiles/{id}``                  where its texts' events go
``GET   /v2/phone_numbers?filter[phone_number]=``      the account's numbers with that value
``GET   /v2/available_phone_numbers``, ``POST /v2/number_orders``  search and buy
``DELETE /v2/phone_numbers/{id}``                      release
(the numbers: :mod:`relay.handset.fake_telnyx_numbers`)
``POST  /v2/calls``                                    dial (with a bidirectional stream)
``POST  /v2/calls/{id}/actions/answer|hangup|transfer|send_dtmf``
``POST  /v2/messages``                                 send a text

Its webhooks are JSON envelopes signed with the account's Ed25519 key
(``telnyx-signature-ed25519`` over ``{timestamp}|{body}``, ``telnyx-timestamp``). Its media
socket is the carrier side of Telnyx media streaming: it connects to the ``stream_url`` the
relay gave (``connected``, ``start``, paced 20 ms PCMU ``media`` frames, ``dtmf``, ``stop``),
plays what the relay sends, honours ``clear`` and echoes ``mark``. Whoever is on the phone
talks with :meth:`relay.handset.SimHandset.talk`: real speech, both ways.

``deliver_to`` rewrites the relay's public origin to where it really listens (as a reverse
proxy in front of it would).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.handset.fake_telnyx_numbers import FakeTelnyxNumbers, number_id
from relay.handset.telnyx_line import TelnyxLine, now_iso
from relay.handset.voice import CallReport, Line, SimHandset

AUTH_FAILED = {
    "errors": [
        {
            "code": "10009",
            "title": "Authentication failed",
            "detail": "The API key is not valid.",
        }
    ]
}
CALL_ENDED = {"errors": [{"code": "90018", "title": "Call has already ended"}]}
# What a callee does when dialled: talk (a list of lines), or one of these.
BUSY, NO_ANSWER, REJECT = "busy", "no_answer", "reject"


def _error(status: int, code: str, title: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "title": title}]}, status=status)


@dataclass
class FakeTelnyxAccount:
    api_key: str
    connection_id: str
    messaging_profile_id: str
    numbers: set[str] | None = None  # None: owns whatever number it is asked about
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    application_name: str = "relay"
    call_webhook: str | None = None
    message_webhook: str | None = None

    @property
    def public_key(self) -> str:
        raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def owns(self, number: str) -> bool:
        return self.numbers is None or number in self.numbers


@dataclass
class FakeCall:
    call_control_id: str
    account: FakeTelnyxAccount
    direction: str  # incoming / outgoing
    from_number: str
    to_number: str
    webhook_url: str | None = None
    client_state: str | None = None
    stream_url: str | None = None
    alive: bool = True
    answered: bool = False
    hangup_cause: str | None = None
    report: CallReport | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    transfer_to: str | None = None
    digits: list[str] = field(default_factory=list)  # what send_dtmf played into it
    amd: str | None = None  # the answering_machine_detection it was dialled with
    error: str | None = None  # why its media stream failed, if it did
    arrived_at: float = field(default_factory=time.perf_counter)  # its dial or its ring


@dataclass
class FakeTelnyx:
    """``handset``: how the people on the phone speak and listen (a :class:`SimHandset`
    whose relay URL is unused). ``callees``: what a dialled number does (lines to say once
    it answers, or ``busy`` / ``no_answer`` / ``reject``; not listed: it rings on).
    ``dial_fails``: numbers whose ``POST /v2/calls`` answers 500; ``dial_hangs``: never.
    ``machines``: numbers an answering machine answers (for a call dialled with
    ``answering_machine_detection``)."""

    deliver_to: list[tuple[str, str]] = field(default_factory=list)
    handset: SimHandset | None = None
    down: bool = False
    ring_seconds: float = 0.2
    machines: set[str] = field(default_factory=set)
    amd_seconds: float = 0.3
    callees: dict[str, Sequence[Line] | str] = field(default_factory=dict)
    dial_fails: set[str] = field(default_factory=set)
    dial_hangs: set[str] = field(default_factory=set)  # POST /v2/calls never answers
    undeliverable: set[str] = field(default_factory=set)
    accounts: dict[str, FakeTelnyxAccount] = field(default_factory=dict)
    calls: dict[str, FakeCall] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # method, path, body
    webhooks: list[tuple[str, str, int]] = field(default_factory=list)  # event, url, status
    webhook_seconds: list[float] = field(default_factory=list)  # each one's round trip
    phone_numbers: FakeTelnyxNumbers = field(default_factory=FakeTelnyxNumbers)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def add_account(self, numbers: set[str] | None = None) -> FakeTelnyxAccount:
        account = FakeTelnyxAccount(
            api_key="KEY" + secrets.token_hex(16),
            connection_id=str(secrets.randbelow(10**18)),
            messaging_profile_id=str(uuid.uuid4()),
            numbers=numbers,
        )
        self.accounts[account.api_key] = account
        return account

    def credentials(self, account: FakeTelnyxAccount) -> dict[str, str]:
        """The ``credentials`` of ``POST /v1/carrier-accounts`` for this account."""
        return {
            "apiKey": account.api_key,
            "publicKey": account.public_key,
            "connectionId": account.connection_id,
            "messagingProfileId": account.messaging_profile_id,
        }

    # --- the REST API ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        r = app.router
        r.add_get("/v2/balance", self.balance)
        r.add_get("/v2/call_control_applications/{id}", self.get_application)
        r.add_patch("/v2/call_control_applications/{id}", self.update_application)
        r.add_patch("/v2/messaging_profiles/{id}", self.update_profile)
        r.add_get("/v2/phone_numbers", self.list_numbers)
        numbers = self.phone_numbers
        numbers.account_of = self._me
        r.add_delete("/v2/phone_numbers/{id}", numbers.delete)
        r.add_patch("/v2/phone_numbers/{id}", self.update_number)
        r.add_patch("/v2/phone_numbers/{id}/messaging", self.update_number)
        r.add_get("/v2/available_phone_numbers", numbers.available)
        r.add_post("/v2/number_orders", numbers.order)
        r.add_post("/v2/calls", self.dial)
        r.add_post("/v2/calls/{id}/actions/{action}", self.action)
        r.add_post("/v2/messages", self.send_message)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            body = await request.json() if request.body_exists else None
        except ValueError:
            return _error(400, "10015", "The body is not JSON")
        self.requests.append((request.method, request.path, body))
        if self.down:
            return _error(503, "10007", "Service unavailable")
        if self._account(request) is None:
            return web.json_response(AUTH_FAILED, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _account(self, request: web.Request) -> FakeTelnyxAccount | None:
        header = request.headers.get("Authorization", "")
        return self.accounts.get(header.removeprefix("Bearer ")) if header else None

    def _me(self, request: web.Request) -> FakeTelnyxAccount:
        account = self._account(request)
        assert account is not None
        return account

    async def balance(self, request: web.Request) -> web.Response:
        data = {
            "record_type": "balance",
            "balance": "100.00",
            "credit_limit": "0.00",
            "available_credit": "100.00",
            "currency": "USD",
        }
        return web.json_response({"data": data})

    def _application(self, account: FakeTelnyxAccount) -> dict[str, Any]:
        return {
            "id": account.connection_id,
            "record_type": "call_control_application",
            "application_name": account.application_name,
            "webhook_event_url": account.call_webhook or "",
            "active": True,
        }

    async def get_application(self, request: web.Request) -> web.Response:
        account = self._me(request)
        if request.match_info["id"] != account.connection_id:
            return _error(404, "10005", "Resource not found")
        return web.json_response({"data": self._application(account)})

    async def update_application(self, request: web.Request) -> web.Response:
        account = self._me(request)
        if request.match_info["id"] != account.connection_id:
            return _error(404, "10005", "Resource not found")
        body = await request.json()
        if not body.get("application_name") or not body.get("webhook_event_url"):
            return _error(422, "10015", "application_name and webhook_event_url are required")
        account.application_name = body["application_name"]
        account.call_webhook = body["webhook_event_url"]
        return web.json_response({"data": self._application(account)})

    async def update_profile(self, request: web.Request) -> web.Response:
        account = self._me(request)
        if request.match_info["id"] != account.messaging_profile_id:
            return _error(404, "10005", "Resource not found")
        account.message_webhook = (await request.json()).get("webhook_url")
        profile = {"id": account.messaging_profile_id, "record_type": "messaging_profile"}
        return web.json_response({"data": {**profile, "webhook_url": account.message_webhook}})

    async def list_numbers(self, request: web.Request) -> web.Response:
        account = self._me(request)
        wanted = request.query.get("filter[phone_number]", "")
        items = []
        ordered = self.phone_numbers.of(account.api_key, wanted)
        if ordered is not None:
            items.append(ordered.resource())
        elif wanted and account.owns(wanted):
            items.append(
                {
                    "id": number_id(account.api_key, wanted),
                    "record_type": "phone_number",
                    "phone_number": wanted,
                    "status": "active",
                    "connection_id": account.connection_id,
                    "messaging_profile_id": account.messaging_profile_id,
                }
            )
        meta = {"page_number": 1, "page_size": 20, "total_pages": 1, "total_results": len(items)}
        return web.json_response({"data": items, "meta": meta})

    async def update_number(self, request: web.Request) -> web.Response:
        account = self._me(request)
        body = await request.json()
        wrong = {
            k
            for k, mine in (
                ("connection_id", account.connection_id),
                ("messaging_profile_id", account.messaging_profile_id),
            )
            if k in body and body[k] != mine
        }
        if wrong:
            return _error(422, "10015", f"not this account's: {', '.join(sorted(wrong))}")
        return web.json_response({"data": {"id": request.match_info["id"], **body}})

    async def dial(self, request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        account = self._me(request)
        body = await request.json()
        missing = [k for k in ("connection_id", "to", "from") if not body.get(k)]
        if missing:
            return _error(422, "10015", f"missing {', '.join(missing)}")
        if body["connection_id"] != account.connection_id:
            return _error(422, "10015", "connection_id is not an application of this account")
        if body["to"] in self.dial_fails:
            return _error(500, "10000", "Internal error")
        if body["to"] in self.dial_hangs:
            await asyncio.sleep(3600)
        call = FakeCall(
            call_control_id="v3:" + secrets.token_urlsafe(24),
            account=account,
            direction="outgoing",
            from_number=body["from"],
            to_number=body["to"],
            webhook_url=body.get("webhook_url"),
            client_state=body.get("client_state"),
            stream_url=body.get("stream_url"),
            arrived_at=arrived,
            amd=body.get("answering_machine_detection"),
        )
        self.calls[call.call_control_id] = call
        self._spawn(self._ring(call, int(body.get("timeout_secs") or 30)))
        data = {
            "call_control_id": call.call_control_id,
            "call_leg_id": str(uuid.uuid4()),
            "call_session_id": str(uuid.uuid4()),
            "is_alive": False,
            "record_type": "call",
        }
        return web.json_response({"data": data})

    async def action(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["id"])
        if call is None or call.account is not self._me(request):
            return _error(404, "90015", "Call not found")
        if not call.alive:
            return web.json_response(CALL_ENDED, status=422)
        body = await request.json() if request.body_exists else {}
        action = request.match_info["action"]
        if action == "answer":
            call.stream_url = body.get("stream_url")
            call.client_state = body.get("client_state") or call.client_state
            self._spawn(self._answered(call, self._caller_lines(call)))
        elif action == "hangup":
            # The relay hanging up: a call still ringing is cancelled by its originator.
            cause = "normal_clearing" if call.answered else "originator_cancel"
            self._spawn(self._hang_up(call, cause, "caller"))
        elif action == "transfer":
            call.transfer_to = body.get("to")
        elif action == "send_dtmf":
            if not isinstance(body.get("digits"), str) or not body["digits"]:
                return _error(422, "10002", "digits is required")
            call.digits.append(body["digits"])
        else:
            return _error(404, "10005", f"no action {action}")
        return web.json_response({"data": {"result": "ok"}})

    async def send_message(self, request: web.Request) -> web.Response:
        account = self._me(request)
        body = await request.json()
        if not body.get("from") or not body.get("to") or not body.get("text"):
            return _error(422, "40002", "from, to and text are required")
        self.messages.append(body)
        message_id = str(uuid.uuid4())
        data = {
            "id": message_id,
            "record_type": "message",
            "direction": "outbound",
            "type": "SMS",
            "from": {"phone_number": body["from"], "carrier": "Telnyx", "line_type": "VoIP"},
            "to": [
                {"phone_number": body["to"], "status": "queued", "carrier": "", "line_type": ""}
            ],
            "text": body["text"],
            "messaging_profile_id": account.messaging_profile_id,
            "parts": 1,
            "webhook_url": body.get("webhook_url"),
        }
        target = body.get("webhook_url") or account.message_webhook
        if target:
            self._spawn(self._delivery(account, target, data))
        return web.json_response({"data": data})

    # --- what Telnyx does on its own ------------------------------------------------------

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _rewrite(self, url: str) -> str:
        for public, real in self.deliver_to:
            if url.startswith(public):
                return real + url[len(public) :]
        return url

    async def post_webhook(
        self, account: FakeTelnyxAccount, url: str, event_type: str, payload: dict[str, Any]
    ) -> int:
        """One signed webhook, as Telnyx sends it."""
        doc = {
            "data": {
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": now_iso(),
                "payload": payload,
                "record_type": "event",
            },
            "meta": {"attempt": 1, "delivered_to": url},
        }
        body = json.dumps(doc).encode()
        timestamp = str(int(time.time()))
        signature = account.signing_key.sign(timestamp.encode() + b"|" + body)
        headers = {
            "Content-Type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": timestamp,
        }
        began = time.perf_counter()
        async with (
            aiohttp.ClientSession() as http,
            http.post(self._rewrite(url), data=body, headers=headers) as resp,
        ):
            self.webhook_seconds.append(time.perf_counter() - began)
            self.webhooks.append((event_type, url, resp.status))
            return resp.status

    def _call_payload(self, call: FakeCall, **extra: Any) -> dict[str, Any]:
        return {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_control_id.removeprefix("v3:"),
            "call_session_id": call.call_control_id[-12:],
            "connection_id": call.account.connection_id,
            "client_state": call.client_state,
            "from": call.from_number,
            "to": call.to_number,
            "direction": call.direction,
            "state": "parked" if call.direction == "incoming" else "bridging",
            **extra,
        }

    async def _call_event(self, call: FakeCall, event_type: str, **extra: Any) -> int:
        url = call.webhook_url or call.account.call_webhook
        if not url:
            return 0
        return await self.post_webhook(
            call.account, url, event_type, self._call_payload(call, **extra)
        )

    async def place_call(
        self, account: FakeTelnyxAccount, from_number: str, to_number: str, lines: Sequence[Line]
    ) -> FakeCall:
        """A phone calls ``to_number``: Telnyx tells the application (``call.initiated``);
        once the relay answers with a stream, the caller says ``lines``."""
        call = FakeCall(
            call_control_id="v3:" + secrets.token_urlsafe(24),
            account=account,
            direction="incoming",
            from_number=from_number,
            to_number=to_number,
        )
        call.webhook_url = None
        self.calls[call.call_control_id] = call
        self.callees[f"caller:{call.call_control_id}"] = list(lines)
        status = await self._call_event(call, "call.initiated")
        if status != 200:
            call.alive = False
            call.done.set()
        return call

    def _caller_lines(self, call: FakeCall) -> Sequence[Line]:
        script = self.callees.get(f"caller:{call.call_control_id}", [])
        return script if not isinstance(script, str) else []

    async def _ring(self, call: FakeCall, timeout_secs: int) -> None:
        await self._call_event(call, "call.initiated")
        script = self.callees.get(call.to_number)
        await asyncio.sleep(self.ring_seconds)
        if not call.alive:
            return
        if script == BUSY:
            await self._hang_up(call, "user_busy", "callee")
        elif script == REJECT:
            await self._hang_up(call, "call_rejected", "callee")
        elif script == NO_ANSWER or script is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.done.wait(), timeout_secs)
            if call.alive:
                await self._hang_up(call, "timeout", "callee")
        else:
            assert not isinstance(script, str)
            await self._call_event(call, "call.answered")
            await self._answered(call, script)

    async def _detect(self, call: FakeCall) -> None:
        """Answering-machine detection: the verdict ``amd_seconds`` after the answer (a
        machine for a number in ``machines``); with ``detect_beep``, a machine's beep next."""
        await asyncio.sleep(self.amd_seconds)
        if not call.alive:
            return
        machine = call.to_number in self.machines
        result = "machine" if machine else "human"
        await self._call_event(call, "call.machine.detection.ended", result=result)
        if machine and call.amd == "detect_beep":
            await asyncio.sleep(self.amd_seconds)
            if call.alive:
                await self._call_event(call, "call.machine.greeting.ended", result="beep_detected")

    async def _answered(self, call: FakeCall, lines: Sequence[Line]) -> None:
        """The call is up: open the media stream to the relay and let the person talk."""
        call.answered = True
        if call.amd:
            self._spawn(self._detect(call))
        if self.handset is None:
            return  # nobody on the phone: the test plays Telnyx's side of the socket itself
        if call.stream_url:
            try:
                call.report = await self._stream(call, lines)
            except Exception as exc:  # a test reads it: the stream's failure, not a hang
                call.error = repr(exc)
        if call.alive:
            await self._hang_up(call, "normal_clearing", "caller")

    async def _stream(self, call: FakeCall, lines: Sequence[Line]) -> CallReport:
        assert self.handset is not None and call.stream_url is not None
        audio = await self.handset.prepare(lines)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(self._rewrite(call.stream_url), autoping=True)
            call.ws = ws
            stream_id = str(uuid.uuid4())
            line = TelnyxLine(ws, stream_id, call.call_control_id)
            await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
            start = {
                "user_id": "fake-user",
                "call_control_id": call.call_control_id,
                "client_state": call.client_state,
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            }
            await ws.send_str(
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": "1",
                        "start": start,
                        "stream_id": stream_id,
                    }
                )
            )
            return await self.handset.talk(line, audio, call.call_control_id)

    async def _hang_up(self, call: FakeCall, cause: str, source: str) -> None:
        if not call.alive:
            return
        call.alive = False
        call.hangup_cause = call.hangup_cause or cause
        if call.ws is not None and not call.ws.closed:
            with contextlib.suppress(Exception):
                await call.ws.close()
        try:
            await self._call_event(call, "call.hangup", hangup_cause=cause, hangup_source=source)
        finally:
            call.done.set()

    async def text(
        self, account: FakeTelnyxAccount, from_number: str, to_number: str, text: str
    ) -> int:
        """A phone texts ``to_number``: Telnyx tells the messaging profile's webhook."""
        assert account.message_webhook, "the relay has not set the profile's webhook"
        payload = {
            "id": str(uuid.uuid4()),
            "record_type": "message",
            "direction": "inbound",
            "type": "SMS",
            "from": {"phone_number": from_number, "carrier": "T-Mobile", "line_type": "Wireless"},
            "to": [{"phone_number": to_number, "status": "webhook_delivered"}],
            "text": text,
            "media": [],
            "messaging_profile_id": account.messaging_profile_id,
            "received_at": now_iso(),
        }
        return await self.post_webhook(
            account, account.message_webhook, "message.received", payload
        )

    async def _delivery(self, account: FakeTelnyxAccount, url: str, sent: dict[str, Any]) -> None:
        to = sent["to"][0]["phone_number"]
        failing = to in self.undeliverable
        steps = [("message.sent", "sent")]
        steps.append(("message.finalized", "delivery_failed" if failing else "delivered"))
        for event_type, status in steps:
            payload = {**sent, "to": [{**sent["to"][0], "status": status}]}
            if status == "delivery_failed":
                payload["errors"] = [{"code": "40300", "title": "Blocked as spam"}]
            await self.post_webhook(account, url, event_type, payload)
