"""Telnyx as a :class:`relay.carriers.Carrier`, on one project's Telnyx account.

Calls go through Call Control: an inbound call is answered (``actions/answer``) and an
outbound one dialled (``POST /v2/calls``) with a bidirectional PCMU media stream to the
relay's ``/media/telnyx`` socket, the media token in the stream URL and the relay's call id
as ``client_state`` (Telnyx echoes it in every later webhook of that call). Texts go through
``POST /v2/messages``; numbers are searched and ordered (``available_phone_numbers``,
``number_orders``) on the account's Call Control Application and messaging profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from relay.carriers.base import (
    CarrierCredentialsInvalid,
    CarrierError,
    DialFailed,
    DialRequest,
    InboundWebhook,
    NoNumberAvailable,
    ProvisionedNumber,
    ProvisionRequest,
)
from relay.carriers.sms import OutgoingText, SentText
from relay.carriers.telnyx.api import (
    StreamSpec,
    TelnyxApi,
    TelnyxApiError,
    TelnyxCredentials,
    TelnyxTimeout,
)
from relay.carriers.telnyx.events import STATUSES
from relay.carriers.telnyx.signature import signature_is_valid

NONE_FREE = "Telnyx has no {kind} {country} number{where} to order."
ORDER_FAILED = "Telnyx did not complete the order of {phone}; nothing was stored."
NO_ACCOUNT = "Telnyx is used through a project's carrier account; this one has no credentials."
CALL_PATH = "/carriers/telnyx/call"
MESSAGE_PATH = "/carriers/telnyx/message"
MEDIA_PATH = "/media/telnyx"


def credentials_of(fields: Mapping[str, str]) -> TelnyxCredentials:
    """Stored credentials (camelCase, as sealed) to their typed form."""
    return TelnyxCredentials(
        api_key=str(fields["apiKey"]),
        public_key=str(fields["publicKey"]),
        connection_id=str(fields["connectionId"]),
        messaging_profile_id=str(fields.get("messagingProfileId") or "") or None,
    )


def stream_url(media_base_url: str, token: str) -> str:
    return f"{media_base_url}{MEDIA_PATH}?token={quote(token)}"


class TelnyxLeg:
    """An outbound call Telnyx accepted; its progress arrives by webhook."""

    def __init__(self, api: TelnyxApi, call_control_id: str) -> None:
        self._api = api
        self.carrier_call_id = call_control_id

    async def hangup(self) -> None:
        await self._api.hangup(self.carrier_call_id)


class TelnyxCarrier:
    """``credentials`` None: the registry's Telnyx, which only makes per-account carriers."""

    name = "telnyx"

    def __init__(
        self,
        credentials: TelnyxCredentials | None = None,
        *,
        public_url: str = "",
        api_base_url: str = "",
        timeout: float = 10.0,
    ) -> None:
        self.credentials = credentials
        self.public_url = public_url.rstrip("/")
        self.api_base_url = api_base_url
        self.timeout = timeout
        self.api = TelnyxApi(
            credentials.api_key if credentials else "", base_url=api_base_url, timeout=timeout
        )

    def for_account(self, credentials: Mapping[str, str]) -> TelnyxCarrier:
        return TelnyxCarrier(
            credentials_of(credentials),
            public_url=self.public_url,
            api_base_url=self.api_base_url,
            timeout=self.timeout,
        )

    def _creds(self) -> TelnyxCredentials:
        if self.credentials is None:
            raise CarrierCredentialsInvalid(NO_ACCOUNT)
        return self.credentials

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        """Search the kind asked for, order the first free one on the account's application
        and messaging profile (its calls and texts reach the relay from the start)."""
        creds = self._creds()
        try:
            offered = await self.api.available(
                request.country, request.area_code, request.number_type
            )
            free = [n for n in offered if n not in request.taken]
            if not free:
                kind = request.number_type.replace("_", "-")
                where = f" in area code {request.area_code}" if request.area_code else ""
                raise NoNumberAvailable(
                    NONE_FREE.format(kind=kind, country=request.country, where=where)
                )
            order = await self.api.order(free[0], creds)
        except TelnyxApiError as exc:
            raise CarrierError(f"{exc} (provisioning a number)") from exc
        ordered = [n for n in order.get("phone_numbers") or () if isinstance(n, dict)]
        mine = next((n for n in ordered if n.get("phone_number") == free[0]), None)
        if mine is None or mine.get("status") in ("failure", "failed"):
            raise CarrierError(ORDER_FAILED.format(phone=free[0]))
        # The order's own ids name the order, not the number: release finds the number's id.
        return ProvisionedNumber(free[0], request.country, None)

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        """``DELETE /v2/phone_numbers/{id}``; a number the account no longer has is gone."""
        self._creds()
        try:
            if provider_sid is None:
                found = await self.api.phone_numbers(phone_number)
                mine = [n for n in found if n.get("phone_number") == phone_number and n.get("id")]
                if not mine:
                    return
                provider_sid = str(mine[0]["id"])
            await self.api.delete_number(provider_sid)
        except TelnyxApiError as exc:
            if exc.status == 404:
                return
            raise CarrierError(f"{exc} (releasing {phone_number})") from exc

    async def configure(
        self, phone_number: str, provider_sid: str | None, webhook_base_url: str
    ) -> None:
        """Point an imported number at the relay: onto the account's application and
        messaging profile, whose webhooks the relay set when the account was added."""
        creds = self._creds()
        if provider_sid is None:
            found = await self.api.phone_numbers(phone_number)
            provider_sid = str(found[0]["id"]) if found and found[0].get("id") else None
        if provider_sid is None:
            raise CarrierError(f"Telnyx has no number {phone_number} on this account.")
        await self.api.assign(provider_sid, creds)

    async def dial(self, request: DialRequest) -> TelnyxLeg:
        creds = self._creds()
        try:
            placed = await self.api.dial(
                connection_id=creds.connection_id,
                to=request.to_number,
                from_=request.from_number,
                stream=StreamSpec(
                    stream_url(request.media_base_url, request.media_token), request.call_id
                ),
                # Telnyx stops ringing itself at the relay's own ring timeout.
                timeout_secs=max(5, min(600, int(request.ring_timeout_seconds))),
                webhook_url=f"{self.public_url}{CALL_PATH}",
                # The verdict, then the beep: a message is left after the greeting.
                answering_machine_detection="detect_beep" if request.detect_machine else None,
            )
        except TelnyxTimeout as exc:
            raise DialFailed("network_timeout", "Telnyx did not answer in time.") from exc
        call_control_id = placed.get("call_control_id")
        if not isinstance(call_control_id, str) or not call_control_id:
            raise CarrierError("Telnyx accepted the call without a call_control_id.")
        return TelnyxLeg(self.api, call_control_id)

    async def answer(
        self, call_control_id: str, media_base_url: str, token: str, call_id: str
    ) -> None:
        """Answer an inbound call, streaming it to the relay's media socket."""
        self._creds()
        await self.api.answer(
            call_control_id, StreamSpec(stream_url(media_base_url, token), call_id)
        )

    async def hangup(self, carrier_call_id: str) -> None:
        self._creds()
        await self.api.hangup(carrier_call_id)

    async def transfer(self, carrier_call_id: str, to: str) -> None:
        self._creds()
        await self.api.transfer(carrier_call_id, to)

    async def send_digits(self, carrier_call_id: str, digits: str) -> None:
        self._creds()
        await self.api.send_dtmf(carrier_call_id, digits)

    async def send_sms(self, text: OutgoingText) -> SentText:
        self._creds()
        sent = await self.api.send_message(
            from_=text.from_number,
            to=text.to_number,
            text=text.text,
            webhook_url=text.status_callback_url,
        )
        to = sent.get("to")
        first = to[0] if isinstance(to, list) and to and isinstance(to[0], dict) else {}
        message_id = sent.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise CarrierError("Telnyx accepted the text without a message id.")
        return SentText(message_id, STATUSES.get(str(first.get("status") or ""), "queued"))

    def verify_webhook(self, webhook: InboundWebhook) -> bool:
        if self.credentials is None:
            return False
        return signature_is_valid(self.credentials.public_key, webhook.body, webhook.headers)

    async def close(self) -> None:
        await self.api.close()


__all__ = [
    "CALL_PATH",
    "MEDIA_PATH",
    "MESSAGE_PATH",
    "TelnyxCarrier",
    "TelnyxLeg",
    "credentials_of",
    "stream_url",
]
