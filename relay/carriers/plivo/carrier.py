"""Plivo as a :class:`relay.carriers.Carrier`, on one carrier account (auth id + token).

Texts both ways (:mod:`relay.carriers.plivo.sms`), inbound calls answered with a streaming
XML document (:mod:`relay.carriers.plivo.voice`), outbound calls and hang-ups through the
Call API (:mod:`relay.carriers.plivo.calls`), and the V3 signature check on every webhook
(:mod:`relay.carriers.plivo.signature`). Numbers are rented on the account's application
for this relay and given back (:mod:`relay.carriers.plivo.numbers`), or imported (the account
must own them). The relay has no Plivo account of its own: the registry's
carrier has no credentials, and :meth:`PlivoCarrier.for_account` makes a project's.
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
from relay.carriers.plivo import calls, numbers
from relay.carriers.plivo.rest import PlivoCredentials, PlivoRest
from relay.carriers.plivo.signature import signature_is_valid
from relay.carriers.plivo.sms import send_sms
from relay.carriers.sms import OutgoingText, SentText
from relay.config import Settings

NO_ACCOUNT = "Plivo calls and texts go through a project's Plivo carrier account; none is set."


class PlivoCarrier:
    name = "plivo"

    def __init__(
        self,
        creds: PlivoCredentials,
        *,
        api_base_url: str = "",
        public_url: str = "",
        timeout: float = 10.0,
    ) -> None:
        self.creds = creds
        self.api_base_url = api_base_url
        self.public_url = public_url.rstrip("/")  # where Plivo's callbacks reach the relay
        self.timeout = timeout
        self.rest = PlivoRest(creds, api_base_url, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> PlivoCarrier:
        """The registry's Plivo: no account, only how to reach Plivo and be reached."""
        return cls(
            PlivoCredentials("", ""),
            api_base_url=settings.plivo_api_base_url,
            public_url=settings.effective_public_url(),
            timeout=settings.carrier_api_timeout_seconds,
        )

    def for_account(self, credentials: Mapping[str, str]) -> PlivoCarrier:
        """This carrier on a project's account (its stored ``authId`` and ``authToken``)."""
        creds = PlivoCredentials(credentials["authId"], credentials["authToken"])
        return PlivoCarrier(
            creds, api_base_url=self.api_base_url, public_url=self.public_url, timeout=self.timeout
        )

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        if not self.creds.auth_id:
            raise CarrierError(NO_ACCOUNT)
        return await numbers.provision(self.rest, request, self.public_url)

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        if not self.creds.auth_id:
            raise CarrierError(NO_ACCOUNT)
        await numbers.release(self.rest, phone_number)

    async def configure(
        self, phone_number: str, provider_sid: str | None, webhook_base_url: str
    ) -> None:
        """Point the number at the relay, its webhooks named by the account's auth id (whose
        token signs them)."""
        if not self.creds.auth_id:
            raise CarrierError(NO_ACCOUNT)
        base = (webhook_base_url or self.public_url).rstrip("/")
        query = f"?authId={self.creds.auth_id}"
        await self.rest.point_number(
            phone_number, f"{base}{calls.VOICE_PATH}{query}", f"{base}{calls.SMS_PATH}{query}"
        )

    async def dial(self, request: DialRequest) -> OutboundLeg:
        if not self.creds.auth_id:
            raise CarrierError(NO_ACCOUNT)
        return await calls.dial(self.rest, request, self.public_url)

    async def hangup(self, carrier_call_id: str) -> None:
        """``DELETE Call/{uuid}/``; a call Plivo no longer knows (404) is already over."""
        status, data = await self.rest.request("DELETE", "Call", carrier_call_id)
        if status not in (200, 202, 204, 404):
            raise self.rest.refused(status, data)

    async def redirect(self, carrier_call_id: str, url: str) -> None:
        """Plivo's Call transfer: the live call (its A leg) leaves its stream and runs the
        XML ``url`` answers (signed by Plivo like every callback)."""
        body = {"legs": "aleg", "aleg_url": url, "aleg_method": "POST"}
        status, data = await self.rest.request("POST", "Call", carrier_call_id, body=body)
        if status not in (200, 202):
            raise self.rest.refused(status, data)

    async def send_digits(self, carrier_call_id: str, digits: str) -> None:
        """``POST Call/{uuid}/DTMF/``: Plivo plays ``digits`` to the caller (the A leg)."""
        body = {"digits": digits, "leg": "aleg"}
        status, data = await self.rest.request("POST", "Call", carrier_call_id, "DTMF", body=body)
        if status not in (200, 202):
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


__all__ = ["NO_ACCOUNT", "PlivoCarrier"]
