"""A stand-in for Twilio's REST API that speaks its wire format (we cannot reach Twilio).

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: HTTP Basic auth with the account
SID and auth token, a form body (``To``, ``From``, ``Body``, ``StatusCallback``), a 201 with
Twilio's Message resource as JSON, or Twilio's error JSON (401 code 20003 for bad
credentials; a To in ``invalid`` gets 400 code 21211). Like Twilio, it then reports delivery
to ``StatusCallback`` (``sent``, then ``delivered``, or ``failed`` with an ErrorCode for a To
in ``undeliverable``), form-encoded and signed with X-Twilio-Signature over the callback
URL; ``deliver_to`` rewrites the callback's origin to where the relay under test listens,
as a reverse proxy in front of it would.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from relay.store.models import utcnow

API_VERSION = "2010-04-01"


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str
    deliver_to: tuple[str, str] | None = None  # (public origin, real origin)
    send_callbacks: bool = True
    invalid: set[str] = field(default_factory=set)
    undeliverable: set[str] = field(default_factory=set)
    messages: list[dict[str, str]] = field(default_factory=list)
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create_message)
        return app

    def _authorized(self, request: web.Request, sid: str) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return sid == self.account_sid and user == self.account_sid and password == self.auth_token

    async def create_message(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if not self._authorized(request, sid):
            return web.json_response(
                {
                    "code": 20003,
                    "detail": "Your AccountSid or AuthToken was incorrect.",
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                status=401,
            )
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
            task = asyncio.create_task(self._report(callback, message_sid, form))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(resource, status=201)

    async def _report(self, url: str, message_sid: str, form: dict[str, str]) -> None:
        failing = form["To"] in self.undeliverable
        steps = [("sent", None), ("failed", "30003")] if failing else [("sent", None)]
        if not failing:
            steps.append(("delivered", None))
        async with aiohttp.ClientSession() as session:
            for status, error in steps:
                await self.report(session, url, message_sid, form, status, error)

    async def report(
        self,
        session: aiohttp.ClientSession,
        url: str,
        message_sid: str,
        form: dict[str, str],
        status: str,
        error: str | None = None,
    ) -> int:
        params = {
            "AccountSid": self.account_sid,
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
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        target = url
        if self.deliver_to and url.startswith(self.deliver_to[0]):
            target = self.deliver_to[1] + url[len(self.deliver_to[0]) :]
        async with session.post(
            target, data=params, headers={"X-Twilio-Signature": signature}
        ) as resp:
            self.callbacks.append((status, params, resp.status))
            return resp.status

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
