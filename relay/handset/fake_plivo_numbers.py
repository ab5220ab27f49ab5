"""The numbers half of the fake Plivo (:mod:`relay.handset.fake_plivo`): numbers to rent,
renting one on an application, giving it back. As the official SDK calls them:

``GET    /v1/Account/{auth_id}/PhoneNumber/``  ``country_iso`` (required), ``type`` (``any``,
    ``local``, ``mobile``, ``tollfree``, ``fixed``, ``national``), ``pattern`` (digits after
    the country code), ``services`` (``voice,sms,mms``), ``limit`` (1-20). It offers numbers
    from ranges reserved for fiction: US and CA local ``1 {pattern or 415} 555 0100..0199``,
    toll-free ``1 800 555 0100..0199``; no mobile ones. A malformed query answers 400.
``POST   /v1/Account/{auth_id}/PhoneNumber/{number}/``  ``{"app_id"}`` (the account's, else 400):
    201 ``{"numbers": [{"number", "status": "Success"}], "status": "fulfilled"}``; a number
    not on offer answers 404.
``DELETE /v1/Account/{auth_id}/Number/{number}/``  unrent a number of the account (204; 404
    otherwise).

Error bodies are Plivo's ``{"api_id", "error"}``. ``buy_status`` answers every rent with that
HTTP status instead; ``buy_stalls`` never answers one; ``before_buy_answer`` runs once the
number is the account's and before Plivo answers (a test's race).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

TYPES = ("any", "local", "mobile", "tollfree", "fixed", "national")
SERVICES = {"voice", "sms", "mms"}


def refusal(status: int, error: str) -> web.Response:
    return web.json_response({"api_id": str(uuid.uuid4()), "error": error}, status=status)


@dataclass
class FakePlivoNumbers:
    rented: dict[str, tuple[str, str]] = field(default_factory=dict)  # E.164 -> auth id, app
    released: list[str] = field(default_factory=list)
    searches: list[MultiMapping[str]] = field(default_factory=list)  # their queries
    # The account a request authenticated as (the fake's gate checked it).
    account_of: Callable[[web.Request], Any] = lambda request: None
    buy_status: int | None = None
    buy_stalls: bool = False
    before_buy_answer: Callable[[str], Awaitable[None]] | None = None

    @staticmethod
    def offer(country: str, kind: str, pattern: str) -> list[str]:
        """Plivo's digits (no ``+``) on offer."""
        if country not in ("US", "CA") or kind == "mobile":
            return []
        if kind == "tollfree":
            numbers = [f"1800555{i:04d}" for i in range(100, 200)]
        else:
            npa = pattern[:3] if len(pattern) >= 3 else "415"
            numbers = [f"1{npa}555{i:04d}" for i in range(100, 200)]
            if kind == "any":
                numbers += [f"1800555{i:04d}" for i in range(100, 200)]
        return [n for n in numbers if n[1:].startswith(pattern)]

    async def search(self, request: web.Request) -> web.Response:
        auth_id = self.account_of(request).auth_id
        q = request.query
        self.searches.append(q)
        country, kind = q.get("country_iso", ""), q.get("type", "any")
        pattern, limit = q.get("pattern", ""), q.get("limit", "20")
        services = {s for s in q.get("services", "voice").split(",") if s}
        if not re.fullmatch(r"[A-Z]{2}", country):
            return refusal(400, "country_iso is required: an ISO 3166 alpha-2 code")
        if kind not in TYPES:
            return refusal(400, f"invalid type {kind!r}")
        if pattern and not pattern.isdigit():
            return refusal(400, "pattern must be digits")
        if not services <= SERVICES or not limit.isdigit() or not 1 <= int(limit) <= 20:
            return refusal(400, "invalid services or limit")
        free = [n for n in self.offer(country, kind, pattern) if "+" + n not in self.rented]
        objects = [
            {
                "number": n,
                "prefix": n[1:4],
                "country": "UNITED STATES" if country == "US" else "CANADA",
                "type": "tollfree" if n[1:4] == "800" else "local",
                "sub_type": "local",
                "monthly_rental_rate": "0.50000",
                "setup_rate": "0.00000",
                "voice_enabled": True,
                "sms_enabled": True,
                "mms_enabled": False,
                "resource_uri": f"/v1/Account/{auth_id}/PhoneNumber/{n}/",
            }
            for n in free[: int(limit)]
        ]
        meta = {"limit": int(limit), "offset": 0, "next": None, "previous": None}
        return web.json_response(
            {
                "api_id": str(uuid.uuid4()),
                "meta": {**meta, "total_count": len(objects)},
                "objects": objects,
            }
        )

    async def buy(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        if self.buy_stalls:
            await asyncio.sleep(3600)
        if self.buy_status is not None:
            return refusal(self.buy_status, "an error occurred")
        digits = request.match_info["number"]
        body = await request.json() if request.body_exists else {}
        app_id = str(body.get("app_id") or "") if isinstance(body, dict) else ""
        if app_id and app_id not in account.applications:
            return refusal(400, "invalid app_id")
        on_offer = self.offer("US", "any", digits[1:4]) if digits.startswith("1") else []
        if "+" + digits in self.rented or digits not in on_offer:
            return refusal(404, "number not available for purchase")
        phone = "+" + digits
        self.rented[phone] = (account.auth_id, app_id)
        if account.numbers is not None:
            account.numbers.add(phone)
        if app_id:
            account.number_apps[phone] = app_id
        if self.before_buy_answer is not None:
            await self.before_buy_answer(phone)
        return web.json_response(
            {
                "api_id": str(uuid.uuid4()),
                "message": "created",
                "numbers": [{"number": digits, "status": "Success"}],
                "status": "fulfilled",
            },
            status=201,
        )

    async def unrent(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        phone = "+" + request.match_info["number"]
        bought = self.rented.get(phone)
        if bought is not None:
            if bought[0] != account.auth_id:
                return refusal(404, "not found")
            del self.rented[phone]
        elif account.numbers is not None and phone not in account.numbers:
            return refusal(404, "not found")
        self.released.append(phone)
        if account.numbers is not None:
            account.numbers.discard(phone)
        account.number_apps.pop(phone, None)
        return web.Response(status=204)


__all__ = ["FakePlivoNumbers"]
