"""A stand-in for Plivo that speaks its wire protocols, for tests and for trying the relay's
Plivo side without Plivo (``RELAY_PLIVO_API_BASE_URL`` points the relay at its REST API).

The REST API, as the official SDK calls it (``/v1/Account/{auth_id}/.../`` with a trailing
slash, HTTP Basic with the auth id and auth token, JSON bodies):

``GET    /v1/Account/{auth_id}/``                   the account
``GET    /v1/Account/{auth_id}/Number/{number}/``   a number the account rents (else 404)
``POST   /v1/Account/{auth_id}/Message/``           send a text: 202 with ``message_uuid``;
                                                   delivery reports follow to its ``url``
``POST   /v1/Account/{auth_id}/Call/``              place a call: 201 with ``request_uuid``;
                                                   it rings (``ring_url``), then is busy,
                                                   unanswered or answered by the callee's
                                                   number (``busy``, ``unanswered``); answered,
                                                   Plivo asks ``answer_url`` and streams the
                                                   callee; ``hangup_url`` hears the end;
                                                   with ``machine_detection_url``, the verdict
                                                   (``Machine``: true for ``machines``)
``GET    /v1/Account/{auth_id}/Application/``       the account's applications
``POST   /v1/Account/{auth_id}/Application/``       make one (its answer and message URLs)
``POST   /v1/Account/{auth_id}/Number/{number}/``   point a rented number at an application
``DELETE /v1/Account/{auth_id}/Request/{uuid}/``    cancel a call still ringing (else 404)
``DELETE /v1/Account/{auth_id}/Call/{uuid}/``       hang up a live call (else 404)
``GET PhoneNumber/``, ``POST PhoneNumber/{number}/``, ``DELETE Number/{number}/``: search,
rent, give back (:mod:`relay.handset.fake_plivo_numbers`)
``POST   /v1/Account/{auth_id}/Call/{uuid}/``       transfer a live call (``legs=aleg``): the
                                                   fake asks ``aleg_url`` (signed), keeps its
                                                   XML and ends the stream; 202
``POST   /v1/Account/{auth_id}/Call/{uuid}/DTMF/``  play ``digits`` to the caller; 202

Wrong credentials, or another account's path, answer 401; ``down`` answers every request 503.

Plivo's side of a call and a text, signed with the account's auth token by Plivo's V3 scheme
(:func:`v3_signature`, written from Plivo's documentation, independent of the SDK the relay
checks with):

* :meth:`FakePlivo.incoming_call` POSTs the call to the number's answer URL, reads the XML,
  opens the ``<Stream>`` websocket and speaks Plivo's side of the audio stream protocol
  (``start``, paced ``media``, ``dtmf``; it plays ``playAudio``, answers ``checkpoint`` with
  ``playedStream`` and ``clearAudio`` with ``clearedAudio``); when the stream ends it follows
  the ``<Redirect>`` and records what the relay answered (``<Hangup/>``, ``<Dial>``).
* :meth:`FakePlivo.incoming_text` POSTs an inbound message to the number's message URL.

``deliver_to`` rewrites a callback's origin to where the relay under test listens, as a
reverse proxy in front of it would; the signature is over the URL as the relay published it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web

from relay.handset.fake_plivo_control import PlivoLiveControl
from relay.handset.fake_plivo_numbers import FakePlivoNumbers
from relay.handset.plivo_line import PlivoHandset, PlivoMediaLine
from relay.transports import plivo_protocol as pp

UNAUTHORIZED = {"error": "Authentication credentials invalid."}


def v3_signature(url: str, params: dict[str, str], auth_token: str, nonce: str) -> str:
    """Plivo's X-Plivo-Signature-V3 of a POST: HMAC-SHA256 with the auth token over the URL
    (its query sorted), a ``.`` when both a query and a form exist, the form's fields sorted
    and joined as ``keyvalue``, then ``.`` and the nonce; base64.
    https://www.plivo.com/docs/voice/concepts/signature-validation"""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query, True)))
    if query or params:
        base += "?" + query
    if query and params:
        base += "."
    base += "".join(k + params[k] for k in sorted(params))
    mac = hmac.new(auth_token.encode(), f"{base}.{nonce}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class FakePlivoAccount:
    auth_id: str
    auth_token: str
    numbers: set[str] | None = None  # E.164; None: rents whatever number it is asked about
    applications: dict[str, dict[str, str]] = field(default_factory=dict)  # by app_id
    number_apps: dict[str, str] = field(default_factory=dict)  # E.164 -> app_id


ACCOUNT: web.RequestKey[FakePlivoAccount] = web.RequestKey("account", FakePlivoAccount)


@dataclass
class StreamedCall:
    """One call Plivo carried to the relay: what the relay's XML said, and how it ended."""

    call_uuid: str
    answer: str  # the answer XML (or the error body)
    status: int = 0  # the answer's HTTP status
    stream_url: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    redirect: str | None = None
    after: str | None = None  # the XML the redirect was answered with
    checkpoints: list[str] = field(default_factory=list)
    clears: int = 0
    transferred: bool = False  # the Call API moved it to another document (``after``)
    hung_up: bool = False  # the Call API ended it: no more XML runs
    digits: list[str] = field(default_factory=list)  # sent through the Call API's DTMF


@dataclass
class FakePlivo:
    """``auth_id`` / ``auth_token``: the first account. ``down``: every REST request answers
    503, as an outage would."""

    auth_id: str
    auth_token: str
    numbers: set[str] | None = None
    down: bool = False
    accounts: dict[str, FakePlivoAccount] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    deliver_to: tuple[str, str] | None = None  # (public origin, real origin)
    undeliverable: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)  # JSON bodies of Message/
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    calls: list[StreamedCall] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)  # callees (E.164) that answer busy
    unanswered: set[str] = field(default_factory=set)  # callees that never pick up
    call_error: int | None = None  # answer POST Call/ with this status instead
    call_delay: float = 0.0  # seconds before POST Call/ is answered
    control_error: int | None = None  # answer a live call's transfer, DTMF, hang-up with it
    machines: set[str] = field(default_factory=set)  # callees an answering machine answers
    amd_seconds: float = 0.3  # how long the detection takes after the answer
    placed: list[dict[str, Any]] = field(default_factory=list)  # JSON bodies of Call/
    callees: dict[str, PlivoMediaLine] = field(default_factory=dict)  # by request_uuid
    answered: dict[str, asyncio.Event] = field(default_factory=dict)  # by request_uuid
    phone_numbers: FakePlivoNumbers = field(default_factory=FakePlivoNumbers)
    _ringing: dict[str, asyncio.Event] = field(default_factory=dict)  # set: cancelled
    live: dict[str, PlivoMediaLine] = field(default_factory=dict)  # by CallUUID
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.add_account(self.auth_id, self.auth_token, self.numbers)

    def add_account(
        self, auth_id: str, auth_token: str, numbers: set[str] | None = None
    ) -> FakePlivoAccount:
        account = FakePlivoAccount(auth_id, auth_token, numbers)
        self.accounts[auth_id] = account
        return account

    # --- the REST API -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        base = "/v1/Account/{auth_id}"
        app.router.add_get(base + "/", self._account)
        app.router.add_get(base + "/Number/{number}/", self._number)
        app.router.add_post(base + "/Number/{number}/", self._point_number)
        numbers = self.phone_numbers
        numbers.account_of = _account_of
        app.router.add_delete(base + "/Number/{number}/", numbers.unrent)
        app.router.add_get(base + "/PhoneNumber/", numbers.search)
        app.router.add_post(base + "/PhoneNumber/{number}/", numbers.buy)
        app.router.add_get(base + "/Application/", self._applications)
        app.router.add_post(base + "/Application/", self._new_application)
        app.router.add_post(base + "/Message/", self._message)
        app.router.add_post(base + "/Call/", self._call)
        app.router.add_delete(base + "/Request/{uuid}/", self._cancel)
        control = PlivoLiveControl(self)
        app.router.add_delete(base + "/Call/{uuid}/", control.hang_up)
        app.router.add_post(base + "/Call/{uuid}/", control.transfer)
        app.router.add_post(base + "/Call/{uuid}/DTMF/", control.dtmf)
        app.on_cleanup.append(self._drain)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.down:
            return web.json_response({"error": "service unavailable"}, status=503)
        account = self.accounts.get(request.match_info.get("auth_id", ""))
        if account is None or request.headers.get("Authorization") != _basic(account):
            return web.json_response(UNAUTHORIZED, status=401)
        request[ACCOUNT] = account
        response: web.StreamResponse = await handler(request)
        return response

    async def _account(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        return web.json_response(
            {
                "account_type": "standard",
                "api_id": str(uuid.uuid4()),
                "auth_id": account.auth_id,
                "auto_recharge": False,
                "billing_mode": "prepaid",
                "cash_credits": "10.00000",
                "name": "Fake Plivo account",
                "resource_uri": f"/v1/Account/{account.auth_id}/",
                "timezone": "UTC",
            }
        )

    async def _number(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        number = request.match_info["number"]
        if not number.isdigit() or (
            account.numbers is not None and "+" + number not in account.numbers
        ):
            return web.json_response(
                {"api_id": str(uuid.uuid4()), "error": "not found"}, status=404
            )
        return web.json_response(
            {
                "api_id": str(uuid.uuid4()),
                "number": number,
                "number_type": "local",
                "alias": None,
                "carrier": "Plivo",
                "monthly_rental_rate": "0.50000",
                "resource_uri": f"/v1/Account/{account.auth_id}/Number/{number}/",
                "sms_enabled": True,
                "voice_enabled": True,
            }
        )

    async def _applications(self, request: web.Request) -> web.Response:
        apps = list(request[ACCOUNT].applications.values())
        meta = {"limit": 20, "offset": 0, "total_count": len(apps), "next": None}
        return web.json_response({"api_id": str(uuid.uuid4()), "meta": meta, "objects": apps})

    async def _new_application(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await request.json()
        if not isinstance(body, dict) or not body.get("app_name"):
            return web.json_response({"error": "app_name is required"}, status=400)
        app_id = str(secrets.randbelow(10**20))
        account.applications[app_id] = {
            "app_id": app_id,
            "app_name": str(body["app_name"]),
            "answer_url": str(body.get("answer_url", "")),
            "message_url": str(body.get("message_url", "")),
        }
        created = {"api_id": str(uuid.uuid4()), "app_id": app_id, "message": "created"}
        return web.json_response(created, status=201)

    async def _point_number(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        number = "+" + request.match_info["number"]
        body = await request.json()
        rented = account.numbers is None or number in account.numbers
        app_id = str(body.get("app_id", "")) if isinstance(body, dict) else ""
        if not rented:
            return web.json_response({"error": "not found"}, status=404)
        if app_id not in account.applications:
            return web.json_response({"error": "invalid app_id"}, status=400)
        account.number_apps[number] = app_id
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "changed"}, status=202)

    async def _message(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict) or not body.get("src") or not body.get("dst"):
            return web.json_response({"error": "src and dst are required"}, status=400)
        if not str(body["dst"]).isdigit() or not body.get("text"):
            return web.json_response({"error": "invalid dst or empty text"}, status=400)
        message_uuid = str(uuid.uuid4())
        self.messages.append({**body, "message_uuid": message_uuid, "auth_id": account.auth_id})
        if body.get("url"):
            task = asyncio.create_task(self._report(account, body, message_uuid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {
                "api_id": str(uuid.uuid4()),
                "message": "message(s) queued",
                "message_uuid": [message_uuid],
            },
            status=202,
        )

    async def _report(self, account: FakePlivoAccount, body: dict[str, Any], uid: str) -> None:
        failed = "+" + str(body["dst"]) in self.undeliverable
        steps = [("sent", ""), ("undelivered", "200") if failed else ("delivered", "")]
        for status, error in steps:
            await asyncio.sleep(0.02)
            form = {
                "MessageUUID": uid,
                "Status": status,
                "From": str(body["src"]),
                "To": str(body["dst"]),
                "Units": "1",
                "MessageDirection": "outbound",
            }
            if error:
                form["ErrorCode"] = error
            try:
                status_code = await self.post(str(body["url"]), form, account)
            except aiohttp.ClientError:
                status_code = 0
            self.callbacks.append((str(body["url"]), form, status_code))

    async def _call(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        if self.call_delay:
            await asyncio.sleep(self.call_delay)
        if self.call_error is not None:
            return web.json_response({"error": "internal error"}, status=self.call_error)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        needed = ("from", "to", "answer_url")
        if not isinstance(body, dict) or not all(body.get(k) for k in needed):
            return web.json_response({"error": "from, to and answer_url are required"}, status=400)
        request_uuid = str(uuid.uuid4())
        self.placed.append({**body, "request_uuid": request_uuid, "auth_id": account.auth_id})
        self._ringing[request_uuid] = asyncio.Event()
        self.answered[request_uuid] = asyncio.Event()
        task = asyncio.create_task(self._place(account, body, request_uuid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {"api_id": str(uuid.uuid4()), "message": "call fired", "request_uuid": request_uuid},
            status=201,
        )

    async def _place(self, account: FakePlivoAccount, body: dict[str, Any], rid: str) -> None:
        call_uuid = str(uuid.uuid4())
        base = {
            "RequestUUID": rid,
            "CallUUID": call_uuid,
            "From": str(body["from"]),
            "To": str(body["to"]),
            "Direction": "outbound",
        }

        async def callback(url_key: str, **fields: str) -> None:
            if body.get(url_key):
                form = {**base, **fields}
                status = await self.post(str(body[url_key]), form, account)
                self.callbacks.append((str(body[url_key]), form, status))

        cancelled = self._ringing[rid]
        await callback("ring_url", CallStatus="ringing", Event="Ring")
        callee = "+" + str(body["to"])
        if callee in self.busy:
            self._ringing.pop(rid, None)
            await callback("hangup_url", CallStatus="busy", HangupCause="USER_BUSY", Event="Hangup")
            return
        ring = float(body.get("ring_timeout") or 120)
        if callee in self.unanswered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), ring)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), 0.05)
        self._ringing.pop(rid, None)
        if cancelled.is_set():
            cause = {"CallStatus": "cancel", "HangupCause": "ORIGINATOR_CANCEL"}
            await callback("hangup_url", **cause, Event="Hangup")
            return
        if callee in self.unanswered:
            cause = {"CallStatus": "no-answer", "HangupCause": "NO_ANSWER"}
            await callback("hangup_url", **cause, Event="Hangup")
            return
        async with aiohttp.ClientSession() as http:
            answer = {"CallStatus": "in-progress", "Event": "StartApp"}
            call = await self._answer(http, str(body["answer_url"]), {**base, **answer}, account)
            call.call_uuid = call_uuid
            if call.stream_url:
                line = await self.open_stream(http, call, account)
                self.callees[rid] = self.live[call_uuid] = line
                self.answered[rid].set()
                if body.get("machine_detection") and body.get("machine_detection_url"):
                    # Asynchronous detection: the verdict, while the call streams.
                    await asyncio.sleep(self.amd_seconds)
                    machine = "true" if callee in self.machines else "false"
                    await callback(
                        "machine_detection_url", Machine=machine, Event="MachineDetection"
                    )
                await line.receive()  # the callee hears the relay until the stream closes
                self.live.pop(call_uuid, None)
                await self.stream_ended(http, call, account)
        done = {"CallStatus": "completed", "HangupCause": "NORMAL_CLEARING"}
        await callback("hangup_url", **done, Event="Hangup")

    async def _answer(
        self,
        http: aiohttp.ClientSession,
        answer_url: str,
        form: dict[str, str],
        account: FakePlivoAccount,
    ) -> StreamedCall:
        call = StreamedCall(call_uuid=form["CallUUID"], answer="")
        call.status, call.answer = await self.post_for_text(answer_url, form, account, http=http)
        self.calls.append(call)
        if call.status == 200:
            _read_answer(call)
        return call

    async def _cancel(self, request: web.Request) -> web.Response:
        ringing = self._ringing.get(request.match_info["uuid"])
        if ringing is None:
            return web.json_response({"error": "not found"}, status=404)
        ringing.set()
        return web.Response(status=204)

    async def _drain(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- Plivo's requests to the relay -------------------------------------------------

    def _real(self, url: str) -> str:
        if self.deliver_to is None:
            return url
        public, real = self.deliver_to
        for a, b in ((public, real), (_ws(public), _ws(real))):
            if url.startswith(a):
                return b + url[len(a) :]
        return url

    def signed_headers(self, url: str, form: dict[str, str], auth_token: str) -> dict[str, str]:
        nonce = secrets.token_hex(10)
        return {
            "X-Plivo-Signature-V3": v3_signature(url, form, auth_token, nonce),
            "X-Plivo-Signature-V3-Nonce": nonce,
        }

    async def post(
        self,
        url: str,
        form: dict[str, str],
        account: FakePlivoAccount | None = None,
        *,
        http: aiohttp.ClientSession | None = None,
    ) -> int:
        status, _ = await self.post_for_text(url, form, account, http=http)
        return status

    async def post_for_text(
        self,
        url: str,
        form: dict[str, str],
        account: FakePlivoAccount | None = None,
        *,
        http: aiohttp.ClientSession | None = None,
    ) -> tuple[int, str]:
        """POST a form to the relay as Plivo does (signed over ``url``): (status, body)."""
        account = account or self.accounts[self.auth_id]
        headers = self.signed_headers(url, form, account.auth_token)
        own = http is None
        session = http or aiohttp.ClientSession()
        try:
            async with session.post(self._real(url), data=form, headers=headers) as resp:
                return resp.status, await resp.text()
        finally:
            if own:
                await session.close()

    async def incoming_text(
        self, message_url: str, from_: str, to: str, text: str, account: FakePlivoAccount | None
    ) -> int:
        form = {
            "From": from_.removeprefix("+"),
            "To": to.removeprefix("+"),
            "Text": text,
            "Type": "sms",
            "MessageUUID": str(uuid.uuid4()),
            "Units": "1",
            "TotalRate": "0.00000",
            "TotalAmount": "0.00000",
        }
        return await self.post(message_url, form, account)

    async def incoming_call(
        self,
        http: aiohttp.ClientSession,
        answer_url: str,
        from_: str,
        to: str,
        account: FakePlivoAccount | None = None,
    ) -> StreamedCall:
        """Plivo asks the answer URL what to do with a call: the XML, parsed."""
        call = StreamedCall(call_uuid=str(uuid.uuid4()), answer="")
        form = {
            "CallUUID": call.call_uuid,
            "From": from_.removeprefix("+"),
            "To": to.removeprefix("+"),
            "Direction": "inbound",
            "CallStatus": "ringing",
            "Event": "StartApp",
            "CallerName": from_,
        }
        call.status, call.answer = await self.post_for_text(answer_url, form, account, http=http)
        self.calls.append(call)
        if call.status == 200:
            _read_answer(call)
        return call

    async def open_stream(
        self, http: aiohttp.ClientSession, call: StreamedCall, account: FakePlivoAccount
    ) -> PlivoMediaLine:
        """Connect to the ``<Stream>`` URL and send ``start``, as Plivo does once answered."""
        assert call.stream_url, call.answer
        ws = await http.ws_connect(self._real(call.stream_url), autoping=True)
        line = PlivoMediaLine(ws, str(uuid.uuid4()))
        start = {
            "sequenceNumber": 0,
            "event": "start",
            "start": {
                "callId": call.call_uuid,
                "streamId": line.sid,
                "accountId": account.auth_id,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": pp.CONTENT_TYPE, "sampleRate": 8000},
            },
            "extra_headers": json.dumps(call.extra_headers),
        }
        await ws.send_str(json.dumps(start))
        self.live[call.call_uuid] = line
        return line

    async def stream_ended(
        self, http: aiohttp.ClientSession, call: StreamedCall, account: FakePlivoAccount
    ) -> None:
        """``keepCallAlive`` is over: follow the ``<Redirect>`` and keep its answer (unless
        the Call API hung up or transferred the call)."""
        self.live.pop(call.call_uuid, None)
        if call.redirect and not (call.transferred or call.hung_up):
            form = {"CallUUID": call.call_uuid, "CallStatus": "in-progress"}
            _, call.after = await self.post_for_text(call.redirect, form, account, http=http)


def _read_answer(call: StreamedCall) -> None:
    root = ET.fromstring(call.answer)
    stream = root.find("Stream")
    if stream is not None:
        call.stream_url = (stream.text or "").strip()
        pairs = (stream.get("extraHeaders") or "").split(",")
        call.extra_headers = dict(p.split("=", 1) for p in pairs if "=" in p)
    redirect = root.find("Redirect")
    call.redirect = (redirect.text or "").strip() if redirect is not None else None


def _ws(origin: str) -> str:
    return origin.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


def _account_of(request: web.Request) -> FakePlivoAccount:
    return request[ACCOUNT]


def _basic(account: FakePlivoAccount) -> str:
    raw = f"{account.auth_id}:{account.auth_token}".encode()
    return "Basic " + base64.b64encode(raw).decode()


__all__ = [
    "FakePlivo",
    "FakePlivoAccount",
    "PlivoHandset",
    "PlivoMediaLine",
    "StreamedCall",
    "v3_signature",
]
