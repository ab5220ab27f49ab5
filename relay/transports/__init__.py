"""Media transports: one module per wire protocol, translating a carrier's media socket to
and from the engine's ports (:mod:`relay.engine.ports`).

A transport knows its wire format and nothing of the call behind it: the calls domain
(:func:`relay.calls.media.serve`) drives a :class:`MediaConnection` through its handshake,
decides whether the call may start, and records how it ended. A new media protocol (Telnyx,
Plivo, WebRTC) is a new module here implementing that seam, with its wire format in a
``*_protocol.py`` file beside it, as Twilio's is.

    twilio              Twilio Media Streams (Twilio calls and the sim carrier's handset)
    twilio_protocol     its JSON frames, as frozen dataclasses
    websocket           raw PCM for developers who bring their own telephony

Errors: a transport raises nothing at its caller for a peer's bad frame; it reports the
frame (``BadFrame``) and goes on. A peer that never identifies its call is refused with a
close frame (:meth:`MediaConnection.refuse`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.engine.ports import CallerLine, CallHandle

# A frame the transport dropped: (what was wrong, the frame).
BadFrame = Callable[[str, str | bytes], Awaitable[None]]
# A line in the call's event log from the transport: (message, data).
Note = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the peer said before the call's audio: the media token when it travels in the
    handshake instead of the URL, and the carrier's own id for the call."""

    token: str | None = None
    carrier_call_id: str | None = None


class MediaConnection(Protocol):
    """One media socket, as the calls domain drives it."""

    connection_types: tuple[str, ...]  # the calls' connectionType this socket may carry

    async def handshake(self) -> Handshake | None:
        """Read up to the call's audio; ``None`` if the peer never got there (refused)."""

    async def refuse(self, why: str) -> None:
        """Close the socket: the call may not start."""

    async def accept(self, call_id: str, note: Note) -> CallerLine:
        """The call starts: the engine's way back to the caller."""

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        """Feed the caller's audio and keys into ``handle`` until the caller is gone."""


__all__ = ["BadFrame", "Handshake", "MediaConnection", "Note"]
