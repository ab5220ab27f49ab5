"""Twilio's Calls REST resource: outbound legs and what their status callbacks mean.

``POST /2010-04-01/Accounts/{Sid}/Calls.json`` with ``To``, ``From``, ``Twiml`` (the same
``<Connect><Stream>`` an inbound call gets), ``Timeout`` (seconds it may ring),
``StatusCallback`` and ``StatusCallbackEvent`` = initiated, ringing, answered, completed
(repeated field). Twilio then POSTs signed form callbacks with ``CallSid`` and
``CallStatus``: queued, initiated, ringing, in-progress, completed, busy, no-answer,
failed, canceled (https://www.twilio.com/docs/voice/api/call-resource#statuscallback).

With ``detect_machine``: ``MachineDetection=DetectMessageEnd`` and ``AsyncAmd=true`` (the
call streams at once; detection runs beside it) with ``AsyncAmdStatusCallback``: a signed
form with ``AnsweredBy`` human, machine_end_beep|silence|other (the greeting is over),
machine_start, fax or unknown
(https://www.twilio.com/docs/voice/answering-machine-detection).

A leg is ended with ``POST Calls/{CallSid}.json``: ``Status=canceled`` while it is queued or
ringing; a call already answered ignores that and needs ``Status=completed``
(https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException

from relay.carriers.base import CarrierError, DialFailed, DialRequest, LegUpdate, MachineVerdict
from relay.carriers.twilio.rest import TwilioRest
from relay.carriers.twilio.voice import AFTER_PATH, AMD_PATH, STATUS_PATH, answer_twiml

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
# Twilio's Timeout accepts 5..600 seconds.
MIN_TIMEOUT, MAX_TIMEOUT = 5, 600
# How a leg that ended unanswered failed, by Twilio's CallStatus. ``completed`` before the
# media socket opened means Twilio could not stream the answered call to us.
ENDED: dict[str, str] = {
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "provider_error",
    "canceled": "canceled",
    "completed": "provider_error",
}
TWILIO_ENDED = "Twilio reported the call {status}."
# Twilio's AnsweredBy; a fax is no one to talk to: a machine.
ANSWERED_BY: dict[str, MachineVerdict] = {
    "human": MachineVerdict("human"),
    "machine_start": MachineVerdict("machine"),
    "machine_end_beep": MachineVerdict("machine", greeting_over=True),
    "machine_end_silence": MachineVerdict("machine", greeting_over=True),
    "machine_end_other": MachineVerdict("machine", greeting_over=True),
    "fax": MachineVerdict("machine"),
    "unknown": MachineVerdict("unknown"),
}


def parse_answered_by(form: Mapping[str, str]) -> MachineVerdict | None:
    """An AsyncAmdStatusCallback as a verdict; None if it is not one."""
    return ANSWERED_BY.get(form.get("AnsweredBy", "").lower())


def parse_call_status(form: Mapping[str, str]) -> LegUpdate | None:
    """A voice status callback as a :class:`LegUpdate`; None when it changes nothing for a
    ringing leg (queued, initiated, in-progress: the media socket says answered)."""
    sid = form.get("CallSid", "")
    status = form.get("CallStatus", "").lower()
    if not sid:
        return None
    if status == "ringing":
        return LegUpdate(sid, "ringing")
    reason = ENDED.get(status)
    if reason is None:
        return None
    detail = TWILIO_ENDED.format(status=status)
    if form.get("SipResponseCode"):
        detail += f" (SIP {form['SipResponseCode']})"
    return LegUpdate(sid, "ended", reason, detail)


def _refused(exc: TwilioRestException) -> CarrierError:
    if exc.status >= 500:
        return DialFailed("provider_error", f"Twilio answered HTTP {exc.status}.")
    return DialFailed("provider_error", f"Twilio refused the call (error {exc.code}): {exc.msg}")


class TwilioLeg:
    """One outbound call Twilio accepted to place."""

    def __init__(self, calls: TwilioCalls, carrier_call_id: str) -> None:
        self._calls = calls
        self.carrier_call_id = carrier_call_id

    async def hangup(self) -> None:
        status = await self._calls.update(self.carrier_call_id, Status="canceled")
        if status == "in-progress":
            await self._calls.update(self.carrier_call_id, Status="completed")


class TwilioCalls:
    def __init__(self, rest: TwilioRest) -> None:
        self.rest = rest

    async def dial(self, request: DialRequest) -> TwilioLeg:
        base = request.webhook_base_url
        twiml = answer_twiml(
            f"{request.media_base_url}/media/twilio",
            request.media_token,
            request.call_id,
            f"{base}{AFTER_PATH}?callId={request.call_id}",
        )
        timeout = int(min(max(request.ring_timeout_seconds, MIN_TIMEOUT), MAX_TIMEOUT))
        amd: dict[str, str] = {}
        if request.detect_machine:
            amd = {
                "machine_detection": "DetectMessageEnd",
                "async_amd": "true",
                "async_amd_status_callback": f"{base}{AMD_PATH}?callId={request.call_id}",
                "async_amd_status_callback_method": "POST",
            }
        try:
            call = await self.rest.client().calls.create_async(
                to=request.to_number,
                from_=request.from_number,
                twiml=twiml,
                timeout=timeout,
                status_callback=f"{base}{STATUS_PATH}?callId={request.call_id}",
                status_callback_event=STATUS_EVENTS,
                status_callback_method="POST",
                **amd,
            )
        except TwilioRestException as exc:
            raise _refused(exc) from exc
        except TwilioException as exc:
            raise DialFailed("provider_error", f"Twilio answered: {exc}") from exc
        except TimeoutError as exc:
            raise DialFailed("network_timeout", "Twilio did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise DialFailed("provider_error", f"Twilio unreachable: {type(exc).__name__}") from exc
        return TwilioLeg(self, str(call.sid))

    async def update(self, carrier_call_id: str, **fields: str) -> str:
        """Update a call (``Status``, ``Twiml``); its status afterwards, as Twilio says."""
        try:
            call = (
                await self.rest.client()
                .calls(carrier_call_id)
                .update_async(
                    status=fields.get("Status", _UNSET), twiml=fields.get("Twiml", _UNSET)
                )
            )
        except TwilioRestException as exc:
            raise CarrierError(
                f"Twilio refused to update call {carrier_call_id}: {exc.msg}"
            ) from exc
        except (TwilioException, TimeoutError, aiohttp.ClientError) as exc:
            raise CarrierError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return str(call.status)


_UNSET = values.unset

__all__ = [
    "ANSWERED_BY",
    "ENDED",
    "STATUS_EVENTS",
    "TwilioCalls",
    "TwilioLeg",
    "parse_answered_by",
    "parse_call_status",
]
