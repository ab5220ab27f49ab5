"""The numbers half of the fake Telnyx (:mod:`relay.handset.fake_telnyx`): what it offers,
what an account ordered, and giving a number back.

``GET    /v2/available_phone_numbers``  ``filter[country_code]``, ``filter[phone_number_type]``
    (``local``, ``mobile``, ``toll_free``, ``national``, ``shared_cost``), ``filter[features][]``,
    ``filter[national_destination_code]`` (an area code), ``filter[limit]`` (1-100). It offers
    numbers from ranges reserved for fiction: US and CA local ``+1 {NDC or 312} 555
    0100..0199``, toll-free ``+1 800 555 0100..0199``; no mobile ones (an empty list, as
    Telnyx answers for a search that finds none). A malformed filter answers 400.
``POST   /v2/number_orders``  ``{"phone_numbers": [{"phone_number"}], "connection_id",
    "messaging_profile_id"}``: the number joins the account, on that application and profile
    (both must be the account's, 422 otherwise); a number not on offer answers 422.
``DELETE /v2/phone_numbers/{id}``  the account's number with that id (404 otherwise).

Error bodies are Telnyx's ``{"errors": [{"code", "title", "detail"}]}``. ``order_status``
answers every order with that HTTP status instead; ``order_stalls`` never answers one;
``before_order_answer`` runs once the number is the account's and before Telnyx answers (a
test's race: someone else stores the same number meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from relay.handset.telnyx_line import now_iso

KINDS = ("local", "mobile", "toll_free", "national", "shared_cost")
FEATURES = {"sms", "mms", "voice", "fax", "emergency", "hd_voice", "international_sms"}
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def number_id(api_key: str, phone_number: str) -> str:
    """A number's id at the fake: stable per account and number."""
    return str(int(hashlib.sha256(f"{api_key}{phone_number}".encode()).hexdigest()[:15], 16))


def error(status: int, code: str, title: str, detail: str = "") -> web.Response:
    body = {"errors": [{"code": code, "title": title, "detail": detail or title}]}
    return web.json_response(body, status=status)


@dataclass
class OrderedNumber:
    id: str
    phone_number: str
    api_key: str
    connection_id: str | None
    messaging_profile_id: str | None

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "record_type": "phone_number",
            "phone_number": self.phone_number,
            "status": "active",
            "connection_id": self.connection_id,
            "messaging_profile_id": self.messaging_profile_id,
        }


@dataclass
class FakeTelnyxNumbers:
    ordered: dict[str, OrderedNumber] = field(default_factory=dict)  # by E.164
    released: list[str] = field(default_factory=list)
    searches: list[MultiMapping[str]] = field(default_factory=list)  # their queries
    # The account a request authenticated as (the fake's gate checked it).
    account_of: Callable[[web.Request], Any] = lambda request: None
    order_status: int | None = None
    order_stalls: bool = False
    before_order_answer: Callable[[str], Awaitable[None]] | None = None

    @staticmethod
    def offer(country: str, kind: str, ndc: str | None) -> list[str]:
        if country not in ("US", "CA") or kind == "mobile":
            return []
        if kind == "toll_free":
            ndc = "800"
        elif kind != "local":
            return []
        return [f"+1{ndc or '312'}555{i:04d}" for i in range(100, 200)]

    def free(self, country: str, kind: str, ndc: str | None) -> list[str]:
        return [n for n in self.offer(country, kind, ndc) if n not in self.ordered]

    async def available(self, request: web.Request) -> web.Response:
        q = request.query
        self.searches.append(q)
        country = q.get("filter[country_code]", "US")
        kind = q.get("filter[phone_number_type]", "local")
        ndc = q.get("filter[national_destination_code]")
        limit = q.get("filter[limit]", "10")
        if not re.fullmatch(r"[A-Z]{2}", country):
            return error(400, "10015", "Invalid filter", "filter[country_code] must be ISO alpha-2")
        if kind not in KINDS:
            return error(400, "10015", "Invalid filter", f"unknown phone_number_type {kind!r}")
        if ndc is not None and not ndc.isdigit():
            return error(400, "10015", "Invalid filter", "national_destination_code: digits")
        if not set(q.getall("filter[features][]", [])) <= FEATURES:
            return error(400, "10015", "Invalid filter", "unknown filter[features][]")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            return error(400, "10015", "Invalid filter", "filter[limit] must be 1 to 100")
        items = [
            {
                "record_type": "available_phone_number",
                "phone_number": n,
                "best_effort": False,
                "reservable": True,
                "region_information": [{"region_type": "country_code", "region_name": country}],
                "cost_information": {"upfront_cost": "1.00", "monthly_cost": "1.00"},
                "features": [{"name": "voice"}, {"name": "sms"}],
            }
            for n in self.free(country, kind, ndc)[: int(limit)]
        ]
        meta = {"total_results": len(items), "best_effort_results": 0}
        return web.json_response({"data": items, "meta": meta})

    async def order(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        if self.order_stalls:
            await asyncio.sleep(3600)
        if self.order_status is not None:
            return error(self.order_status, "10007", "Unexpected error")
        body = await request.json()
        wanted = body.get("phone_numbers") if isinstance(body, dict) else None
        if not isinstance(wanted, list) or not wanted:
            return error(422, "10015", "Invalid parameter", "phone_numbers is required")
        for key, mine in (
            ("connection_id", account.connection_id),
            ("messaging_profile_id", account.messaging_profile_id),
        ):
            if body.get(key) is not None and body[key] != mine:
                return error(422, "10015", "Invalid parameter", f"{key} is not this account's")
        phones = [w.get("phone_number") if isinstance(w, dict) else None for w in wanted]
        for phone in phones:
            if not isinstance(phone, str) or not E164.match(phone):
                return error(422, "10015", "Invalid parameter", "phone_number must be E.164")
            if phone in self.ordered or phone not in self.free("US", "local", phone[2:5]) + (
                self.free("US", "toll_free", None)
            ):
                return error(422, "85001", "Number not available", f"{phone} cannot be ordered")
        lines = []
        for phone in phones:
            assert isinstance(phone, str)
            self.ordered[phone] = OrderedNumber(
                number_id(account.api_key, phone),
                phone,
                account.api_key,
                body.get("connection_id"),
                body.get("messaging_profile_id"),
            )
            if account.numbers is not None:
                account.numbers.add(phone)
            lines.append(
                {
                    "id": str(uuid.uuid4()),  # the order's line, not the number's id
                    "record_type": "number_order_phone_number",
                    "phone_number": phone,
                    "requirements_met": True,
                    "status": "success",
                }
            )
            if self.before_order_answer is not None:
                await self.before_order_answer(phone)
        data = {
            "id": str(uuid.uuid4()),
            "record_type": "number_order",
            "phone_numbers_count": len(lines),
            "connection_id": body.get("connection_id"),
            "messaging_profile_id": body.get("messaging_profile_id"),
            "phone_numbers": lines,
            "status": "success",
            "requirements_met": True,
            "created_at": now_iso(),
            "updated_at": now_iso(),
        }
        return web.json_response({"data": data})

    def of(self, api_key: str, phone_number: str) -> OrderedNumber | None:
        got = self.ordered.get(phone_number)
        return got if got is not None and got.api_key == api_key else None

    async def delete(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        wanted = request.match_info["id"]
        for phone, got in list(self.ordered.items()):
            if got.api_key == account.api_key and got.id == wanted:
                del self.ordered[phone]
                self.released.append(phone)
                if account.numbers is not None:
                    account.numbers.discard(phone)
                return web.json_response({"data": {**got.resource(), "status": "deleted"}})
        owned = account.numbers or set()
        if any(number_id(account.api_key, n) == wanted for n in owned):
            return web.json_response({"data": {"id": wanted, "status": "deleted"}})
        return error(404, "10005", "Resource not found", f"no phone number {wanted}")


__all__ = ["FakeTelnyxNumbers", "OrderedNumber", "number_id"]
