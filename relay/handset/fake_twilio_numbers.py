"""The numbers half of the fake Twilio (:mod:`relay.handset.fake_twilio`): what it offers,
what an account bought, where each number's webhooks point.

``GET  .../AvailablePhoneNumbers/{Country}/{Local|Mobile|TollFree}.json?AreaCode=``
    offers free numbers, from ranges reserved for fiction (the documented rule): US and CA
    local ``+1 {AreaCode or 415} 555 0100..0199``, toll-free ``+1 800 555 0100..0199``; no
    mobile numbers (an empty page, as for a country without them)
``POST .../IncomingPhoneNumbers.json``               buy one (``PhoneNumber``, ``VoiceUrl``...)
``POST .../IncomingPhoneNumbers/{PN sid}.json``      change its webhooks
``DELETE .../IncomingPhoneNumbers/{PN sid}.json``    release it (204)

A number the account bought joins what it owns; one it was asked about
(``IncomingPhoneNumbers.json?PhoneNumber=``) is kept too, so it can be configured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_VERSION = "2010-04-01"
KINDS = {"Local": "local", "Mobile": "mobile", "TollFree": "toll_free"}
CONFIG = ("VoiceUrl", "VoiceMethod", "SmsUrl", "SmsMethod", "StatusCallback")


def pn_sid(account_sid: str, phone_number: str) -> str:
    return "PN" + hashlib.sha256(f"{account_sid}{phone_number}".encode()).hexdigest()[:32]


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


@dataclass
class FakeNumber:
    sid: str
    account_sid: str
    phone_number: str
    config: dict[str, str] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        c = self.config
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{self.sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
            "friendly_name": self.phone_number,
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_method": c.get("SmsMethod", "POST"),
            "sms_url": c.get("SmsUrl", ""),
            "status": "in-use",
            "status_callback": c.get("StatusCallback", ""),
            "uri": uri,
            "voice_method": c.get("VoiceMethod", "POST"),
            "voice_url": c.get("VoiceUrl", ""),
        }


class FakeTwilioNumbers:
    def __init__(self, owned: Any) -> None:
        # ``owned(account_sid)``: the account's set of numbers (None: it owns any asked for).
        self._owned = owned
        self.incoming: dict[str, FakeNumber] = {}
        self.released: list[str] = []
        # Runs once a number is bought and before Twilio answers (a test's failing store).
        self.before_buy_answer: Callable[[str], Awaitable[None]] | None = None

    def install(self, app: web.Application, base: str) -> None:
        app.router.add_get(base + "/AvailablePhoneNumbers/{country}/{kind}.json", self.available)
        app.router.add_post(base + "/IncomingPhoneNumbers.json", self.buy)
        app.router.add_post(base + "/IncomingPhoneNumbers/{pn}.json", self.update)
        app.router.add_delete(base + "/IncomingPhoneNumbers/{pn}.json", self.release)

    def known(self, account_sid: str, phone_number: str) -> FakeNumber:
        """The account's number as a resource (kept, so it can be configured later)."""
        sid = pn_sid(account_sid, phone_number)
        return self.incoming.setdefault(sid, FakeNumber(sid, account_sid, phone_number))

    def _offer(self, country: str, kind: str, area_code: str) -> list[str]:
        if country not in ("US", "CA") or kind == "mobile":
            return []
        prefix = "800" if kind == "toll_free" else (area_code or "415")
        taken = {n.phone_number for n in self.incoming.values()}
        offered = [f"+1{prefix}5550{n:03d}" for n in range(100, 200)]
        return [n for n in offered if n not in taken]

    async def available(self, request: web.Request) -> web.Response:
        country = request.match_info["country"].upper()
        kind = KINDS.get(request.match_info["kind"])
        if kind is None:
            return _error(404, 20404, "The requested resource was not found")
        area = request.query.get("AreaCode", "")
        size = int(request.query.get("PageSize") or 50)
        items = [
            {
                "address_requirements": "none",
                "beta": False,
                "capabilities": {"MMS": True, "SMS": True, "voice": True},
                "friendly_name": number,
                "iso_country": country,
                "lata": None,
                "latitude": None,
                "locality": None,
                "longitude": None,
                "phone_number": number,
                "postal_code": None,
                "rate_center": None,
                "region": None,
            }
            for number in self._offer(country, kind, area)[:size]
        ]
        uri = f"{request.path}?{request.query_string}"
        return web.json_response(
            {
                "available_phone_numbers": items,
                "end": max(len(items) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": size,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
        )

    async def buy(self, request: web.Request) -> web.Response:
        account_sid = request.match_info["sid"]
        form = {k: str(v) for k, v in (await request.post()).items()}
        phone = form.get("PhoneNumber", "")
        free = {n for kind in ("local", "toll_free") for n in self._offer("US", kind, phone[2:5])}
        if phone not in free:
            return _error(400, 21422, f"PhoneNumber {phone} is not available.")
        number = self.known(account_sid, phone)
        number.config = {k: form[k] for k in CONFIG if k in form}
        owned = self._owned(account_sid)
        if owned is not None:
            owned.add(phone)
        if self.before_buy_answer is not None:
            await self.before_buy_answer(phone)
        return web.json_response(number.resource(), status=201)

    def _mine(self, request: web.Request) -> FakeNumber | None:
        number = self.incoming.get(request.match_info["pn"])
        if number is None or number.account_sid != request.match_info["sid"]:
            return None
        return number

    async def update(self, request: web.Request) -> web.Response:
        number = self._mine(request)
        if number is None:
            return _error(404, 20404, "The requested resource was not found")
        form = {k: str(v) for k, v in (await request.post()).items()}
        number.config.update({k: form[k] for k in CONFIG if k in form})
        return web.json_response(number.resource())

    async def release(self, request: web.Request) -> web.Response:
        number = self._mine(request)
        if number is None:
            return _error(404, 20404, "The requested resource was not found")
        del self.incoming[number.sid]
        self.released.append(number.phone_number)
        owned = self._owned(number.account_sid)
        if owned is not None:
            owned.discard(number.phone_number)
        return web.Response(status=204)


__all__ = ["FakeNumber", "FakeTwilioNumbers", "pn_sid"]
