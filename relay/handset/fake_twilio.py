"""A stand-in for Twilio's REST API that speaks its wire format, for tests and for trying the
relay's Twilio side without Twilio (``RELAY_TWILIO_API_BASE_URL`` points the relay at it).

Every request needs HTTP Basic auth with an account's SID and auth token (else 401, code
20003), for that account's own path. It holds several accounts (``add_account``), each with
the numbers it owns (``None``: any number asked about, which suits tests that are not about
ownership):

``GET  /2010-04-01/Accounts/{AccountSid}.json``      the Account resource
``GET  /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json?PhoneNumber=+1...``
                                                     the account's numbers with that value
``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
                                                     send a text
``.../AvailablePhoneNumbers/...``, ``.../IncomingPhoneNumbers...``
                                                     search, buy, configure, release numbers:
                                                     :mod:`relay.handset.fake_twilio_numbers`
``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``, ``GET|POST .../Calls/{CallSid}.json``
                                                     place, read, cancel or hang up a call:
                                                     :mod:`relay.handset.fake_twilio_voice`

A text is a form body (``To``, ``From``, ``Body``, ``StatusCallback``), answered 201 with
Twilio's Message resource as JSON, or Twilio's error JSON (a To in ``invalid`` gets 400 code
21211); ``down`` answers every request 503. Like Twilio, it then reports delivery
to ``StatusCallback`` (``sent``, then ``delivered``, or ``failed`` with an ErrorCode for a To
in ``undeliverable``), form-encoded and signed with X-Twilio-Signature (the sending
account's token) over the callback URL; ``deliver_to`` rewrites the callback's origin to
where the relay under test listens, as a reverse proxy in front of it would (for callbacks
and for the media websockets of calls alike).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from relay.handset.fake_twilio_numbers import FakeTwilioNumbers
from relay.handset.fake_twilio_voice import FakeTwilioVoice

API_VERSION = "2010-04-01"
AUTHENTICATE = {
    "code": 20003,
    "detail": "Your AccountSid or AuthToken was incorrect.",
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class FakeAccount:
    sid: str
    auth_token: str
    numbers: set[str] | None = None  # None: owns whatever number it is asked about
    status: str = "active"


@dataclass
class FakeTwilio:
    """``account_sid`` / ``auth_token``: the first account (it owns any number unless
    ``numbers`` says otherwise). ``down``: every request answers 503, as an outage would."""

    account_sid: str
    auth_token: str
    numbers: set[str] | None = None
    down: bool = False
    stall_seconds: float = 0.0  # every request waits this long first, as a slow Twilio would
    accounts: dict[str, FakeAccount] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    deliver_to: tuple[str, str] | None = None  # (public origin, real origin)
    send_callbacks: bool = True
    invalid: set[str] = field(default_factory=set)
    undeliverable: set[str] = field(default_factory=set)
    messages: list[dict[str, str]] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)  # the AccountSid of each of ``messages``
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    voice: FakeTwilioVoice = field(init=False)
    phone_numbers: FakeTwilioNumbers = field(init=False)

    def __post_init__(self) -> None:
        self.add_account(self.account_sid, self.auth_token, self.numbers)
        self.voice = FakeTwilioVoice(self)
        self.phone_numbers = FakeTwilioNumbers(lambda sid: self.accounts[sid].numbers)

    def add_account(
        self, sid: str, auth_token: str, numbers: set[str] | None = None
    ) -> FakeAccount:
        account = FakeAccount(sid, auth_token, numbers)
        self.accounts[sid] = account
        return account

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        base = "/2010-04-01/Accounts/{sid}"
        app.router.add_get(base + ".json", self.fetch_account)
        app.router.add_get(base + "/IncomingPhoneNumbers.json", self.list_numbers)
        app.router.add_post(base + "/Messages.json", self.create_message)
        self.voice.install(app, base)
        self.phone_numbers.install(app, base)
        return app

    def local(self, url: str) -> str:
        """Where ``url`` (a callback or a media websocket at the relay's public URL) really
        is: ``deliver_to`` rewrites its origin, as a reverse proxy in front of the relay
        would; ``wss`` becomes ``ws`` along with ``https``."""
        if not self.deliver_to:
            return url
        public, real = self.deliver_to
        for secure, plain in (("https://", "http://"), ("wss://", "ws://")):
            origin = public.replace("https://", secure, 1).replace("http://", plain, 1)
            if url.startswith(origin):
                target = real.replace("https://", secure, 1).replace("http://", plain, 1)
                return target + url[len(origin) :]
        return url

    @asynccontextmanager
    async def signed_post(
        self, session: aiohttp.ClientSession, url: str, params: dict[str, str], account_sid: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a form to ``url`` signed as Twilio signs: the account's auth token over the
        URL as given and the form's fields."""
        token = self.accounts[account_sid].auth_token
        signature = RequestValidator(token).compute_signature(url, params)
        async with session.post(
            self.local(url), data=params, headers={"X-Twilio-Signature": signature}
        ) as resp:
            yield resp

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.stall_seconds:
            await asyncio.sleep(self.stall_seconds)
        if self.down:
            body = {"code": 20500, "message": "Internal Server Error", "status": 503}
            return web.json_response(body, status=503)
        if self._account(request) is None:
            return web.json_response(AUTHENTICATE, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _account(self, request: web.Request) -> FakeAccount | None:
        """The account the Basic credentials open, if they are for the path's account."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        account = self.accounts.get(user)
        if account is None or account.auth_token != password:
            return None
        return account if request.match_info.get("sid") == user else None

    async def fetch_account(self, request: web.Request) -> web.Response:
        account = self.accounts[request.match_info["sid"]]
        uri = f"/{API_VERSION}/Accounts/{account.sid}"
        now = format_datetime(utcnow())
        return web.json_response(
            {
                "auth_token": account.auth_token,
                "date_created": now,
                "date_updated": now,
                "friendly_name": f"Account {account.sid[-4:]}",
                "owner_account_sid": account.sid,
                "sid": account.sid,
                "status": account.status,
                "subresource_uris": {"incoming_phone_numbers": f"{uri}/IncomingPhoneNumbers.json"},
                "type": "Full",
                "uri": f"{uri}.json",
            }
        )

    async def list_numbers(self, request: web.Request) -> web.Response:
        account = self.accounts[request.match_info["sid"]]
        wanted = request.query.get("PhoneNumber", "")
        owned = account.numbers is None or wanted in account.numbers
        uri = f"/{API_VERSION}/Accounts/{account.sid}/IncomingPhoneNumbers.json"
        items = []
        if wanted and owned:
            items.append(self.phone_numbers.known(account.sid, wanted).resource())
        return web.json_response(
            {
                "end": max(len(items) - 1, 0),
                "first_page_uri": f"{uri}?PhoneNumber={wanted}&PageSize=50&Page=0",
                "incoming_phone_numbers": items,
                "next_page_uri": None,
                "page": 0,
                "page_size": 50,
                "previous_page_uri": None,
                "start": 0,
                "uri": f"{uri}?PhoneNumber={wanted}&PageSize=50&Page=0",
            }
        )

    async def create_message(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        form = {k: str(v) for k, v in (await request.post()).items()}
        to = form.get("To", "")
        if to in self.invalid or not to:
            return web.json_response(
                {
                    "code": 21211,
                    "message": f"The 'To' number {to} is not a valid phone number.",
                    "more_info": "https://www.twilio.com/docs/errors/21211",
                    "status": 400,
                },
                status=400,
            )
        self.messages.append(form)
        self.senders.append(sid)
        message_sid = "SM" + secrets.token_hex(16)
        now = format_datetime(utcnow())
        uri = f"/{API_VERSION}/Accounts/{sid}/Messages/{message_sid}"
        resource: dict[str, Any] = {
            "account_sid": sid,
            "api_version": API_VERSION,
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": message_sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": to,
            "uri": f"{uri}.json",
        }
        callback = form.get("StatusCallback")
        if callback and self.send_callbacks:
            task = asyncio.create_task(self._report(callback, message_sid, form, sid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(resource, status=201)

    async def _report(
        self, url: str, message_sid: str, form: dict[str, str], account_sid: str
    ) -> None:
        failing = form["To"] in self.undeliverable
        steps = [("sent", None), ("failed", "30003")] if failing else [("sent", None)]
        if not failing:
            steps.append(("delivered", None))
        async with aiohttp.ClientSession() as session:
            for status, error in steps:
                await self.report(
                    session, url, message_sid, form, status, error, account_sid=account_sid
                )

    async def report(
        self,
        session: aiohttp.ClientSession,
        url: str,
        message_sid: str,
        form: dict[str, str],
        status: str,
        error: str | None = None,
        *,
        account_sid: str | None = None,
    ) -> int:
        """Post one status callback, signed with the sending account's token."""
        sid = account_sid or self.account_sid
        params = {
            "AccountSid": sid,
            "ApiVersion": API_VERSION,
            "From": form["From"],
            "To": form["To"],
            "MessageSid": message_sid,
            "SmsSid": message_sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if error:
            params["ErrorCode"] = error
        async with self.signed_post(session, url, params, sid) as resp:
            self.callbacks.append((status, params, resp.status))
            return resp.status

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.voice.settle()


def main(argv: list[str] | None = None) -> None:
    """Serve the fake on 127.0.0.1 (``python -m relay.handset.fake_twilio --port 18999``)."""
    parser = argparse.ArgumentParser(
        prog="python -m relay.handset.fake_twilio",
        description="A fake of Twilio's REST API; point RELAY_TWILIO_API_BASE_URL at it.",
    )
    parser.add_argument("--port", type=int, default=18999)
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="SID:TOKEN",
        help="an account it holds (repeat); it owns any number asked about",
    )
    args = parser.parse_args(argv)
    accounts = [tuple(a.split(":", 1)) for a in args.account]
    first = accounts[0] if accounts else ("AC" + "0" * 32, secrets.token_hex(16))
    fake = FakeTwilio(first[0], first[1])
    for sid, token in accounts[1:]:
        fake.add_account(sid, token)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
