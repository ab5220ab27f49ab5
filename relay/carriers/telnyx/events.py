"""Telnyx webhooks as typed events: the JSON envelope ``{"data": {"event_type", "id",
"occurred_at", "payload": {...}}, "meta": {...}}``, parsed once at the edge.

Call Control events (``call.initiated``, ``call.answered``, ``call.hangup``,
``streaming.started``, answering-machine detection's ``call.machine.detection.ended`` and
``call.machine.greeting.ended``...) carry the call's ``call_control_id``; messaging events
(``message.received``, ``message.sent``, ``message.finalized``) carry the message.
https://developers.telnyx.com/docs/voice/programmable-voice/receiving-webhooks
https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from relay.carriers.base import MachineVerdict
from relay.carriers.sms import DeliveryStatus, IncomingText

# Telnyx's per-recipient message statuses, folded into ours.
STATUSES: dict[str, DeliveryStatus] = {
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "delivery_unconfirmed": "sent",
    "sending_failed": "failed",
    "delivery_failed": "failed",
}
# A hang-up's cause while ringing, as a call failure reason.
HANGUP_REASONS = {
    "user_busy": "busy",
    "call_rejected": "busy",
    "timeout": "no_answer",
    "no_answer": "no_answer",
    "originator_cancel": "canceled",
}


# answering_machine_detection=detect_beep: the verdict, then (a machine's) greeting's end.
# https://developers.telnyx.com/docs/voice/programmable-voice/answering-machine-detection
DETECTION_ENDED = "call.machine.detection.ended"
GREETING_ENDED = "call.machine.greeting.ended"
DETECTION_RESULTS: dict[str, MachineVerdict] = {
    "human": MachineVerdict("human"),
    "machine": MachineVerdict("machine"),
    "not_sure": MachineVerdict("unknown"),
}


class WebhookInvalid(ValueError):
    """Not a Telnyx webhook this relay understands (say which part)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    event_type: str
    event_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A Call Control event about one call leg."""

    event_type: str
    call_control_id: str
    connection_id: str
    direction: str  # "incoming" or "outgoing"
    from_number: str
    to_number: str
    client_state: str | None
    hangup_cause: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    carrier_message_id: str
    status: DeliveryStatus | None
    error_code: str | None


def parse(body: bytes) -> Webhook:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WebhookInvalid("the body is not JSON") from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise WebhookInvalid("no 'data' object")
    event_type, event_id, payload = data.get("event_type"), data.get("id"), data.get("payload")
    if not isinstance(event_type, str) or not isinstance(payload, dict):
        raise WebhookInvalid("'data' needs an event_type and a payload object")
    return Webhook(event_type, str(event_id or ""), payload)


def _sane(value: str, name: str) -> str:
    # Signed is not sane: a NUL would reach the store (PostgreSQL refuses one).
    if "\x00" in value:
        raise WebhookInvalid(f"payload.{name} holds a NUL character")
    return value


def _text(payload: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = payload.get(name)
    if isinstance(value, str) and value:
        return _sane(value, name)
    if required:
        raise WebhookInvalid(f"payload.{name} is missing")
    return ""


def call_event(hook: Webhook) -> CallEvent:
    p = hook.payload
    state = p.get("client_state")
    decoded = None
    if isinstance(state, str) and state:
        try:
            decoded = base64.b64decode(state, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = None  # not ours: ours is always base64 text
    cause = p.get("hangup_cause")
    return CallEvent(
        event_type=hook.event_type,
        call_control_id=_text(p, "call_control_id"),
        connection_id=_text(p, "connection_id", required=False),
        direction=_text(p, "direction", required=False),
        from_number=_text(p, "from", required=False),
        to_number=_text(p, "to", required=False),
        client_state=decoded,
        hangup_cause=cause if isinstance(cause, str) else None,
    )


def machine_verdict(hook: Webhook) -> MachineVerdict | None:
    """An answering-machine detection event as a verdict; None for any other event (or a
    result this relay does not know)."""
    result = hook.payload.get("result")
    if hook.event_type == DETECTION_ENDED and isinstance(result, str):
        return DETECTION_RESULTS.get(result)
    if hook.event_type == GREETING_ENDED:
        # beep_detected, ended or not_sure: whichever, the greeting is over.
        return MachineVerdict("machine", greeting_over=True)
    return None


def _number(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("phone_number")
    return _sane(value, "phone_number") if isinstance(value, str) else ""


def incoming_text(hook: Webhook) -> IncomingText:
    """A ``message.received``: who texted which of our numbers."""
    p = hook.payload
    to = p.get("to")
    first_to = to[0] if isinstance(to, list) and to else to
    from_number, to_number = _number(p.get("from")), _number(first_to)
    if not from_number or not to_number:
        raise WebhookInvalid("payload.from and payload.to need a phone_number")
    media = []
    for item in p.get("media") or ():
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            media.append({"url": item["url"], "contentType": str(item.get("content_type") or "")})
    text = p.get("text")
    return IncomingText(
        provider="telnyx",
        carrier_message_id=_text(p, "id"),
        from_number=from_number,
        to_number=to_number,
        text=text if isinstance(text, str) else "",
        media=tuple(media[:10]),
    )


def status_report(hook: Webhook) -> StatusReport:
    """A ``message.sent`` / ``message.finalized``: how far our text got."""
    p = hook.payload
    to = p.get("to")
    first = to[0] if isinstance(to, list) and to and isinstance(to[0], dict) else {}
    raw = str(first.get("status") or "")
    errors = p.get("errors")
    code = None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = str(errors[0].get("code") or "") or None
    return StatusReport(_text(p, "id"), STATUSES.get(raw), code)


__all__ = [
    "HANGUP_REASONS",
    "STATUSES",
    "CallEvent",
    "StatusReport",
    "Webhook",
    "WebhookInvalid",
    "call_event",
    "incoming_text",
    "machine_verdict",
    "parse",
    "status_report",
]
