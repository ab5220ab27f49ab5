"""Twilio's REST API for carrier accounts: are these credentials an account's, and does the
account own this number.

Two cheap authenticated reads, HTTP Basic with the AccountSid and auth token:
``GET /2010-04-01/Accounts/{Sid}.json`` (the account itself) and
``GET /2010-04-01/Accounts/{Sid}/IncomingPhoneNumbers.json?PhoneNumber=+1...`` (its numbers
with that value: one, or none). ``RELAY_TWILIO_API_BASE_URL`` points both elsewhere (a test
double, a proxy). The auth token never appears in an error or a log line.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.carriers.base import CarrierCredentialsInvalid, CarrierError, CarrierUnavailable

API_BASE_URL = "https://api.twilio.com"
API_VERSION = "2010-04-01"
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
REFUSED = "Twilio refused the credentials of account {sid} (HTTP {status})."
NOT_ACTIVE = "Twilio account {sid} is {status}, not active."
UNREACHABLE = "Twilio could not be reached to check account {sid}: {why}."


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    account_sid: str
    auth_token: str

    def __repr__(self) -> str:  # never the token, in a traceback or a log line
        return f"TwilioCredentials(account_sid={self.account_sid!r}, auth_token='***')"


@dataclass(frozen=True, slots=True)
class OwnedNumber:
    phone_number: str
    provider_sid: str
    capabilities: tuple[str, ...]


class TwilioAccounts:
    """Reads an account's own resources; one short-lived session per call (these run when
    an account is created or a number imported, not per call or text)."""

    def __init__(self, api_base_url: str = "", *, timeout: float = 10.0) -> None:
        self.base = (api_base_url or API_BASE_URL).rstrip("/")
        self.timeout = timeout

    async def _get(
        self, creds: TwilioCredentials, path: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base}/{API_VERSION}/Accounts/{creds.account_sid}{path}"
        # The header by hand: aiohttp.BasicAuth is deprecated since aiohttp 3.14.
        basic = base64.b64encode(f"{creds.account_sid}:{creds.auth_token}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.get(url, params=params, headers=headers) as resp,
            ):
                if resp.status in (401, 403, 404):
                    raise CarrierCredentialsInvalid(
                        REFUSED.format(sid=creds.account_sid, status=resp.status)
                    )
                if resp.status != 200:
                    raise CarrierUnavailable(
                        UNREACHABLE.format(sid=creds.account_sid, why=f"HTTP {resp.status}")
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            why = type(exc).__name__
            raise CarrierUnavailable(UNREACHABLE.format(sid=creds.account_sid, why=why)) from None
        if not isinstance(body, dict):
            raise CarrierUnavailable(UNREACHABLE.format(sid=creds.account_sid, why="not JSON"))
        return body

    async def verify(self, creds: TwilioCredentials) -> None:
        """The credentials open an active account (CarrierCredentialsInvalid if not)."""
        account = await self._get(creds, ".json")
        status = str(account.get("status") or "active")
        if account.get("sid") not in (None, creds.account_sid):
            raise CarrierError(f"Twilio answered for another account than {creds.account_sid}.")
        if status != "active":
            raise CarrierCredentialsInvalid(NOT_ACTIVE.format(sid=creds.account_sid, status=status))

    async def owned_number(self, creds: TwilioCredentials, phone_number: str) -> OwnedNumber | None:
        """The account's number with this E.164 value, or None if it has none."""
        page = await self._get(creds, "/IncomingPhoneNumbers.json", {"PhoneNumber": phone_number})
        for item in page.get("incoming_phone_numbers") or ():
            if isinstance(item, dict) and item.get("phone_number") == phone_number:
                caps = item.get("capabilities") or {}
                wanted = ("voice", "sms")
                have = tuple(c for c in wanted if not isinstance(caps, dict) or caps.get(c, True))
                return OwnedNumber(phone_number, str(item.get("sid") or ""), have or wanted)
        return None


__all__ = ["ACCOUNT_SID", "OwnedNumber", "TwilioAccounts", "TwilioCredentials"]
