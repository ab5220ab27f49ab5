"""Twilio as a :class:`relay.carriers.Carrier`, on the account in ``RELAY_TWILIO_*``.

What works today: texts both ways (:mod:`relay.carriers.twilio.sms`), inbound calls answered
with TwiML (:mod:`relay.carriers.twilio.voice`), and the signature check on every webhook
(:mod:`relay.carriers.twilio.signature`). Twilio numbers are imported, not provisioned, and
this relay places no Twilio calls yet: those refuse with a :class:`CarrierError` (an outbound
call fails ``provider_error``).
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
from relay.carriers.sms import OutgoingText, SentText
from relay.carriers.twilio.signature import signature_is_valid
from relay.carriers.twilio.sms import TwilioSms
from relay.config import Settings

NOT_YET = "The twilio carrier cannot {what} from this relay yet."


class TwilioCarrier:
    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        webhook_signing_key: str = "",
        api_base_url: str = "",
        timeout: float = 10.0,
    ) -> None:
        self.auth_token = auth_token
        self.webhook_signing_key = webhook_signing_key
        self.sms = TwilioSms(account_sid, auth_token, api_base_url=api_base_url, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioCarrier:
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            webhook_signing_key=settings.twilio_webhook_signing_key,
            api_base_url=settings.twilio_api_base_url,
        )

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        raise CarrierError(NOT_YET.format(what="provision numbers (import them)"))

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        return None  # none was provisioned here; an imported number stays its owner's

    async def dial(self, request: DialRequest) -> OutboundLeg:
        raise CarrierError(NOT_YET.format(what="place calls"))

    async def hangup(self, carrier_call_id: str) -> None:
        raise CarrierError(NOT_YET.format(what="hang up calls"))

    async def send_sms(self, text: OutgoingText) -> SentText:
        return await self.sms.send_sms(text)

    def verify_webhook(self, webhook: InboundWebhook) -> bool:
        return signature_is_valid(
            webhook.url,
            webhook.form,
            webhook.headers,
            auth_token=self.auth_token,
            signing_key=self.webhook_signing_key,
        )

    async def close(self) -> None:
        await self.sms.close()


__all__ = ["NOT_YET", "TwilioCarrier"]
