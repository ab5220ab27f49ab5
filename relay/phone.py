"""Phone numbers in, E.164 out: every number a user or carrier sends passes through here.

Also where a publishable key may ring (:func:`destination_refusal`): a key in a web page lets
anyone who reads the page place calls on the project's bill, so by default it reaches only
numbers in the country of the number it calls from, and never premium-rate, shared-cost or
personal numbers (the usual toll-fraud routes: a caller earns on what such a number costs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import phonenumbers

from relay.errors import ValidationFailed, invalid_field

INVALID_PHONE = "Not a valid phone number; send it in E.164 form, like +14155550123."
BAD_DESTINATION = (
    "{value!r} is neither an E.164 number (+14155550123) nor a prefix pattern (+1415*)."
)
NOT_LISTED = "This publishable key may not call {to}: it is not in the key's allowedDestinations."
OTHER_COUNTRY = (
    "This publishable key may call numbers in {region} only (the country of the number it "
    "calls from); list other destinations in the key's allowedDestinations."
)
COSTLY = (
    "This publishable key may not call {to}: premium-rate, shared-cost and personal numbers "
    "are refused unless the key lists the exact number in allowedDestinations."
)
# Numbers that cost the caller more than an ordinary call, or pay the callee for it.
COSTLY_TYPES = frozenset(
    {
        phonenumbers.PhoneNumberType.PREMIUM_RATE,
        phonenumbers.PhoneNumberType.SHARED_COST,
        phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
    }
)
_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}\*")


def e164_or_none(value: str, region: str | None = None) -> str | None:
    """``value`` as E.164 if it is a valid number, else None."""
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def to_e164(value: str, *, field: str, region: str | None = None) -> str:
    """Validate and normalise; raises a 422 ``invalid_phone_number`` naming ``field``."""
    number = e164_or_none(value, region)
    if number is None:
        raise invalid_field(field, INVALID_PHONE, "invalid_phone_number")
    return number


def query_e164(value: str, *, field: str) -> str:
    """A number from a query string: an unencoded ``+`` arrives there as a space (stripped),
    so digits alone are read as E.164 without it."""
    return to_e164("+" + value if value.isdigit() else value, field=field)


def region_of(e164: str) -> str:
    region = phonenumbers.region_code_for_number(phonenumbers.parse(e164))
    return str(region or "ZZ")


def destination_pattern(value: str) -> str:
    """``value`` as a destination a publishable key may call: an E.164 number (normalised)
    or a prefix ending in ``*``. Raises ValueError with a message for the user."""
    if _PREFIX.fullmatch(value):
        return value
    if value.startswith("+"):
        try:
            return to_e164(value, field="allowedDestinations")
        except ValidationFailed:
            pass
    raise ValueError(BAD_DESTINATION.format(value=value))


def destination_refusal(to: str, caller: str, allowed: Sequence[str] | None) -> str | None:
    """Why a publishable key may not call ``to`` (E.164) from ``caller``, or None when it
    may. ``allowed``: the key's patterns; None means the country of ``caller``."""
    if allowed is not None and to in allowed:
        return None  # listed exactly: the owner chose this very number
    parsed = phonenumbers.parse(to)
    if phonenumbers.number_type(parsed) in COSTLY_TYPES:
        return COSTLY.format(to=to)
    if allowed is not None:
        if any(p.endswith("*") and to.startswith(p[:-1]) for p in allowed):
            return None
        return NOT_LISTED.format(to=to)
    home = phonenumbers.parse(caller)
    home_region = phonenumbers.region_code_for_number(home)
    if home_region is None:  # a number with no single region: compare country codes
        same = home.country_code == parsed.country_code
    else:
        same = phonenumbers.region_code_for_number(parsed) == home_region
    return None if same else OTHER_COUNTRY.format(region=home_region or f"+{home.country_code}")


__all__ = [
    "INVALID_PHONE",
    "ValidationFailed",
    "destination_pattern",
    "destination_refusal",
    "region_of",
    "to_e164",
]
