"""The voice half of the fake Twilio (:mod:`relay.handset.fake_twilio`): it places the calls
the relay asks for, as Twilio would, and a simulated handset answers them.

``POST /2010-04-01/Accounts/{Sid}/Calls.json`` (form: ``To``, ``From``, ``Twiml`` or ``Url``,
``Timeout``, ``StatusCallback``, ``StatusCallbackEvent`` repeated) answers 201 with Twilio's
Call resource (status ``queued``), then the call runs:

1. ``initiated``, then ``ringing``: a status callback for each event asked for;
2. what the callee does, by its number (:class:`Callee`, the documented rule):
   a To in ``busy`` answers busy, in ``failing`` fails (SIP 503), in ``unanswered`` rings
   until ``Timeout`` and ends ``no-answer``; any other To rings ``ring_seconds`` and answers;
3. answered: ``in-progress`` (the ``answered`` event), then the TwiML runs: for
   ``<Connect><Stream url>`` the fake opens that websocket to the relay and speaks Twilio's
   Media Streams protocol as the carrier, with :class:`relay.handset.SimHandset` as the
   callee (it hears the agent and says the callee's ``lines``), then asks the
   ``<Connect action>`` URL for what comes next (a ``<Dial>`` is recorded as a transfer);
4. ``completed`` (with the final ``CallStatus`` and ``CallDuration``).

Answering-machine detection: a call created with ``MachineDetection`` and ``AsyncAmd=true``
streams at once and, ``amd_seconds`` after the answer, POSTs the signed
``AsyncAmdStatusCallback``: ``AnsweredBy=machine_end_beep`` for a To in ``machines`` (with
``DetectMessageEnd``; ``machine_start`` with ``Enable``), ``human`` for any other.

``POST Calls/{CallSid}.json`` with ``Status=canceled`` ends a queued or ringing call
(``canceled``) and leaves an answered one alone; ``Status=completed`` hangs up an answered
call (its media socket closes) and, as the fake's choice, cancels one still ringing;
``Twiml`` replaces an answered call's TwiML (a ``<Dial>`` is recorded as a transfer).
Callbacks are form-encoded and signed with X-Twilio-Signature by the account's auth token,
over the exact callback URL (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from relay.handset.fake_twilio import FakeTwilio
    from relay.handset.voice import CallReport, Line

API_VERSION = "2010-04-01"
# What a status callback for each subscribable event carries as CallStatus (``completed``
# carries the call's final status).
EVENT_STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}
ENDED = ("completed", "busy", "no-answer", "failed", "canceled")


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


@dataclass
class Callee:
    """Who answers at a number: what they say once the agent has spoken (each line a turn,
    as :meth:`relay.handset.SimHandset.call` takes them)."""

    lines: list[Line] = field(default_factory=list)
    voice: str = "piper"
    listen: bool = True
    answer_silence_ms: int = 1200  # quiet that counts as "the agent has finished"


@dataclass
class FakeCall:
    sid: str
    account_sid: str
    form: dict[str, str]
    events: list[str]
    status: str = "queued"
    direction: str = "outbound-api"
    transfer_to: str | None = None
    report: CallReport | None = None
    answered_at: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    hangup: asyncio.Event = field(default_factory=asyncio.Event)
    callbacks: list[tuple[str, int]] = field(default_factory=list)  # (CallStatus, HTTP status)
    # The form of each ``POST Calls/{CallSid}.json`` the relay made, and whether the fake
    # asked the ``<Connect action>`` (it does not once the REST API took the call over).
    updates: list[dict[str, str]] = field(default_factory=list)
    action_asked: bool = False
    amd_callbacks: list[tuple[str, int]] = field(default_factory=list)  # (AnsweredBy, HTTP)
    # When the create request reached the fake, and each callback's round trip (perf_counter
    # seconds): what bench/twilio_dial.py measures the relay by.
    arrived_at: float = field(default_factory=time.perf_counter)
    callback_seconds: list[float] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": self.direction,
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": self.form.get("From"),
            "from_formatted": self.form.get("From"),
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "start_time": None,
            "status": self.status,
            "subresource_uris": {"events": f"{uri}/Events.json"},
            "to": self.form.get("To"),
            "to_formatted": self.form.get("To"),
            "uri": f"{uri}.json",
        }


class FakeTwilioVoice:
    """The Calls resource of :class:`~relay.handset.fake_twilio.FakeTwilio`."""

    def __init__(self, cloud: FakeTwilio) -> None:
        self.cloud = cloud
        self.calls: dict[str, FakeCall] = {}
        self.callees: dict[str, Callee] = {}
        self.busy: set[str] = set()
        self.failing: set[str] = set()
        self.unanswered: set[str] = set()
        self.machines: set[str] = set()  # answered by an answering machine
        self.amd_seconds = 0.3
        self.ring_seconds = 0.2
        # Answer every Calls update with this HTTP error (Twilio's 5xx), when set.
        self.update_error: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._placed = asyncio.Event()  # set whenever a call is placed

    def install(self, app: web.Application, base: str) -> None:
        app.router.add_post(base + "/Calls.json", self.create_call)
        app.router.add_post(base + "/Calls/{call_sid}.json", self.update_call)
        app.router.add_get(base + "/Calls/{call_sid}.json", self.fetch_call)

    async def create_call(self, request: web.Request) -> web.Response:
        arrived_at = time.perf_counter()
        sid = request.match_info["sid"]
        posted = await request.post()
        form = {k: str(v) for k, v in posted.items()}
        if not form.get("To"):
            return _error(400, 21201, "No 'To' number is specified")
        if not form.get("From"):
            return _error(400, 21213, "No 'From' number is specified")
        if not (form.get("Twiml") or form.get("Url") or form.get("ApplicationSid")):
            return _error(400, 21205, "Url parameter is required.")
        events = [str(v) for v in posted.getall("StatusCallbackEvent", [])]
        call = FakeCall("CA" + secrets.token_hex(16), sid, form, events, arrived_at=arrived_at)
        self.calls[call.sid] = call
        self._placed.set()
        self._spawn(self._run(call))
        return web.json_response(call.resource(), status=201)

    async def fetch_call(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["call_sid"])
        if call is None or call.account_sid != request.match_info["sid"]:
            return _error(404, 20404, "The requested resource was not found")
        return web.json_response(call.resource())

    async def update_call(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["call_sid"])
        if call is None or call.account_sid != request.match_info["sid"]:
            return _error(404, 20404, "The requested resource was not found")
        form = {k: str(v) for k, v in (await request.post()).items()}
        call.updates.append(form)
        if self.update_error is not None:
            return _error(self.update_error, 20500, "An internal server error has occurred")
        wanted = form.get("Status", "")
        if wanted and wanted not in ("canceled", "completed"):
            return _error(400, 21218, f"Invalid value for Status: {wanted}")
        if call.status in ENDED:
            return web.json_response(call.resource())
        if call.status == "in-progress":
            if wanted == "completed":
                call.hangup.set()
            elif form.get("Twiml"):
                call.transfer_to = _dial_of(form["Twiml"]) or call.transfer_to
                call.hangup.set()
        elif wanted:  # queued or ringing: both end it unanswered
            call.status = "canceled"
            call.hangup.set()
        return web.json_response(call.resource())

    async def call_to(self, to: str) -> FakeCall:
        """The call placed to ``to``, once the relay has asked for one."""
        while (found := next((c for c in self.calls.values() if c.form["To"] == to), None)) is None:
            self._placed.clear()
            await self._placed.wait()
        return found

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, call: FakeCall) -> None:
        async with aiohttp.ClientSession() as http:
            try:
                await self._place(http, call)
            finally:
                if call.status not in ENDED:
                    call.status = "completed"
                await self._callback(http, call, "completed")
                call.ended.set()

    async def _place(self, http: aiohttp.ClientSession, call: FakeCall) -> None:
        to = call.form["To"]
        await asyncio.sleep(0)  # the 201 goes out first, as Twilio's does
        call.status = "initiated"
        await self._callback(http, call, "initiated")
        if to in self.failing:
            call.status = "failed"
            return
        call.status = "ringing"
        await self._callback(http, call, "ringing")
        if to in self.busy:
            call.status = "busy"
            return
        ring = float(call.form.get("Timeout") or 60) if to in self.unanswered else self.ring_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.hangup.wait(), ring)
        if call.status == "canceled":
            return
        if to in self.unanswered:
            call.status = "no-answer"
            return
        call.status = "in-progress"
        call.answered_at = time.monotonic()
        await self._callback(http, call, "answered")
        if call.form.get("MachineDetection") and call.form.get("AsyncAmd") == "true":
            self._spawn(self._detect(call))
        await self._connect(http, call)

    async def _detect(self, call: FakeCall) -> None:
        """The asynchronous AMD verdict, once the greeting (or a human's hello) is over."""
        await asyncio.sleep(self.amd_seconds)
        url = call.form.get("AsyncAmdStatusCallback")
        if call.status != "in-progress" or not url:
            return
        if call.form["To"] not in self.machines:
            answered_by = "human"
        elif call.form["MachineDetection"] == "DetectMessageEnd":
            answered_by = "machine_end_beep"
        else:
            answered_by = "machine_start"
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(int(self.amd_seconds * 1000)),
        }
        async with aiohttp.ClientSession() as http:
            try:
                async with self.cloud.signed_post(http, url, params, call.account_sid) as resp:
                    call.amd_callbacks.append((answered_by, resp.status))
            except aiohttp.ClientError:
                call.amd_callbacks.append((answered_by, 0))

    async def call_in(
        self,
        http: aiohttp.ClientSession,
        relay_url: str,
        to: str,
        from_number: str,
        caller: Callee,
    ) -> FakeCall:
        """A call to one of the relay's numbers, as Twilio places it: the signed voice
        webhook (``relay_url`` + ``/carriers/twilio/voice``), then the TwiML it answers
        runs with ``caller`` on the line (its report in :attr:`FakeCall.report`; a call the
        relay refused has none, and its ``<Say>`` text in ``refused``)."""
        account = self.cloud.account_sid
        form = {"To": to, "From": from_number}
        sid = "CA" + secrets.token_hex(16)
        call = FakeCall(sid, account, form, [], status="ringing", direction="inbound")
        self.calls[call.sid] = call
        params = self._params(call, "ringing")
        url = f"{relay_url.rstrip('/')}/carriers/twilio/voice"
        async with self.cloud.signed_post(http, url, params, account) as resp:
            if resp.status != 200:
                raise FakeCallRefused(f"the relay answered HTTP {resp.status}: {await resp.text()}")
            call.form["Twiml"] = await resp.text()
        if _stream_of(call.form["Twiml"])[0] is None:
            call.status = "completed"
            raise FakeCallRefused(_said(call.form["Twiml"]) or "the relay hung up")
        call.status = "in-progress"
        call.answered_at = time.monotonic()
        await self._connect(http, call, caller)
        call.status = "completed"
        return call

    async def _connect(
        self, http: aiohttp.ClientSession, call: FakeCall, on_line: Callee | None = None
    ) -> None:
        """Run the TwiML: stream to the relay, then ask the ``<Connect action>``."""
        stream_url, params, action = _stream_of(call.form.get("Twiml", ""))
        if stream_url is None:
            return
        callee = on_line or self.callees.get(call.form["To"], Callee())
        from relay.handset.voice import SimHandset  # the voice engine: seconds, on first use

        handset = SimHandset(
            "",
            "",
            voice=callee.voice,
            listen=callee.listen,
            answer_silence_ms=callee.answer_silence_ms,
        )
        start = {
            "streamSid": "MZ" + secrets.token_hex(16),
            "accountSid": call.account_sid,
            "callSid": call.sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        talk = asyncio.ensure_future(
            handset.answer(http, self.cloud.local(stream_url), start, callee.lines)
        )
        hung_up = asyncio.ensure_future(call.hangup.wait())
        await asyncio.wait([talk, hung_up], return_when=asyncio.FIRST_COMPLETED)
        if not talk.done():
            talk.cancel()  # the REST API hung up: the socket closes under the relay
        hung_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            call.report = await talk
        if action and not call.hangup.is_set():  # hung up through the API: no more TwiML
            call.action_asked = True
            twiml = await self._ask(http, call, action)
            call.transfer_to = _dial_of(twiml)

    async def _ask(self, http: aiohttp.ClientSession, call: FakeCall, url: str) -> str:
        params = self._params(call, call.status)
        try:
            async with self.cloud.signed_post(http, url, params, call.account_sid) as resp:
                return await resp.text()
        except aiohttp.ClientError:
            return ""  # Twilio hangs up when the action cannot be fetched

    def _params(self, call: FakeCall, status: str) -> dict[str, str]:
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Direction": call.direction,
            "From": call.form["From"],
            "To": call.form["To"],
        }

    async def _callback(self, http: aiohttp.ClientSession, call: FakeCall, event: str) -> None:
        url = call.form.get("StatusCallback")
        # Twilio sends ``completed`` unasked; the other events only when subscribed.
        if not url or (event != "completed" and event not in call.events):
            return
        status = EVENT_STATUS.get(event, call.status)
        params = self._params(call, status)
        params.update(
            CallbackSource="call-progress-events",
            SequenceNumber=str(len(call.callbacks)),
            Timestamp=format_datetime(datetime.now(UTC)),
        )
        if event == "completed":
            answered = call.answered_at
            params["CallDuration"] = str(int(time.monotonic() - answered) if answered else 0)
            if status == "failed":
                params["SipResponseCode"] = "503"
        began = time.perf_counter()
        try:
            async with self.cloud.signed_post(http, url, params, call.account_sid) as resp:
                call.callbacks.append((status, resp.status))
                call.callback_seconds.append(time.perf_counter() - began)
        except aiohttp.ClientError:  # as Twilio: the failure is the webhook owner's to see
            call.callbacks.append((status, 0))


def _stream_of(twiml: str) -> tuple[str | None, dict[str, str], str | None]:
    """``<Connect action><Stream url>`` with its ``<Parameter>`` s, if the TwiML has one."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None, {}, None
    connect = root.find("Connect")
    stream = connect.find("Stream") if connect is not None else None
    if connect is None or stream is None:
        return None, {}, None
    params = {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}
    return stream.get("url"), params, connect.get("action")


class FakeCallRefused(Exception):
    """The relay did not stream the call (it said why, or answered an HTTP error)."""


def _said(twiml: str) -> str:
    try:
        return " ".join((say.text or "").strip() for say in ET.fromstring(twiml).iter("Say"))
    except ET.ParseError:
        return ""


def _dial_of(twiml: str) -> str | None:
    """The number (or SIP URI) a ``<Dial>`` in the TwiML rings, if any."""
    try:
        dial = ET.fromstring(twiml).find("Dial")
    except ET.ParseError:
        return None
    if dial is None:
        return None
    sip = dial.find("Sip")
    target = sip.text if sip is not None else dial.text
    return (target or "").strip() or None


__all__ = ["Callee", "FakeCall", "FakeCallRefused", "FakeTwilioVoice"]
