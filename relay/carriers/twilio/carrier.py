"""Twilio as a :class:`relay.carriers.Carrier`, on one account: the deployment's
(``RELAY_TWILIO_*``) or a project's (:meth:`TwilioCarrier.for_account`).

Texts both ways (:mod:`relay.carriers.twilio.sms`), inbound calls answered with TwiML
(:mod:`relay.carriers.twilio.voice`), outbound calls through the Calls resource
(:mod:`relay.carriers.twilio.calls`), and the signature check on every webhook
(:mod:`relay.carriers.twilio.signature`); numbers bought, configured and released
(:mod:`relay.carriers.twilio.numbers`).
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.carriers.base import (
    CarrierError,
    DialRequest,
    InboundWebhook,
    OutboundLeg,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.sms import OutgoingText, SentText
from relay.carriers.twilio.calls import TwilioCalls
from relay.carriers.twilio.numbers import TwilioNumbers
from relay.carriers.twilio.signature import signature_is_valid
from relay.carriers.twilio.sms import NOT_CONFIGURED, TwilioSms
from relay.carriers.twilio.voice import after_stream_twiml
from relay.config import Settings


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
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.webhook_signing_key = webhook_signing_key
        self.api_base_url = api_base_url
        self.timeout = timeout
        self.sms = TwilioSms(account_sid, auth_token, api_base_url=api_base_url, timeout=timeout)
        self.calls = TwilioCalls(self.sms.rest)
        self.numbers = TwilioNumbers(self.sms.rest)

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioCarrier:
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            webhook_signing_key=settings.twilio_webhook_signing_key,
            api_base_url=settings.twilio_api_base_url,
        )

    def for_account(self, credentials: Mapping[str, str]) -> TwilioCarrier:
        return TwilioCarrier(
            credentials["accountSid"],
            credentials["authToken"],
            api_base_url=self.api_base_url,
            timeout=self.timeout,
        )

    def _configured(self) -> None:
        if not (self.account_sid and self.auth_token):
            raise CarrierError(NOT_CONFIGURED)

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        self._configured()
        return await self.numbers.provision(request)

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        self._configured()
        await self.numbers.release(phone_number, provider_sid)

    async def configure(
        self, phone_number: str, provider_sid: str | None, webhook_base_url: str
    ) -> None:
        self._configured()
        await self.numbers.configure(phone_number, provider_sid, webhook_base_url)

    async def dial(self, request: DialRequest) -> OutboundLeg:
        self._configured()
        return await self.calls.dial(request)

    async def hangup(self, carrier_call_id: str) -> None:
        await self.calls.update(carrier_call_id, Status="completed")

    async def transfer(self, carrier_call_id: str, to: str) -> None:
        """Cold transfer of a live call: its TwiML becomes a ``<Dial>`` (the running
        ``<Connect><Stream>`` ends, its ``action`` is not asked)."""
        await self.calls.update(carrier_call_id, Twiml=after_stream_twiml(to))

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


__all__ = ["TwilioCarrier"]
