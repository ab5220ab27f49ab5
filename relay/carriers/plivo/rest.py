"""Plivo's REST API, as the official SDK speaks it, on our own aiohttp session.

Every request is ``{base}/v1/Account/{auth_id}/{Resource}/...`` with a trailing slash, HTTP
Basic with the auth id and auth token, a JSON body for POST and query parameters for GET,
exactly as ``plivo.rest.client.Client.create_request`` builds them (the SDK itself is
synchronous and cannot be pointed at another host, so it is not used for requests). What we
use of it:

  GET    Account/{auth_id}/                   the account: are the credentials good
  GET    Number/{number}/                     a number the account owns (404: it owns none)
  POST   Message/                             send a text (``message_uuid`` back)
  POST   Call/                                dial (``request_uuid`` back; the call's own
                                              ``CallUUID`` arrives with its callbacks)
  DELETE Call/{call_uuid}/                    hang up a call in progress
  DELETE Request/{request_uuid}/              cancel a call still ringing
  GET    Application/ , POST Application/     the account's applications (webhook URLs)
  POST   Number/{number}/                     point a number at an application
  GET    PhoneNumber/?country_iso=&type=&pattern=   numbers to rent (relay.carriers.plivo.numbers)
  POST   PhoneNumber/{number}/                rent one, on an application
  DELETE Number/{number}/                     give a rented number back

https://www.plivo.com/docs/voice/api/call/ and .../messaging/api/message/. Numbers are
written without the ``+`` at Plivo. ``RELAY_PLIVO_API_BASE_URL`` points it elsewhere (a
test double, a proxy). The auth token never appears in an error or a log line.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.carriers.base import CarrierCredentialsInvalid, CarrierError, CarrierUnavailable

API_BASE_URL = "https://api.plivo.com"
# A main account's auth id is MA + 18, a subaccount's SA + 18 (plivo.utils.is_valid_*).
AUTH_ID = re.compile(r"^(MA|SA)[A-Z0-9]{18}$")
REFUSED = "Plivo refused the credentials of account {auth_id} (HTTP {status})."
UNREACHABLE = "Plivo could not be reached for account {auth_id}: {why}."
REJECTED = "Plivo refused the request (HTTP {status}): {why}"


@dataclass(frozen=True, slots=True)
class PlivoCredentials:
    auth_id: str
    auth_token: str

    def __repr__(self) -> str:  # never the token, in a traceback or a log line
        return f"PlivoCredentials(auth_id={self.auth_id!r}, auth_token='***')"


@dataclass(frozen=True, slots=True)
class OwnedNumber:
    phone_number: str
    capabilities: tuple[str, ...]


def plivo_number(e164: str) -> str:
    """Plivo writes numbers as digits with the country code and no ``+``."""
    return e164.removeprefix("+")


def e164_of(number: str) -> str:
    """A number as Plivo sends it (``14155550100``, or ``sip:...``) in E.164 where it is one."""
    number = number.strip()
    return "+" + number if number.isdigit() else number


class PlivoRest:
    """One account's REST client. Its session is made on first use (inside the event loop)
    and kept for the account's texts and calls; :meth:`close` ends it."""

    def __init__(
        self, creds: PlivoCredentials, api_base_url: str = "", *, timeout: float = 10.0
    ) -> None:
        self.creds = creds
        self.base = (api_base_url or API_BASE_URL).rstrip("/")
        self.timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            basic = base64.b64encode(f"{self.creds.auth_id}:{self.creds.auth_token}".encode())
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={
                    "Authorization": f"Basic {basic.decode()}",
                    "Accept": "application/json",
                    "User-Agent": "relay (plivo REST)",
                },
            )
        return self._http

    async def request(
        self, method: str, *path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of one request; 401/403 raise CarrierCredentialsInvalid,
        5xx and network failures CarrierUnavailable. Other statuses are the caller's."""
        auth_id = self.creds.auth_id
        url = "/".join([self.base, "v1/Account", auth_id, *path]) + "/"
        kwargs: dict[str, Any] = {"json": body} if method != "GET" else {"params": body}
        try:
            async with self._session().request(method, url, **kwargs) as resp:
                status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
            raise CarrierUnavailable(UNREACHABLE.format(auth_id=auth_id, why=why)) from None
        if status in (401, 403):
            raise CarrierCredentialsInvalid(REFUSED.format(auth_id=auth_id, status=status))
        if status >= 500:
            why = f"HTTP {status}"
            raise CarrierUnavailable(UNREACHABLE.format(auth_id=auth_id, why=why))
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            data = {}
        return status, data if isinstance(data, dict) else {}

    @staticmethod
    def refused(status: int, data: dict[str, Any]) -> CarrierError:
        why = str(data.get("error") or data.get("message") or "no reason given")[:200]
        return CarrierError(REJECTED.format(status=status, why=why))

    async def verify(self) -> None:
        """The credentials open the account (CarrierCredentialsInvalid if not)."""
        status, data = await self.request("GET")
        if status == 404:
            raise CarrierCredentialsInvalid(
                REFUSED.format(auth_id=self.creds.auth_id, status=status)
            )
        if status != 200:
            raise self.refused(status, data)
        if data.get("auth_id") not in (None, self.creds.auth_id):
            raise CarrierError(f"Plivo answered for another account than {self.creds.auth_id}.")

    async def owned_number(self, phone_number: str) -> OwnedNumber | None:
        """The account's number with this E.164 value, or None if it has none."""
        status, data = await self.request("GET", "Number", plivo_number(phone_number))
        if status == 404:
            return None
        if status != 200:
            raise self.refused(status, data)
        if data.get("number") != plivo_number(phone_number):
            return None
        wanted = (("voice", "voice_enabled"), ("sms", "sms_enabled"))
        caps = tuple(name for name, flag in wanted if data.get(flag, True) is not False)
        return OwnedNumber(phone_number, caps or ("voice", "sms"))

    async def point_number(self, phone_number: str, answer_url: str, message_url: str) -> str:
        """Make ``phone_number`` ring ``answer_url`` and text ``message_url``: through the
        account's application with exactly these URLs (made if it has none), attached to the
        number in one update, so the number switches from its old webhooks to these at once.
        Returns the application's id."""
        app_id = await self.application(answer_url, message_url)
        number = plivo_number(phone_number)
        status, data = await self.request("POST", "Number", number, body={"app_id": app_id})
        if status not in (200, 202):
            raise self.refused(status, data)
        return app_id

    async def application(self, answer_url: str, message_url: str) -> str:
        """The id of the account's application with exactly these URLs, made if it has none."""
        status, data = await self.request("GET", "Application", body={"limit": "20"})
        if status != 200:
            raise self.refused(status, data)
        app_id = next(
            (
                str(app.get("app_id"))
                for app in data.get("objects") or ()
                if isinstance(app, dict)
                and app.get("answer_url") == answer_url
                and app.get("message_url") == message_url
            ),
            None,
        )
        if app_id is None:
            body = {
                "app_name": "conversation relay",
                "answer_url": answer_url,
                "answer_method": "POST",
                "message_url": message_url,
                "message_method": "POST",
            }
            status, data = await self.request("POST", "Application", body=body)
            if status not in (200, 201) or not data.get("app_id"):
                raise self.refused(status, data)
            app_id = str(data["app_id"])
        return app_id

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


__all__ = [
    "AUTH_ID",
    "OwnedNumber",
    "PlivoCredentials",
    "PlivoRest",
    "e164_of",
    "plivo_number",
]
