"""Plivo numbers: search, rent on the account's application for this relay, give back.

The requests the official SDK makes (``plivo.resources.numbers``), on our own session:

* search: ``GET PhoneNumber/?country_iso=US&type=local|mobile|tollfree&pattern=<area code>
  &services=voice,sms&limit=20`` (``pattern`` matches after the country code);
* rent: ``POST PhoneNumber/{number}/ {"app_id"}``, 201 with ``{"numbers": [{"number",
  "status": "Success"}], "status": "fulfilled"}``; the application's answer and message URLs
  are the relay's, so the number's calls and texts reach it from the start;
* give back: ``DELETE Number/{number}/`` (204; 404: the account no longer rents it).

https://www.plivo.com/docs/numbers/api/phone-number/ and .../api/account-phone-number/
"""

from __future__ import annotations

from relay.carriers.base import (
    CarrierError,
    NoNumberAvailable,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.plivo.calls import SMS_PATH, VOICE_PATH
from relay.carriers.plivo.rest import PlivoRest, e164_of, plivo_number

KINDS = {"local": "local", "mobile": "mobile", "toll_free": "tollfree"}
NONE_FREE = "Plivo has no {kind} {country} number{where} to rent."
NOT_RENTED = "Plivo did not rent {phone} ({status}); nothing was stored."
SEARCH_SIZE = 20


async def provision(
    rest: PlivoRest, request: ProvisionRequest, public_url: str
) -> ProvisionedNumber:
    """Rent the first free number of the kind asked for, on the account's relay application
    (whose URLs name the account's auth id, as imports do)."""
    query = {
        "country_iso": request.country,
        "type": KINDS[request.number_type],
        "services": "voice,sms",
        "limit": str(SEARCH_SIZE),
    }
    if request.area_code:
        query["pattern"] = request.area_code
    status, data = await rest.request("GET", "PhoneNumber", body=query)
    if status != 200:
        raise rest.refused(status, data)
    offered = [
        e164_of(str(o["number"]))
        for o in data.get("objects") or ()
        if isinstance(o, dict) and str(o.get("number") or "").isdigit()
    ]
    free = [n for n in offered if n not in request.taken]
    if not free:
        kind = request.number_type.replace("_", "-")
        where = f" in area code {request.area_code}" if request.area_code else ""
        raise NoNumberAvailable(NONE_FREE.format(kind=kind, country=request.country, where=where))
    base = (request.webhook_base_url or public_url).rstrip("/")
    who = f"?authId={rest.creds.auth_id}"
    app_id = await rest.application(f"{base}{VOICE_PATH}{who}", f"{base}{SMS_PATH}{who}")
    phone = free[0]
    status, data = await rest.request(
        "POST", "PhoneNumber", plivo_number(phone), body={"app_id": app_id}
    )
    if status not in (200, 201):
        raise rest.refused(status, data)
    rented = [n for n in data.get("numbers") or () if isinstance(n, dict)]
    mine = next((n for n in rented if n.get("number") == plivo_number(phone)), {})
    if str(mine.get("status", "")).lower() != "success":
        # Half rented (pending checks, say): give it back rather than keep what nobody stores.
        why = str(data.get("status") or "refused")
        try:
            await release(rest, phone)
        except CarrierError as exc:
            why += f"; giving it back failed too: {exc.code}, release it at Plivo"
        raise CarrierError(NOT_RENTED.format(phone=phone, status=why))
    return ProvisionedNumber(phone, request.country, None)


async def release(rest: PlivoRest, phone_number: str) -> None:
    status, data = await rest.request("DELETE", "Number", plivo_number(phone_number))
    if status not in (200, 202, 204, 404):
        raise rest.refused(status, data)


__all__ = ["KINDS", "provision", "release"]
