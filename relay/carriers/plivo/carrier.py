"""Plivo as a :class:`relay.carriers.Carrier`, on one carrier account (auth id + token).

Texts both ways (:mod:`relay.carriers.plivo.sms`), inbound calls answered with a streaming
XML document (:mod:`relay.carriers.plivo.voice`), hang-ups through the Call API, and the V3
signature check on every webhook (:mod:`relay.carriers.plivo.signature`). Plivo numbers are
imported (the account must own them), not provisioned here.
"""

from __future__ import annotations

from relay.carriers.base import (
    CarrierError,
    DialRequest,
    InboundWebhook,
    OutboundLeg,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.plivo.rest import PlivoCredentials, PlivoRest
from relay.carriers.plivo.signature import signature_is_valid
from relay.carriers.plivo.sms import send_sms
from relay.carriers.sms import OutgoingText, SentText

NOT_YET = "The plivo carrier cannot {what} from this relay yet."


class PlivoCarrier:
    name = "plivo"

    def __init__(
        self, creds: PlivoCredentials, *, api_base_url: str = "", timeout: float = 10.0
    ) -> None:
        self.creds = creds
        self.rest = PlivoRest(creds, api_base_url, timeout=timeout)

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        raise CarrierError(NOT_YET.format(what="provision numbers (import them)"))

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        return None  # none was provisioned here; an imported number stays its owner's

    async def dial(self, request: DialRequest) -> OutboundLeg:
        raise CarrierError(NOT_YET.format(what="place calls"))

    async def hangup(self, carrier_call_id: str) -> None:
        """``DELETE Call/{uuid}/``; a call Plivo no longer knows (404) is already over."""
        status, data = await self.rest.request("DELETE", "Call", carrier_call_id)
        if status not in (200, 202, 204, 404):
            raise self.rest.refused(status, data)

    async def send_sms(self, text: OutgoingText) -> SentText:
        return await send_sms(self.rest, text)

    def verify_webhook(self, webhook: InboundWebhook) -> bool:
        method = "POST" if webhook.body or webhook.form else "GET"
        return signature_is_valid(
            method, webhook.url, webhook.form, webhook.headers, auth_token=self.creds.auth_token
        )

    async def close(self) -> None:
        await self.rest.close()


__all__ = ["NOT_YET", "PlivoCarrier"]
