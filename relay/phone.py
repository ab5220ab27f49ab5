"""Phone numbers in, E.164 out: every number a user or carrier sends passes through here."""

from __future__ import annotations

import phonenumbers

from relay.errors import ValidationFailed, invalid_field

INVALID_PHONE = "Not a valid phone number; send it in E.164 form, like +14155550123."


def to_e164(value: str, *, field: str, region: str | None = None) -> str:
    """Validate and normalise; raises a 422 ``invalid_phone_number`` naming ``field``."""
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise invalid_field(field, INVALID_PHONE, "invalid_phone_number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise invalid_field(field, INVALID_PHONE, "invalid_phone_number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def region_of(e164: str) -> str:
    region = phonenumbers.region_code_for_number(phonenumbers.parse(e164))
    return str(region or "ZZ")


__all__ = ["INVALID_PHONE", "ValidationFailed", "region_of", "to_e164"]
