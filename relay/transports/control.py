"""A live phone call's hang-up, transfer and digits through its carrier's REST API.

Closing a carrier's media socket ends only the stream, not always the call (a Telnyx call
outlives it; Twilio and Plivo go on to the next verb of their answer document), so a line
of one of our numbers ends and hands off its call through the carrier: Twilio's Calls
update, Telnyx's Call Control, Plivo's Call API. A line without a control (a BYOT or sim
call) only closes its socket.

A carrier's refusal is written to the call's event log and never keeps a call alive: a
hang-up that failed still closes the socket (the answer document's next verb hangs up), a
transfer that failed still ends the stream, where the same next verb dials the number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from relay.logs import get_logger
from relay.transports import Note

log = get_logger("relay.transports.control")


class CallControl(Protocol):
    """Commands on one live call at its carrier, by the carrier's id for the call."""

    async def hangup(self, carrier_call_id: str) -> None: ...

    async def transfer(self, carrier_call_id: str, to: str) -> None:
        """Cold transfer: the carrier dials ``to`` and bridges the caller to it."""


@runtime_checkable
class DigitsControl(CallControl, Protocol):
    """A carrier that can also play DTMF digits into the call (out of band of the stream)."""

    async def send_digits(self, carrier_call_id: str, digits: str) -> None: ...


# The control of a call, by the relay's call id, once its socket has named it (None: no
# carrier API for this call).
ControlLookup = Callable[[str], Awaitable[CallControl | None]]


class Controlled:
    """The carrier side of one line: hang-up, transfer and digits through ``control``,
    each at most once in effect, and every refusal noted on the call."""

    def __init__(self, carrier_call_id: str, note: Note, control: CallControl | None) -> None:
        self.carrier_call_id = carrier_call_id
        self._note = note
        self._control = control if carrier_call_id else None
        self.handed_off = False  # hung up or transferred at the carrier: no longer ours

    def carrier_ended_stream(self) -> None:
        """The carrier stopped the stream (its caller hung up, or its document moved on):
        the call is no longer the relay's to end or hand off."""
        self.handed_off = True

    async def transfer(self, to: str) -> None:
        """Recorded first (the answer document's next verb reads it), then asked of the
        carrier; a refusal is raised after it is noted (the engine logs it too)."""
        await self._note("transfer", {"transfer": to})
        if self._control is None or self.handed_off:
            return
        try:
            await self._control.transfer(self.carrier_call_id, to)
        except Exception as exc:
            await self._refused("transfer", exc)
            raise
        self.handed_off = True

    async def hangup(self) -> None:
        """End the call at the carrier; a refusal is noted, not raised."""
        if self._control is None or self.handed_off:
            return
        self.handed_off = True
        try:
            await self._control.hangup(self.carrier_call_id)
        except Exception as exc:
            await self._refused("hangup", exc)

    async def send_digits(self, digits: str, in_band: Callable[[str], Awaitable[None]]) -> None:
        """Through the carrier when it can play digits, else (or if it refused) as tones."""
        control = self._control
        if isinstance(control, DigitsControl) and not self.handed_off:
            try:
                await control.send_digits(self.carrier_call_id, digits)
                return
            except Exception as exc:
                await self._refused("send_dtmf", exc)
        await in_band(digits)

    async def _refused(self, action: str, exc: Exception) -> None:
        log.warning("carrier_command_failed", action=action, error=repr(exc))
        await self._note(
            f"the carrier refused {action}: {exc}"[:500],
            {"action": action, "error": type(exc).__name__},
        )


__all__ = ["CallControl", "ControlLookup", "Controlled", "DigitsControl"]
