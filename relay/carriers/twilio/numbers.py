"""Twilio numbers: search and buy, point at the relay, give back.

* search: ``GET /2010-04-01/Accounts/{Sid}/AvailablePhoneNumbers/{Country}/{Local|Mobile|
  TollFree}.json`` with ``AreaCode``, ``VoiceEnabled=true``, ``SmsEnabled=true``
  (https://www.twilio.com/docs/phone-numbers/api/availablephonenumber-resource);
* buy: ``POST .../IncomingPhoneNumbers.json`` with ``PhoneNumber`` and the webhooks, so the
  number answers through the relay from its first call
  (https://www.twilio.com/docs/phone-numbers/api/incomingphonenumber-resource);
* configure an imported number: ``POST .../IncomingPhoneNumbers/{PN sid}.json`` with
  ``VoiceUrl``/``SmsUrl`` (POST both);
* release: ``DELETE .../IncomingPhoneNumbers/{PN sid}.json``.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException

from relay.carriers.base import (
    CarrierError,
    CarrierUnavailable,
    NoNumberAvailable,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.twilio.rest import TwilioRest
from relay.carriers.twilio.voice import SMS_PATH, VOICE_PATH

NONE_FREE = "Twilio has no {kind} number for {where} that is free and takes voice and SMS."
NO_SID = "Number {phone} has no Twilio sid; import it again to configure it."
SEARCH_SIZE = 20


def _translated(exc: Exception, doing: str) -> CarrierError:
    if isinstance(exc, TwilioRestException):
        if exc.status >= 500:
            return CarrierUnavailable(f"Twilio answered HTTP {exc.status} {doing}.")
        return CarrierError(f"Twilio refused {doing} (error {exc.code}): {exc.msg}")
    # A page Twilio would not serve (TwilioException), a network failure, a timeout.
    return CarrierUnavailable(f"Twilio unreachable {doing}: {type(exc).__name__}")


def _webhooks(base: str) -> dict[str, str]:
    return {
        "voice_url": f"{base}{VOICE_PATH}",
        "voice_method": "POST",
        "sms_url": f"{base}{SMS_PATH}",
        "sms_method": "POST",
    }


class TwilioNumbers:
    def __init__(self, rest: TwilioRest) -> None:
        self.rest = rest

    def _search(self, country: str, kind: str) -> Any:
        found = self.rest.client().available_phone_numbers(country)
        return {"local": found.local, "mobile": found.mobile, "toll_free": found.toll_free}[kind]

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        kind = request.number_type
        where = request.country + (f" area code {request.area_code}" if request.area_code else "")
        try:
            where_in = {"area_code": int(request.area_code)} if request.area_code else {}
            offered = await self._search(request.country, kind).list_async(
                voice_enabled=True, sms_enabled=True, limit=SEARCH_SIZE, **where_in
            )
            free = [n for n in offered if n.phone_number and n.phone_number not in request.taken]
            if not free:
                raise NoNumberAvailable(NONE_FREE.format(kind=kind.replace("_", "-"), where=where))
            bought = await self.rest.client().incoming_phone_numbers.create_async(
                phone_number=free[0].phone_number, **_webhooks(request.webhook_base_url)
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _translated(exc, "to provision a number") from exc
        caps = bought.capabilities or {}
        have = tuple(c for c in ("voice", "sms") if caps.get(c, caps.get(c.upper(), True)))
        return ProvisionedNumber(
            str(bought.phone_number), request.country, str(bought.sid), have or ("voice", "sms")
        )

    async def configure(self, phone_number: str, provider_sid: str | None, base: str) -> None:
        if not provider_sid:
            raise CarrierError(NO_SID.format(phone=phone_number))
        try:
            await (
                self.rest.client()
                .incoming_phone_numbers(provider_sid)
                .update_async(**_webhooks(base))
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _translated(exc, f"to configure {phone_number}") from exc

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        if not provider_sid:
            return  # never bought here: nothing to give back
        try:
            await self.rest.client().incoming_phone_numbers(provider_sid).delete_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                return  # already gone at Twilio
            raise _translated(exc, f"to release {phone_number}") from exc
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _translated(exc, f"to release {phone_number}") from exc


__all__ = ["TwilioNumbers"]
