"""Plivo Messaging: inbound texts and delivery reports arrive form-encoded and V3-signed;
outbound texts go through ``POST Message/`` (:mod:`relay.carriers.plivo.rest`).

Inbound message fields: ``From``, ``To``, ``Text``, ``Type``, ``MessageUUID`` (numbers
without ``+``). Delivery reports go to the ``url`` given with the text: ``MessageUUID``,
``Status`` (queued, sent, delivered, undelivered, failed, rejected) and ``ErrorCode``.
https://www.plivo.com/docs/messaging/api/message/
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.carriers.base import CarrierError
from relay.carriers.plivo.rest import PlivoRest, e164_of, plivo_number
from relay.carriers.sms import DeliveryStatus, IncomingText, OutgoingText, SentText

STATUSES: dict[str, DeliveryStatus] = {
    "queued": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "rejected": "failed",
}


def parse_inbound(form: Mapping[str, str]) -> IncomingText:
    """An inbound-message webhook's fields. Raises ValueError naming a missing field."""
    for name in ("MessageUUID", "From", "To"):
        if not form.get(name):
            raise ValueError(f"missing {name}")
    return IncomingText(
        provider="plivo",
        carrier_message_id=form["MessageUUID"],
        from_number=e164_of(form["From"]),
        to_number=e164_of(form["To"]),
        text=form.get("Text", ""),
    )


def parse_status(form: Mapping[str, str]) -> tuple[str, DeliveryStatus | None, str | None]:
    """A delivery report's (MessageUUID, our status or None when unknown, ErrorCode)."""
    raw = (form.get("Status") or "").lower()
    return form.get("MessageUUID", ""), STATUSES.get(raw), form.get("ErrorCode") or None


async def send_sms(rest: PlivoRest, text: OutgoingText) -> SentText:
    """``POST Message/`` with the body the SDK's ``messages.create`` sends."""
    body: dict[str, object] = {
        "src": plivo_number(text.from_number),
        "dst": plivo_number(text.to_number),
        "text": text.text,
        "type": "sms",
        "method": "POST",
        "log": "true",
        "trackable": False,
    }
    if text.status_callback_url:
        body["url"] = text.status_callback_url
    status, data = await rest.request("POST", "Message", body=body)
    if status not in (200, 201, 202):
        err = rest.refused(status, data)
        err.code = "plivo_message_refused"
        raise err
    uuids = data.get("message_uuid")
    if not isinstance(uuids, list) or not uuids or not isinstance(uuids[0], str):
        raise CarrierError("Plivo accepted the text but named no message_uuid.")
    return SentText(uuids[0], "queued")


__all__ = ["STATUSES", "parse_inbound", "parse_status", "send_sms"]
