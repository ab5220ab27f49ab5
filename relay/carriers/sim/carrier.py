"""The sim carrier: the embedded default, where nothing leaves the process.

Every number it hands out lies in a range its regulator reserves for drama and tests, so a
sim number can never ring a real phone:
  US/CA  +1 NPA 555 0100..0199 (NANPA's fictional block, any area code)
  GB     +44 20 7946 0000..0999 (Ofcom, London drama range)
  AU     +61 2 5550 0000..9999 and +61 491 570 000..999 (ACMA fiction ranges)

Calls come in from the simulated handset (:mod:`relay.handset`) through the sim voice
webhook, which an API key guards instead of a signature. Outbound calls ring and nobody
answers, until a handset can: they end ``no_answer`` (test callees that end busy or refused:
:mod:`relay.carriers.sim.callees`). Texts the relay sends land in an
outbox (the simulated handsets' inbox), delivered at once; ``relay phone sms`` prints them.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import phonenumbers

from relay.carriers.base import (
    DialRequest,
    InboundWebhook,
    NoNumberAvailable,
    OutboundLeg,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.sim import callees
from relay.carriers.sms import OutgoingText, SentText
from relay.store.models import utcnow

# The simulated handset's number when none is given (NANPA's fictional 555-01xx block).
DEFAULT_HANDSET = "+12025550142"

US_AREA_CODES = ("212", "415", "312", "206", "617", "512", "303", "202")

SIM_RANGES: dict[str, str] = {
    "US": "+1 NPA-555-0100..0199",
    "CA": "+1 NPA-555-0100..0199",
    "GB": "+44 20 7946 0000..0999",
    "AU": "+61 2 5550 0000..9999, +61 491 570 000..999",
}
CA_AREA_CODES = ("416", "604", "514", "613")


def _nanp_area_code_of(country: str, area_code: str) -> bool:
    """Whether ``area_code`` is a North American area code of ``country`` (415 is US, 416 CA)."""
    sample = phonenumbers.parse(f"+1{area_code}5550100")
    return bool(phonenumbers.is_valid_number_for_region(sample, country))


def _candidates(country: str, area_code: str | None) -> list[str]:
    if country in ("US", "CA"):
        if area_code and not _nanp_area_code_of(country, area_code):
            return []
        codes = (area_code,) if area_code else (US_AREA_CODES if country == "US" else CA_AREA_CODES)
        numbers = [f"+1{code}5550{n:03d}" for code in codes if code for n in range(100, 200)]
        # The handset's own number is never an agent's: a text from it would be to itself.
        return [n for n in numbers if n != DEFAULT_HANDSET]
    if country == "GB":
        if area_code not in (None, "20"):
            return []
        return [f"+442079460{n:03d}" for n in range(1000)]
    if country == "AU":
        if area_code in (None, "2"):
            fixed = [f"+6125550{n:04d}" for n in range(10000)]
        else:
            fixed = []
        mobile = [f"+61491570{n:03d}" for n in range(1000)] if area_code in (None, "491") else []
        return fixed + mobile
    return []


_RANGES = (
    (re.compile(r"^\+1([2-9][0-9]{2})5550(1[0-9]{2})$"), ("US", "CA")),
    (re.compile(r"^\+442079460[0-9]{3}$"), ("GB",)),
    (re.compile(r"^\+6125550[0-9]{4}$"), ("AU",)),
    (re.compile(r"^\+61491570[0-9]{3}$"), ("AU",)),
)


def sim_country_of(phone_number: str) -> str | None:
    """The country of an E.164 number in one of the sim's ranges, or None outside them."""
    for pattern, countries in _RANGES:
        found = pattern.match(phone_number)
        if found is None:
            continue
        if len(countries) == 1:
            return countries[0]
        area_code = found.group(1)
        return next((c for c in countries if _nanp_area_code_of(c, area_code)), None)
    return None


@dataclass(frozen=True, slots=True)
class SimText:
    carrier_message_id: str
    message_id: str
    from_number: str
    to_number: str
    text: str
    at: datetime


class _RingsForever:
    def __init__(self, carrier_call_id: str) -> None:
        self.carrier_call_id = carrier_call_id

    async def hangup(self) -> None:
        return None


class SimCarrier:
    """``outbox`` keeps the last ``keep_texts`` texts sent, oldest first."""

    name = "sim"

    def __init__(self, keep_texts: int = 10_000) -> None:
        self.outbox: deque[SimText] = deque(maxlen=keep_texts)

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        free = [
            n for n in _candidates(request.country, request.area_code) if n not in request.taken
        ]
        if not free:
            where = request.country + (
                f" area code {request.area_code}" if request.area_code else ""
            )
            raise NoNumberAvailable(
                f"The sim carrier has no free number for {where}. "
                f"Its ranges: {'; '.join(f'{c} {r}' for c, r in SIM_RANGES.items())}."
            )
        number = secrets.choice(free)
        return ProvisionedNumber(number, request.country, provider_sid=f"SIM{number[1:]}")

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        return None

    async def configure(
        self, phone_number: str, provider_sid: str | None, webhook_base_url: str
    ) -> None:
        return None  # the sim's handset finds the relay by itself

    async def dial(self, request: DialRequest) -> OutboundLeg:
        callees.refuse(request.to_number)
        return _RingsForever("SIMOUT" + request.call_id.removeprefix("call_"))

    async def hangup(self, carrier_call_id: str) -> None:
        return None  # a sim call ends when the handset's media socket closes

    async def send_sms(self, text: OutgoingText) -> SentText:
        sid = "SIM" + secrets.token_hex(16)
        self.outbox.append(
            SimText(sid, text.message_id, text.from_number, text.to_number, text.text, utcnow())
        )
        return SentText(sid, "delivered")

    def inbox(self, handset: str) -> list[SimText]:
        """What the relay texted to ``handset``."""
        return [t for t in self.outbox if t.to_number == handset]

    def verify_webhook(self, webhook: InboundWebhook) -> bool:
        return False  # the sim signs nothing: its webhooks take a secret API key instead

    def for_account(self, credentials: Mapping[str, str]) -> SimCarrier:
        return self  # a project's sim account is the sim itself

    async def close(self) -> None:
        return None
