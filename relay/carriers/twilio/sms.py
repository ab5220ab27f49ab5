"""Twilio Messaging: inbound texts and delivery reports arrive form-encoded and signed
(checked by :func:`relay.carriers.twilio.signature.signature_is_valid`); outbound texts go
through Twilio's REST API with the official client, asynchronously.

``RELAY_TWILIO_API_BASE_URL`` points the REST client elsewhere (a test double, a proxy);
the default is Twilio itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from twilio.base.exceptions import TwilioRestException

from relay.carriers import CarrierError, CarrierUnavailable
from relay.carriers.sms import DeliveryStatus, IncomingText, OutgoingText, SentText
from relay.carriers.twilio.rest import TwilioRest

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
NOT_CONFIGURED = (
    "Twilio is not configured: set RELAY_TWILIO_ACCOUNT_SID and RELAY_TWILIO_AUTH_TOKEN."
)
# Twilio's message statuses, folded into ours.
STATUSES: dict[str, DeliveryStatus] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "partially_delivered": "delivered",
    "failed": "failed",
    "undelivered": "failed",
    "canceled": "failed",
}
# The keywords Twilio's Advanced Opt-Out answers itself (it sends ``OptOutType``).
CARRIER_KEYWORDS = frozenset({"STOP", "START", "HELP"})


def parse_inbound(form: Mapping[str, str]) -> IncomingText:
    """An inbound-message webhook's fields. Raises ValueError naming a missing field."""
    for name in ("MessageSid", "From", "To"):
        if not form.get(name):
            raise ValueError(f"missing {name}")
    media = []
    try:
        count = int(form.get("NumMedia") or 0)
    except ValueError:
        count = 0
    for i in range(min(count, 10)):
        url = form.get(f"MediaUrl{i}")
        if url:
            media.append({"url": url, "contentType": form.get(f"MediaContentType{i}", "")})
    return IncomingText(
        provider="twilio",
        carrier_message_id=form["MessageSid"],
        from_number=form["From"],
        to_number=form["To"],
        text=form.get("Body", ""),
        media=tuple(media),
        keyword_handled=form.get("OptOutType", "").upper() in CARRIER_KEYWORDS,
    )


def parse_status(form: Mapping[str, str]) -> tuple[str, DeliveryStatus | None, str | None]:
    """A status callback's (MessageSid, our status or None when unknown, ErrorCode)."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    raw = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    return sid, STATUSES.get(raw), form.get("ErrorCode") or None


class TwilioSms:
    """Sends with the account's credentials; the client is made on first use (it opens an
    aiohttp session, which must happen inside the running event loop)."""

    name = "twilio"

    def __init__(
        self, account_sid: str, auth_token: str, *, api_base_url: str = "", timeout: float = 10.0
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.rest = TwilioRest(account_sid, auth_token, api_base_url=api_base_url, timeout=timeout)

    async def send_sms(self, text: OutgoingText) -> SentText:
        if not (self.account_sid and self.auth_token):
            raise CarrierError(NOT_CONFIGURED)
        try:
            sent = await self.rest.client().messages.create_async(
                to=text.to_number,
                from_=text.from_number,
                body=text.text,
                status_callback=text.status_callback_url,
            )
        except TwilioRestException as exc:
            if exc.status >= 500:
                raise CarrierUnavailable(f"Twilio answered HTTP {exc.status}") from exc
            err = CarrierError(f"Twilio refused the text: {exc.msg}")
            err.code = f"twilio_{exc.code}" if exc.code else "carrier_error"
            raise err from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CarrierUnavailable(f"Twilio unreachable: {type(exc).__name__}") from exc
        return SentText(str(sent.sid), STATUSES.get(str(sent.status), "queued"))

    async def close(self) -> None:
        await self.rest.close()


__all__ = ["EMPTY_TWIML", "STATUSES", "TwilioSms", "parse_inbound", "parse_status"]
