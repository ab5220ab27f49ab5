"""Number inventory of the sim carrier.

Every number it hands out lies in a range its regulator reserves for drama and tests, so a
sim number can never ring a real phone:
  US/CA  +1 NPA 555 0100..0199 (NANPA's fictional block, any area code)
  GB     +44 20 7946 0000..0999 (Ofcom, London drama range)
  AU     +61 2 5550 0000..9999 and +61 491 570 000..999 (ACMA fiction ranges)
"""

from __future__ import annotations

import secrets

import phonenumbers

from relay.carriers import NoNumberAvailable, ProvisionedNumber, ProvisionRequest

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
        return [f"+1{code}5550{n:03d}" for code in codes if code for n in range(100, 200)]
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


class SimCarrier:
    name = "sim"

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
