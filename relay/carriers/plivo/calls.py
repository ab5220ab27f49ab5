"""Plivo's Call API: outbound legs and what their callbacks mean.

``POST Call/`` with ``from``, ``to``, ``answer_url`` (Plivo fetches it once the callee
answers; the relay answers with the same streaming XML an inbound call gets), ``ring_url``
and ``hangup_url`` (the leg's progress), ``ring_timeout`` (seconds it may ring). Plivo
answers 201 with a ``request_uuid``; the callbacks carry it as ``RequestUUID`` beside the
call's own ``CallUUID``, with ``CallStatus`` (ringing, in-progress, completed, busy, failed,
timeout, no-answer, cancel) and, on hang-up, ``HangupCause``.
https://www.plivo.com/docs/voice/api/call/make-a-call

With ``detect_machine``: ``machine_detection=true`` and ``machine_detection_url`` (Plivo's
asynchronous detection: the call streams at once, and Plivo POSTs the verdict there with
``Machine`` true or false). Plivo reports no beep: a machine's verdict is taken as the
greeting being over.

A leg still ringing is cancelled with ``DELETE Request/{request_uuid}/``; an answered call
ends when the relay closes its audio stream (or ``DELETE Call/{call_uuid}/``).
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.carriers.base import (
    CarrierUnavailable,
    DialFailed,
    DialRequest,
    LegUpdate,
    MachineVerdict,
)
from relay.carriers.plivo.rest import PlivoRest, plivo_number

OUTBOUND_ANSWER_PATH = "/carriers/plivo/voice/outbound"
CALL_STATUS_PATH = "/carriers/plivo/voice/status"
AMD_PATH = "/carriers/plivo/voice/amd"
# Where a number's calls and texts reach the relay (relay.api.carriers.plivo serves them).
VOICE_PATH = "/carriers/plivo/voice"
SMS_PATH = "/carriers/plivo/sms"
# Plivo's ring_timeout: seconds, at most 120 by its documentation's default; at least 5 here.
MIN_RING, MAX_RING = 5, 120
# How an unanswered leg ended, by Plivo's CallStatus, then by its HangupCause.
ENDED: dict[str, str] = {
    "busy": "busy",
    "no-answer": "no_answer",
    "timeout": "no_answer",
    "cancel": "canceled",
    "failed": "provider_error",
    "completed": "provider_error",  # hung up before the stream reached the relay
}
CAUSES: dict[str, str] = {
    "USER_BUSY": "busy",
    "NO_ANSWER": "no_answer",
    "NO_USER_RESPONSE": "no_answer",
    "ORIGINATOR_CANCEL": "canceled",
}
PLIVO_ENDED = "Plivo reported the call {status} ({cause})."


def parse_call_status(form: Mapping[str, str]) -> LegUpdate | None:
    """A ring or hang-up callback as a :class:`LegUpdate`, keyed by ``RequestUUID`` (what
    ``dial`` returned); None when it changes nothing for a ringing leg."""
    request_uuid = form.get("RequestUUID", "")
    status = form.get("CallStatus", "").lower()
    if not request_uuid:
        return None
    if status == "ringing":
        return LegUpdate(request_uuid, "ringing")
    cause = form.get("HangupCause", "")
    reason = ENDED.get(status) or CAUSES.get(cause)
    if reason is None:
        return None
    detail = PLIVO_ENDED.format(status=status or "ended", cause=cause or "no cause given")
    return LegUpdate(request_uuid, "ended", reason, detail)


def parse_machine(form: Mapping[str, str]) -> MachineVerdict | None:
    """A ``machine_detection_url`` callback as a verdict; None if it carries none."""
    machine = form.get("Machine", "").lower()
    if machine == "true":
        return MachineVerdict("machine", greeting_over=True)
    if machine == "false":
        return MachineVerdict("human")
    return None


class PlivoLeg:
    """One outbound call Plivo accepted to place, named by its ``request_uuid``."""

    def __init__(self, rest: PlivoRest, request_uuid: str) -> None:
        self._rest = rest
        self.carrier_call_id = request_uuid
        self.request_uuid = request_uuid

    async def hangup(self) -> None:
        """Cancel the leg while it rings; an answered (or ended) one is no longer a request
        (404): it ends when the relay closes its stream."""
        status, data = await self._rest.request("DELETE", "Request", self.request_uuid)
        if status not in (200, 202, 204, 404):
            raise self._rest.refused(status, data)


async def dial(rest: PlivoRest, request: DialRequest, webhook_base_url: str) -> PlivoLeg:
    """``POST Call/``: ring ``to_number``; the callbacks' URLs name the account and the call
    (signed by Plivo with them), the answer URL carries the media token for the XML."""
    auth_id = rest.creds.auth_id
    query = f"authId={auth_id}&callId={request.call_id}"
    ring = int(min(max(request.ring_timeout_seconds, MIN_RING), MAX_RING))
    body: dict[str, str | int] = {
        "from": plivo_number(request.from_number),
        "to": plivo_number(request.to_number),
        "answer_url": f"{webhook_base_url}{OUTBOUND_ANSWER_PATH}?{query}"
        f"&token={request.media_token}",
        "answer_method": "POST",
        "ring_url": f"{webhook_base_url}{CALL_STATUS_PATH}?{query}",
        "ring_method": "POST",
        "hangup_url": f"{webhook_base_url}{CALL_STATUS_PATH}?{query}",
        "hangup_method": "POST",
        "ring_timeout": ring,
    }
    if request.detect_machine:
        body["machine_detection"] = "true"
        body["machine_detection_url"] = f"{webhook_base_url}{AMD_PATH}?{query}"
        body["machine_detection_method"] = "POST"
    try:
        status, data = await rest.request("POST", "Call", body=body)
    except CarrierUnavailable as exc:
        reason = "network_timeout" if "TimeoutError" in str(exc) else "provider_error"
        raise DialFailed(reason, str(exc)) from None
    if status not in (200, 201):
        raise DialFailed("provider_error", str(rest.refused(status, data)))
    request_uuid = data.get("request_uuid")
    if isinstance(request_uuid, list):
        request_uuid = request_uuid[0] if request_uuid else None
    if not isinstance(request_uuid, str) or not request_uuid:
        raise DialFailed("provider_error", "Plivo accepted the call but named no request_uuid.")
    return PlivoLeg(rest, request_uuid)


__all__ = [
    "AMD_PATH",
    "SMS_PATH",
    "VOICE_PATH",
    "CALL_STATUS_PATH",
    "ENDED",
    "OUTBOUND_ANSWER_PATH",
    "PlivoLeg",
    "dial",
    "parse_call_status",
    "parse_machine",
]
